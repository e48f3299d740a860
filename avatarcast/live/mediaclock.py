"""One media clock per session: a 48 kHz sample counter from which every audio and video timestamp is derived.

Audio leaves in fixed 20 ms ticks (960 samples). Video frame ``k`` starts at sample ``round(k * 48000 / fps)``, less
the shifts made before it (``shift_from``: a frame made shorter by whole audio ticks so that speech starts on the
audio tick it can, not on the next frame), and its presentation timestamp on the 90 kHz video clock is that sample
count scaled by 90000 / 48000. A frame and its audio slice therefore share one origin by construction: there is
nothing to correct later.
"""

from __future__ import annotations

from bisect import bisect_right
from fractions import Fraction

from avatarcast.core.errors import InvalidValueError

PLAYOUT_RATE_HZ = 48000
"""Audio rate of the outputs (WebRTC Opus and RTMP AAC run at 48 kHz)."""
VIDEO_CLOCK_RATE_HZ = 90000
"""RTP video clock rate."""
AUDIO_PTIME_S = 0.020
"""Audio tick: one Opus packet."""
SAMPLES_PER_TICK = int(PLAYOUT_RATE_HZ * AUDIO_PTIME_S)
SHIFTS_KEPT = 64
"""Shifts the clock remembers (``shift_from``); frames before the oldest kept one are no longer asked about."""


class MediaClock:
    """Maps frame indices to 48 kHz sample positions and both to presentation timestamps."""

    def __init__(self, fps: float, rate_hz: int = PLAYOUT_RATE_HZ) -> None:
        if fps <= 0:
            raise InvalidValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.rate_hz = int(rate_hz)
        # exact rational samples-per-frame so long runs never accumulate rounding drift
        self._samples_per_frame = Fraction(self.rate_hz) / Fraction(self.fps).limit_denominator(1001)
        # the same in integers (the playout loop asks for frame starts many times a tick; Fraction is slow)
        self._num = self._samples_per_frame.numerator
        self._den = self._samples_per_frame.denominator
        # (first frames, samples every frame from each on starts earlier), in order; replaced whole, never changed
        # in place, so the playout loop reads it without a lock while the render worker adds a shift
        self._shifts: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    @property
    def frame_duration_s(self) -> float:
        return float(self._samples_per_frame) / self.rate_hz

    def frame_start_sample(self, frame_index: int) -> int:
        """First audio sample paired with video frame ``frame_index``: ``round(frame_index * samples_per_frame)``,
        halves to even as Python's ``round`` does, less the shifts made at or before it."""
        q, r = divmod(frame_index * self._num, self._den)
        twice = 2 * r
        if twice > self._den or (twice == self._den and q & 1):
            q += 1
        frames, totals = self._shifts
        if frames:
            i = bisect_right(frames, frame_index)
            if i:
                q -= totals[i - 1]
        return q

    def shift_from(self, frame_index: int, samples: int) -> None:
        """Start frame ``frame_index`` and every later frame ``samples`` earlier: the frame before it becomes that
        much shorter. ``samples`` is a whole number of audio ticks (frames keep starting where a tick can emit them)
        and less than that frame's length; ``frame_index`` comes after every earlier shift."""
        if samples <= 0 or samples % SAMPLES_PER_TICK:
            raise InvalidValueError(f"a clock shift is a positive number of {SAMPLES_PER_TICK}-sample ticks, "
                                    f"got {samples}")
        frames, totals = self._shifts
        if frames and frame_index <= frames[-1]:
            raise InvalidValueError(f"clock shifts go forward: frame {frame_index} is not after frame {frames[-1]}")
        if samples >= self.frame_samples(frame_index - 1):
            raise InvalidValueError(f"a shift of {samples} samples would leave frame {frame_index - 1} no length")
        self._shifts = ((frames + (frame_index,))[-SHIFTS_KEPT:],
                        (totals + (self.shifted_samples + samples,))[-SHIFTS_KEPT:])

    @property
    def shifted_samples(self) -> int:
        """How many samples earlier the latest frames start than an unshifted clock's."""
        totals = self._shifts[1]
        return totals[-1] if totals else 0

    @property
    def latest_shift_frame(self) -> int:
        """The first frame of the latest shift (-1: none)."""
        frames = self._shifts[0]
        return frames[-1] if frames else -1

    def frame_samples(self, frame_index: int) -> int:
        """Number of audio samples paired with video frame ``frame_index``."""
        return self.frame_start_sample(frame_index + 1) - self.frame_start_sample(frame_index)

    def frames_starting_before(self, sample: int) -> int:
        """Number of frames whose start sample is strictly below ``sample``."""
        k = int((sample + self.shifted_samples) / self._samples_per_frame)
        while self.frame_start_sample(k) < sample:
            k += 1
        while k > 0 and self.frame_start_sample(k - 1) >= sample:
            k -= 1
        return k

    def video_pts(self, sample: int) -> int:
        """90 kHz presentation timestamp of the media position ``sample`` (48 kHz)."""
        return round(sample * VIDEO_CLOCK_RATE_HZ / self.rate_hz)

    def frame_pts(self, frame_index: int) -> int:
        return self.video_pts(self.frame_start_sample(frame_index))

    def seconds(self, sample: int) -> float:
        return sample / self.rate_hz
