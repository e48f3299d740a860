"""One media clock per session: a 48 kHz sample counter from which every audio and video timestamp is derived.

Audio leaves in fixed 20 ms ticks (960 samples). Video frame ``k`` starts at sample ``round(k * 48000 / fps)`` and
its presentation timestamp on the 90 kHz video clock is that sample count scaled by 90000 / 48000. A frame and its
audio slice therefore share one origin by construction: there is nothing to correct later.
"""

from __future__ import annotations

from fractions import Fraction

from avatarcast.core.errors import InvalidValueError

PLAYOUT_RATE_HZ = 48000
"""Audio rate of the outputs (WebRTC Opus and RTMP AAC run at 48 kHz)."""
VIDEO_CLOCK_RATE_HZ = 90000
"""RTP video clock rate."""
AUDIO_PTIME_S = 0.020
"""Audio tick: one Opus packet."""
SAMPLES_PER_TICK = int(PLAYOUT_RATE_HZ * AUDIO_PTIME_S)


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

    @property
    def frame_duration_s(self) -> float:
        return float(self._samples_per_frame) / self.rate_hz

    def frame_start_sample(self, frame_index: int) -> int:
        """First audio sample paired with video frame ``frame_index``: ``round(frame_index * samples_per_frame)``,
        halves to even as Python's ``round`` does."""
        q, r = divmod(frame_index * self._num, self._den)
        twice = 2 * r
        if twice > self._den or (twice == self._den and q & 1):
            q += 1
        return q

    def frame_samples(self, frame_index: int) -> int:
        """Number of audio samples paired with video frame ``frame_index``."""
        return self.frame_start_sample(frame_index + 1) - self.frame_start_sample(frame_index)

    def frames_starting_before(self, sample: int) -> int:
        """Number of frames whose start sample is strictly below ``sample``."""
        k = int(sample / self._samples_per_frame)
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
