"""Mouth shapes from speech: per-video-frame (jaw_open, mouth_wide, mouth_round) in [0, 1].

Two sources, one code path:

- **audio only**: openness from loudness (RMS in dB relative to a running estimate of the utterance's speech
  level, above a tracked noise floor) raised by the first formant; lip spread and rounding from the first two
  formants (F2 high with F1 low: spread, "ee"; F2 low: rounded, "oo"), estimated per 10 ms hop with LPC.
- **phones known** (forced alignment, or the TTS's own timings in live mode): the viseme targets of the phones,
  blended with their neighbours (coarticulation), scaled by loudness, with bilabials (P, B, M) fully closed.

Everything runs causally on a 10 ms hop grid (webrtcvad, level trackers, attack/release smoothing); a video frame
takes its value from the hop grid slightly ahead of its centre, so a frame needs at most ``lookahead_s`` of audio
past its own end. ``mouth_track`` (offline) is literally ``StreamingMouthAnalyzer`` fed the whole signal, so live
and offline give the same rows for the same audio, however the audio is chunked. The mouth is closed whenever the
voice activity detector or the noise gate says there is no speech.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from avatarcast.core.errors import InvalidValueError
from avatarcast.audio.io import StreamResampler
from avatarcast.audio.vad import VoiceActivity
from avatarcast.core.types import AUDIO_RATE_HZ

if TYPE_CHECKING:  # pragma: no cover
    from avatarcast.audio.alignment import Phone

# --- the viseme table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viseme:
    """The mouth target of a phone and how strongly it resists its neighbours (dominance, 0..1)."""

    jaw_open: float
    mouth_wide: float
    mouth_round: float
    dominance: float


VISEMES: dict[str, Viseme] = {
    # vowels
    "AA": Viseme(0.90, 0.10, 0.00, 0.5),  # father
    "AE": Viseme(0.75, 0.45, 0.00, 0.5),  # cat
    "AH": Viseme(0.60, 0.15, 0.00, 0.4),  # cut, about
    "AO": Viseme(0.75, 0.00, 0.45, 0.5),  # caught
    "AW": Viseme(0.75, 0.05, 0.35, 0.5),  # cow
    "AY": Viseme(0.75, 0.30, 0.00, 0.5),  # bite
    "EH": Viseme(0.55, 0.40, 0.00, 0.5),  # bet
    "ER": Viseme(0.40, 0.05, 0.35, 0.5),  # bird
    "EY": Viseme(0.45, 0.55, 0.00, 0.5),  # bait
    "IH": Viseme(0.35, 0.50, 0.00, 0.5),  # bit
    "IY": Viseme(0.25, 0.80, 0.00, 0.6),  # beet
    "OW": Viseme(0.55, 0.00, 0.70, 0.6),  # boat
    "OY": Viseme(0.55, 0.05, 0.55, 0.5),  # boy
    "UH": Viseme(0.35, 0.00, 0.60, 0.5),  # book
    "UW": Viseme(0.25, 0.00, 0.90, 0.7),  # boot
    # consonants
    "P": Viseme(0.00, 0.00, 0.00, 1.0),
    "B": Viseme(0.00, 0.00, 0.00, 1.0),
    "M": Viseme(0.00, 0.00, 0.00, 1.0),
    "F": Viseme(0.10, 0.20, 0.00, 0.8),
    "V": Viseme(0.10, 0.20, 0.00, 0.8),
    "TH": Viseme(0.20, 0.20, 0.00, 0.5),
    "DH": Viseme(0.20, 0.20, 0.00, 0.4),
    "T": Viseme(0.25, 0.25, 0.00, 0.2),
    "D": Viseme(0.25, 0.25, 0.00, 0.2),
    "N": Viseme(0.25, 0.25, 0.00, 0.2),
    "L": Viseme(0.30, 0.20, 0.00, 0.2),
    "S": Viseme(0.12, 0.45, 0.00, 0.6),
    "Z": Viseme(0.12, 0.45, 0.00, 0.6),
    "SH": Viseme(0.20, 0.05, 0.50, 0.6),
    "ZH": Viseme(0.20, 0.05, 0.50, 0.6),
    "CH": Viseme(0.20, 0.05, 0.50, 0.6),
    "JH": Viseme(0.20, 0.05, 0.50, 0.6),
    "K": Viseme(0.35, 0.20, 0.00, 0.15),
    "G": Viseme(0.35, 0.20, 0.00, 0.15),
    "NG": Viseme(0.30, 0.20, 0.00, 0.15),
    "HH": Viseme(0.45, 0.15, 0.00, 0.05),  # takes the shape of the next vowel
    "R": Viseme(0.25, 0.00, 0.45, 0.5),
    "W": Viseme(0.15, 0.00, 0.85, 0.8),
    "Y": Viseme(0.25, 0.55, 0.00, 0.4),
    "SIL": Viseme(0.00, 0.00, 0.00, 0.6),
}
"""ARPAbet phone -> mouth target. Noise and unknown phones (``+NSN+``, ``+SPN+``, ...) count as silence."""

BILABIALS = frozenset({"P", "B", "M"})

COARTICULATION_TAU_S = 0.030
"""How far a phone's shape reaches into its neighbours (Gaussian width of its influence beyond its edges)."""

COARTICULATION_REACH_S = 0.12
"""Phones further than this from a time do not influence it."""

BILABIAL_RAMP_S = 0.025
"""The lips close over this time before a bilabial and open over it after."""


def phone_key(phone: str) -> str:
    """Normalise a phone label: upper case, stress digits removed; unknown labels map to ``SIL``."""
    key = phone.strip().upper().rstrip("012")
    return key if key in VISEMES else "SIL"


class VisemeTrack:
    """Blended viseme targets over time for a sorted list of phones (times in seconds)."""

    def __init__(self, phones: Iterable["Phone"] = (), min_hold_s: float = 0.0) -> None:
        self.min_hold_s = min_hold_s  # a closure held at least this long shows in at least one video frame
        self._starts: list[float] = []
        self._items: list[tuple[float, float, Viseme, bool]] = []
        self.extend(phones)

    def extend(self, phones: Iterable["Phone"]) -> None:
        for p in phones:
            key = phone_key(p.phone)
            item = (float(p.start_s), float(p.end_s), VISEMES[key], key in BILABIALS)
            i = bisect.bisect_right(self._starts, item[0])
            self._starts.insert(i, item[0])
            self._items.insert(i, item)

    def __len__(self) -> int:
        return len(self._items)

    def targets(self, t_s: float) -> tuple[float, float, float]:
        """(jaw_open, mouth_wide, mouth_round) at ``t_s``: a dominance-weighted blend of nearby phones, then
        bilabial closure (the lips are fully closed in the middle of every P, B, M)."""
        if not self._items:
            return 0.0, 0.0, 0.0
        lo = bisect.bisect_left(self._starts, t_s - 2.0 * COARTICULATION_REACH_S - 1.0)
        hi = bisect.bisect_right(self._starts, t_s + COARTICULATION_REACH_S)
        acc = np.zeros(3)
        total = 0.0
        closure = 0.0
        covered = False
        for start, end, vis, bilabial in self._items[lo:hi]:
            if end < t_s - COARTICULATION_REACH_S:
                continue
            d = max(start - t_s, t_s - end, 0.0)
            if d == 0.0:
                covered = True
            w = vis.dominance * math.exp(-((d / COARTICULATION_TAU_S) ** 2))
            acc += w * np.array((vis.jaw_open, vis.mouth_wide, vis.mouth_round))
            total += w
            if bilabial:
                closure = max(closure, _bilabial_closure(t_s, start, end, self.min_hold_s))
        if not covered and total < 1e-3:
            return 0.0, 0.0, 0.0
        jaw, wide, rnd = acc / max(total, 1e-9)
        keep = 1.0 - closure
        return jaw * keep, wide * keep, rnd * keep


def _bilabial_closure(t: float, start: float, end: float, min_hold_s: float = 0.0) -> float:
    """1 in the middle of a bilabial (the lips touch), ramping to 0 over BILABIAL_RAMP_S outside its hold.

    The hold is the middle 60 % of the phone, widened to ``min_hold_s`` around its centre."""
    dur = max(end - start, 1e-3)
    half = max(0.3 * dur, 0.5 * min_hold_s)
    mid = 0.5 * (start + end)
    hold_a, hold_b = mid - half, mid + half
    if hold_a <= t <= hold_b:
        return 1.0
    d = hold_a - t if t < hold_a else t - hold_b
    return max(0.0, 1.0 - d / BILABIAL_RAMP_S)


# --- acoustic analysis ------------------------------------------------------------------------------------------

HOP_S = 0.010
"""Analysis hop: features, voice activity and smoothing run on a 10 ms grid."""

WINDOW_S = 0.025
"""Analysis window, centred on its hop."""

ANTICIPATION_S = 0.030
"""A frame reads the smoothed features this far after its centre: the lips lead the sound slightly, and this
offsets the lag of the attack smoothing. Limited by ``lookahead_s``."""

LOUDNESS_RANGE_DB = 25.0
"""Loudness from (speech level - this) to the speech level maps to openness 0..1."""

NOISE_MARGIN_DB = 8.0
"""The mouth stays closed unless the hop is this much above the tracked noise floor."""

ABS_FLOOR_DBFS = -60.0
"""Nothing quieter than this opens the mouth."""

NOISE_INIT_DBFS = -75.0
NOISE_RISE_DB_PER_S = 5.0
"""The noise floor follows the quietest hops down at once and creeps up at this rate (minimum tracking)."""

LEVEL_ONSET_HEADROOM_DB = 6.0
"""At the first speech hop the speech level is assumed this far above it (onsets are quieter than vowels) ..."""

LEVEL_PRIOR_DBFS = -22.0
"""... and at least this loud (a typical active speech level): a breath or noise before the first word must not
set the scale."""

LEVEL_RISE_S, LEVEL_FALL_S = 0.030, 1.0
"""The speech level is an asymmetric average of the loudness of speech hops: it rises quickly with louder speech
and sinks slowly, so it sits near the level of the stressed vowels of this voice and recording."""

LPC_ORDER = 16
PRE_EMPHASIS = 0.97
F2_REF_INIT_HZ = 1600.0
F2_REF_TAU_S = 2.0
"""The speaker's mean F2, tracked over voiced hops: spread and rounding are judged relative to it."""

JAW_ATTACK_S, JAW_RELEASE_S = 0.015, 0.040
SHAPE_ATTACK_S, SHAPE_RELEASE_S = 0.030, 0.050
FORMANT_TAU_S = 0.020

_EPS_CLOSED = 1e-3
OFFLINE_PIECE_S = 10.0
"""``mouth_track`` feeds the analyzer this much audio at a time."""
FORMANT_BLOCK_HOPS = 256
"""Hops whose formants are computed in one batch (bounds the analyzer's working memory on long audio)."""
FORMANT_MIN_LOUDNESS = 0.05
"""Formants steer the mouth's shape only in hops louder than this (0-1 of the speaker's range); quieter hops are
not analysed for them."""


def _alpha(tau_s: float) -> float:
    return 1.0 - math.exp(-HOP_S / tau_s)


@functools.lru_cache(maxsize=8)
def _hamming(n: int) -> np.ndarray:
    return np.hamming(n)


@functools.lru_cache(maxsize=4)
def _toeplitz_index(order: int) -> np.ndarray:
    """``|i - j|`` for an ``order`` x ``order`` matrix: indexing a row of lags with it gives its Toeplitz matrix."""
    i = np.arange(order)
    return np.abs(i[:, None] - i[None, :])


def lpc_formants(window: np.ndarray, rate_hz: int, order: int = LPC_ORDER) -> tuple[float, float]:
    """(F1, F2) in Hz of one windowed frame from the roots of its LPC polynomial; NaN where none is found."""
    f1, f2 = lpc_formants_batch(np.asarray(window)[None], rate_hz, order)
    return float(f1[0]), float(f2[0])


def lpc_formants_batch(windows: np.ndarray, rate_hz: int, order: int = LPC_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """(F1, F2) in Hz of each row of ``windows`` (n, samples) from the roots of its LPC polynomial; NaN where none
    is found.

    Every row is computed on its own (element-wise arithmetic, reductions along the row only and one LAPACK call
    per row), so a row's result does not depend on which other rows share the batch: the live analyzer, which sees
    a few hops at a time, gives exactly what the offline track computes in large batches. The call count does not
    grow with the LPC order (the live analyzer calls this 25 times a second per session): the ``order + 1``
    autocorrelation lags come from one ``einsum`` over the lagged copies of each row, the Yule-Walker system
    ``toeplitz(r[:order]) @ a = r[1:order + 1]`` is solved for all rows by one stacked ``np.linalg.solve``, and the
    roots are the eigenvalues of the companion matrices (what ``np.roots`` computes).
    """
    w = np.asarray(windows, dtype=np.float64)
    n_rows, n = w.shape
    if n_rows == 0:
        return np.zeros(0), np.zeros(0)
    x = np.zeros((n_rows, n + order))
    x[:, 0] = w[:, 0]
    x[:, 1:n] = w[:, 1:] - PRE_EMPHASIS * w[:, :-1]
    x[:, :n] *= _hamming(n)
    lagged = np.lib.stride_tricks.sliding_window_view(x, n, axis=1)[:, :order + 1]  # (rows, lags, n) views
    r = np.einsum("rkn,rn->rk", lagged, x[:, :n])  # r[:, k] = sum_t x[t] * x[t + k]
    ok = r[:, 0] > 1e-10
    r[:, 0] *= 1.0 + 1e-9  # a little diagonal loading keeps the Toeplitz matrices positive definite
    a = np.full((n_rows, order), np.nan)
    if ok.any():
        good = np.flatnonzero(ok)
        toeplitz = r[good][:, _toeplitz_index(order)]
        rhs = r[good, 1:, None]
        try:
            a[good] = np.linalg.solve(toeplitz, rhs)[:, :, 0]
        except np.linalg.LinAlgError:  # a singular row (not seen on real audio): solve row by row, NaN for it
            for j, row in enumerate(good):
                try:
                    a[row] = np.linalg.solve(toeplitz[j], rhs[j])[:, 0]
                except np.linalg.LinAlgError:
                    pass
    ok &= np.isfinite(a).all(axis=1)
    f1 = np.full(n_rows, np.nan)
    f2 = np.full(n_rows, np.nan)
    if not ok.any():
        return f1, f2
    rows = np.flatnonzero(ok)
    companion = np.zeros((len(rows), order, order))
    companion[:, 0] = a[rows]
    companion[:, np.arange(1, order), np.arange(order - 1)] = 1.0
    roots = np.linalg.eigvals(companion)
    with np.errstate(divide="ignore", invalid="ignore"):
        freqs = np.angle(roots) * rate_hz / (2 * math.pi)
        bws = -rate_hz / math.pi * np.log(np.abs(roots) + 1e-12)
    cand = np.sort(np.where((np.imag(roots) > 0) & (freqs > 150) & (bws < 500), freqs, np.inf), axis=1)
    first = (cand >= 200) & (cand <= 1100)
    has_f1 = first.any(axis=1)
    c1 = cand[np.arange(len(rows)), first.argmax(axis=1)]
    second = (cand > c1[:, None] + 200) & (cand < 3200)
    has_f2 = has_f1 & second.any(axis=1)
    c2 = cand[np.arange(len(rows)), second.argmax(axis=1)]
    f1[rows[has_f1]] = c1[has_f1]
    f2[rows[has_f2]] = c2[has_f2]
    return f1, f2


class StreamingMouthAnalyzer:
    """Per-video-frame mouth features computed incrementally, for live mode (and, fed everything, offline).

    ``push(samples)`` returns the rows of the frames that became computable; a frame ``i`` (covering
    ``[i / fps, (i + 1) / fps)``) needs audio up to ``(i + 1) / fps + lookahead_s``. ``flush()`` returns the rest
    at the end of an utterance (the last frames are computed as if silence followed), so an utterance of ``n``
    samples yields ``ceil(n / rate_hz * fps)`` rows in all. After ``flush`` the next ``push`` starts a new
    utterance at frame 0; the speech-level, noise-floor and F2 estimates carry over (same voice). ``reset()``
    forgets everything. ``add_phones`` gives phone timings (seconds from the utterance start) to follow.
    """

    def __init__(self, fps: float, rate_hz: int = AUDIO_RATE_HZ, lookahead_s: float = 0.06, *,
                 phones: Sequence["Phone"] | None = None) -> None:
        if fps <= 0:
            raise InvalidValueError(f"fps must be positive, got {fps}")
        if lookahead_s < 0:
            raise InvalidValueError(f"lookahead_s must be >= 0, got {lookahead_s}")
        self.fps = float(fps)
        self.rate_hz = int(rate_hz)
        self.lookahead_s = float(lookahead_s)
        self._resampler = None
        if self.rate_hz != AUDIO_RATE_HZ:
            self._resampler = StreamResampler(self.rate_hz, AUDIO_RATE_HZ)
        self._sr = AUDIO_RATE_HZ
        self._hop = int(round(HOP_S * self._sr))
        self._win = int(round(WINDOW_S * self._sr))
        self._win_before = self._win // 2 - self._hop // 2  # window starts this many samples before the hop
        # A frame reads the hop grid at centre + anticipation; bound it so no frame needs more than lookahead_s.
        reach_s = (self._win - self._win_before + self._hop) / self._sr
        self.anticipation_s = max(-0.45 / self.fps, min(ANTICIPATION_S, self.lookahead_s + 0.5 / self.fps - reach_s))
        self._a_jaw = (_alpha(JAW_ATTACK_S), _alpha(JAW_RELEASE_S))
        self._a_shape = (_alpha(SHAPE_ATTACK_S), _alpha(SHAPE_RELEASE_S))
        self._a_formant = _alpha(FORMANT_TAU_S)
        self._a_f2ref = _alpha(F2_REF_TAU_S)
        self._noise_rise = NOISE_RISE_DB_PER_S * HOP_S
        self._a_level = (_alpha(LEVEL_RISE_S), _alpha(LEVEL_FALL_S))
        self.reset()
        self.add_phones(phones or ())

    # -- public API --

    def reset(self) -> None:
        """Forget everything: a new speaker, a new stream."""
        self._noise_db = NOISE_INIT_DBFS
        self._level_db: float | None = None
        self._f2_ref = F2_REF_INIT_HZ
        self._new_utterance()

    def add_phones(self, phones: Iterable["Phone"]) -> None:
        """Phone timings for the current utterance (seconds from its first sample); may arrive ahead of audio."""
        self._visemes.extend(phones)

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._resampler is not None:
            x = self._resampler.push(x)
        # the hops are analysed only once the next frame can be emitted: the frame needs them all, and analysing a
        # whole frame's hops in one batch halves the calls when audio comes in 20 ms messages
        self._append(x, analyse=self._needed_samples(self._next_frame) <= self._n_received + len(x))
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """The remaining rows of the utterance; the next push starts a new one."""
        if self._resampler is not None:
            self._append(self._resampler.flush())
        n_frames = self.frames_for(self._n_received)
        if n_frames > self._next_frame:
            pad = max(0, self._needed_samples(n_frames - 1) - self._n_received)
            received = self._n_received
            self._append(np.zeros(pad, np.float32))
            self._n_received = received  # the padding is not audio
            rows = self._emit(final=True, n_frames=n_frames)
        else:
            rows = np.zeros((0, 3), np.float32)
        self._new_utterance()
        if self._resampler is not None:
            self._resampler = type(self._resampler)(self.rate_hz, AUDIO_RATE_HZ)
        return rows

    def frames_for(self, n_samples: int) -> int:
        """How many frames an utterance of ``n_samples`` (at the internal rate) has: ``ceil(duration * fps)``."""
        return int(math.ceil(n_samples * self.fps / self._sr - 1e-9))

    def needed_samples(self, i: int) -> int:
        """Samples (at the internal rate) of an utterance needed before ``push`` returns frame ``i``'s row: a
        consumer can tell from sample counts alone which rows an analyzer it feeds has produced."""
        return self._needed_samples(i)

    @property
    def frames_emitted(self) -> int:
        return self._next_frame

    # -- internals --

    def _new_utterance(self) -> None:
        self._buf = np.zeros(self._win_before, np.float32)  # the first window reaches before sample 0: zeros
        self._buf_start = -self._win_before
        self._n_received = 0
        self._next_hop = 0
        self._hops: list[tuple[float, float, float, float]] = []  # smoothed (jaw, wide, round, loudness)
        self._hops_start = 0
        self._next_frame = 0
        self._vad = VoiceActivity(self._sr)
        self._y = [0.0, 0.0, 0.0, 0.0]
        self._f1 = math.nan
        self._f2 = math.nan
        self._visemes = VisemeTrack(min_hold_s=1.0 / self.fps)  # phones belong to one utterance

    def _append(self, x: np.ndarray, analyse: bool = True) -> None:
        if len(x):
            self._buf = np.concatenate((self._buf, x))
            self._n_received += len(x)
        if not analyse:
            return
        # the hops whose windows are complete, in blocks: their formants are computed together
        end_hop = (self._buf_start + len(self._buf) + self._win_before - self._win) // self._hop + 1
        for start in range(self._next_hop, end_hop, FORMANT_BLOCK_HOPS):
            n = min(FORMANT_BLOCK_HOPS, end_hop - start)
            windows = np.lib.stride_tricks.sliding_window_view(self._buf, self._win)[
                start * self._hop - self._win_before - self._buf_start::self._hop][:n]
            # two passes: the levels first (they do not need formants), then formants for the hops loud enough
            # to use them (none in pauses), then the shapes
            levels = [self._hop_level(window) for window in windows]
            loud_rows = [j for j, (_, loud) in enumerate(levels) if loud > FORMANT_MIN_LOUDNESS]
            f1s = [math.nan] * n
            f2s = [math.nan] * n
            if loud_rows:
                g1, g2 = lpc_formants_batch(windows[loud_rows], self._sr)
                for j, a, b in zip(loud_rows, g1.tolist(), g2.tolist()):
                    f1s[j], f2s[j] = a, b
            for (voiced, loud), f1, f2 in zip(levels, f1s, f2s):
                self._hop_shape(voiced, loud, f1, f2)
        self._next_hop = max(self._next_hop, end_hop)
        # keep only what the next window needs
        keep_from = self._next_hop * self._hop - self._win_before
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from

    def _frame_query(self, i: int) -> tuple[float, int, float]:
        """(query time, first hop index, interpolation fraction) of frame ``i``."""
        tq = (i + 0.5) / self.fps + self.anticipation_s
        u = tq / HOP_S - 0.5  # hop k is centred at (k + 0.5) * HOP_S
        k0 = math.floor(u)
        if k0 < 0:
            return tq, 0, 0.0
        return tq, k0, u - k0

    def _needed_samples(self, i: int) -> int:
        _, k0, _ = self._frame_query(i)
        return (k0 + 1) * self._hop - self._win_before + self._win

    def _emit(self, final: bool, n_frames: int | None = None) -> np.ndarray:
        rows = []
        while True:
            i = self._next_frame
            if final:
                if i >= n_frames:
                    break
            elif self._needed_samples(i) > self._n_received:
                break
            rows.append(self._frame_row(i))
            self._next_frame += 1
        if rows:
            _, k0, _ = self._frame_query(self._next_frame)
            drop = min(k0 - self._hops_start, len(self._hops))
            if drop > 0:
                del self._hops[:drop]
                self._hops_start += drop
        return np.array(rows, dtype=np.float32).reshape(-1, 3)

    def _frame_row(self, i: int) -> tuple[float, float, float]:
        tq, k0, frac = self._frame_query(i)
        a = self._hops[k0 - self._hops_start]
        b = self._hops[min(k0 + 1 - self._hops_start, len(self._hops) - 1)]
        v = [a[j] + (b[j] - a[j]) * frac for j in range(4)]
        if len(self._visemes):
            scale = math.sqrt(max(v[3], 0.0))
            jaw, wide, rnd = (scale * t for t in self._visemes.targets(tq))
        else:
            jaw, wide, rnd = v[0], v[1], v[2]
        out = []
        for val in (jaw, wide, rnd):
            val = min(1.0, max(0.0, val))
            out.append(0.0 if val < _EPS_CLOSED else val)
        return out[0], out[1], out[2]

    def _hop_level(self, window: np.ndarray) -> tuple[bool, float]:
        """Advance the level state by one hop (its analysis ``window``): (voiced, loudness 0-1)."""
        speech = self._vad.update(window[self._win_before: self._win_before + self._hop])
        db = 10.0 * math.log10(float(np.dot(window, window)) / len(window) + 1e-12)

        # noise floor: minimum tracking
        if db < self._noise_db:
            self._noise_db = db
        else:
            self._noise_db = min(db, self._noise_db + self._noise_rise)
        gate_db = max(ABS_FLOOR_DBFS, self._noise_db + NOISE_MARGIN_DB)
        voiced = speech and db > gate_db

        if voiced:
            if self._level_db is None:
                self._level_db = max(db + LEVEL_ONSET_HEADROOM_DB, LEVEL_PRIOR_DBFS)
            else:
                self._level_db += self._a_level[0 if db > self._level_db else 1] * (db - self._level_db)

        loud = 0.0
        if voiced and self._level_db is not None:
            floor = max(self._level_db - LOUDNESS_RANGE_DB, gate_db)
            loud = min(1.0, max(0.0, (db - floor) / max(self._level_db - floor, 1.0)))
        return voiced, loud

    def _hop_shape(self, voiced: bool, loud: float, f1: float, f2: float) -> None:
        """Advance the smoothed shape by one hop from its level and its window's formants (used only when
        ``loud > FORMANT_MIN_LOUDNESS``)."""
        f1n = 0.5
        wide = rnd = 0.0
        if voiced:  # (a voiced hop always has a level)
            if loud > FORMANT_MIN_LOUDNESS:
                if not math.isnan(f1):
                    self._f1 = f1 if math.isnan(self._f1) else self._f1 + self._a_formant * (f1 - self._f1)
                if not math.isnan(f2):
                    self._f2 = f2 if math.isnan(self._f2) else self._f2 + self._a_formant * (f2 - self._f2)
                    self._f2_ref += self._a_f2ref * (f2 - self._f2_ref)
            if not math.isnan(self._f1):
                f1n = min(1.0, max(0.0, (self._f1 - 300.0) / 500.0))
            if not math.isnan(self._f2):
                closeness = 1.0 - 0.6 * f1n
                wide = min(1.0, max(0.0, (self._f2 - self._f2_ref - 100.0) / 500.0)) * closeness
                rnd = min(1.0, max(0.0, (self._f2_ref - self._f2 - 150.0) / 500.0)) * closeness
        else:
            self._f1 = self._f2 = math.nan

        shape = loud ** 1.5
        targets = (shape * (0.55 + 0.45 * f1n), shape * wide, shape * rnd, loud)
        alphas = (self._a_jaw, self._a_shape, self._a_shape, self._a_jaw)
        y = self._y
        for j in range(4):
            att, rel = alphas[j]
            y[j] += (att if targets[j] > y[j] else rel) * (targets[j] - y[j])
        self._hops.append((y[0], y[1], y[2], y[3]))


def mouth_track(samples: np.ndarray, rate_hz: int, fps: float, *, phones: Sequence["Phone"] | None = None,
                lookahead_s: float = 0.06) -> np.ndarray:
    """Per-frame ``(jaw_open, mouth_wide, mouth_round)`` for a whole utterance: ``(ceil(duration * fps), 3)``.

    Exactly what ``StreamingMouthAnalyzer`` gives for the same audio (it is the same code, fed at once). With
    ``phones`` the shapes follow the phones' visemes (scaled by loudness, closed in silence and on bilabials).
    """
    analyzer = StreamingMouthAnalyzer(fps, rate_hz, lookahead_s, phones=phones)
    samples = np.asarray(samples).reshape(-1)
    # fed in pieces: the analyzer copies what it is given into its window buffer, and a whole long recording at
    # once would be a second copy of it in memory (the rows are the same however the audio is cut)
    step = max(1, int(OFFLINE_PIECE_S * rate_hz))
    rows = [analyzer.push(samples[i:i + step]) for i in range(0, len(samples), step)]
    rows.append(analyzer.flush())
    return np.concatenate(rows, axis=0)
