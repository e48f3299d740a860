"""Prosody for the director: pitch and loudness contours, emphasis peaks, pauses and overall energy.

Praat (through praat-parselmouth) measures pitch and intensity every 10 ms. Emphasis is where both rise above the
speaker's own baseline (z-scores within speech, so it works for any voice and recording level); pauses are the gaps
between voice-activity regions; energy (0..1) combines loudness and pitch range and sets how animated the avatar is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avatarcast.core.errors import MissingDependencyError

PROSODY_STEP_S = 0.01
PITCH_FLOOR_HZ = 75.0
PITCH_CEILING_HZ = 500.0
EMPHASIS_MIN_GAP_S = 0.45
"""Two emphasis peaks closer than this are one peak (the stronger is kept)."""
EMPHASIS_THRESHOLD_Z = 0.9
"""Combined pitch/intensity z-score above which a local maximum counts as emphasis."""
PAUSE_MIN_S = 0.15
ENERGY_QUIET_DBFS = -36.0
ENERGY_LOUD_DBFS = -14.0


@dataclass(frozen=True)
class Emphasis:
    time_s: float
    strength: float  # 0..1


@dataclass
class Prosody:
    times_s: np.ndarray  # frame centres
    f0_hz: np.ndarray  # NaN where unvoiced
    intensity_db: np.ndarray
    emphasis: list[Emphasis] = field(default_factory=list)
    pauses: list[tuple[float, float]] = field(default_factory=list)  # gaps inside speech
    energy: float = 0.5  # 0 flat and quiet .. 1 loud and lively
    loudness_dbfs: float = -60.0  # mean RMS level of the speech

    def energy_between(self, start_s: float, end_s: float) -> float:
        """Relative loudness of a stretch (0..1) against the whole recording's speech."""
        sel = (self.times_s >= start_s) & (self.times_s < end_s)
        if not np.any(sel) or len(self.intensity_db) == 0:
            return self.energy
        hi = float(np.percentile(self.intensity_db, 95))
        lo = hi - 30.0
        return float(np.clip((np.mean(self.intensity_db[sel]) - lo) / (hi - lo), 0.0, 1.0))


def _zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    vals = x[mask & np.isfinite(x)]
    if len(vals) < 3:
        return np.zeros_like(x)
    sd = float(np.std(vals)) or 1.0
    return (x - float(np.mean(vals))) / sd


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or len(x) < n:
        return x
    k = np.hanning(n + 2)[1:-1]
    k /= k.sum()
    return np.convolve(x, k, mode="same")


CHUNK_S = 30.0
"""Long recordings are analysed in pieces of this length, so memory does not grow with the duration."""
CHUNK_PAD_S = 1.0
"""Each piece is analysed with this much audio on either side, so the contours join without edge effects."""


def _contours(parselmouth, x: np.ndarray, rate_hz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame times, F0 (NaN where unvoiced) and intensity (dB) every PROSODY_STEP_S, piece by piece."""
    n = len(x)
    step = int(round(CHUNK_S * rate_hz))
    pad = int(round(CHUNK_PAD_S * rate_hz))
    times, f0s, dbs = [], [], []
    for start in range(0, n, step):
        stop = min(start + step, n)
        lo, hi = max(start - pad, 0), min(stop + pad, n)
        snd = parselmouth.Sound(x[lo:hi].astype(np.float64), sampling_frequency=float(rate_hz))
        try:
            pitch = snd.to_pitch(time_step=PROSODY_STEP_S, pitch_floor=PITCH_FLOOR_HZ,
                                 pitch_ceiling=PITCH_CEILING_HZ)
            inten = snd.to_intensity(minimum_pitch=PITCH_FLOOR_HZ, time_step=PROSODY_STEP_S, subtract_mean=False)
        except parselmouth.PraatError:  # a piece too short to analyse (the tail of the recording)
            continue
        t = np.asarray(pitch.xs(), dtype=np.float64) + lo / rate_hz
        keep = (t >= start / rate_hz) & (t < stop / rate_hz)
        f0 = pitch.selected_array["frequency"].astype(np.float64)
        t_int = np.asarray(inten.xs(), dtype=np.float64) + lo / rate_hz
        db = np.asarray(inten.values, dtype=np.float64).reshape(-1)
        times.append(t[keep])
        f0s.append(f0[keep])
        dbs.append(np.interp(t[keep], t_int, db) if len(t_int) else np.zeros(int(keep.sum())))
    if not times:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    f0 = np.concatenate(f0s)
    f0[f0 <= 0] = np.nan
    return np.concatenate(times), f0, np.concatenate(dbs)


def analyze_prosody(samples: np.ndarray, rate_hz: int,
                    regions: list[tuple[float, float]] | None = None,
                    contours: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Prosody:
    """Measure pitch, intensity, emphasis peaks and pauses; ``regions`` are speech regions (seconds) if known;
    ``contours``: frame times, F0 and intensity already measured on ``samples`` (see ``_contours``)."""
    try:
        import parselmouth
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MissingDependencyError("prosody analysis needs praat-parselmouth: pip install praat-parselmouth") from exc
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    duration = len(x) / float(rate_hz)
    empty = Prosody(np.zeros(0), np.zeros(0), np.zeros(0))
    if duration < 0.1 or not np.any(x):
        return empty
    times, f0, db_on_pitch = contours if contours is not None else _contours(parselmouth, x, rate_hz)

    if regions is None:
        thr = float(np.max(db_on_pitch)) - 25.0 if len(db_on_pitch) else 0.0
        in_speech = db_on_pitch > thr
    else:
        in_speech = np.zeros(len(times), dtype=bool)
        for a, b in regions:
            in_speech |= (times >= a) & (times < b)

    semitones = 12.0 * np.log2(f0 / 100.0)
    z_pitch = _zscore(semitones, in_speech)
    z_pitch = np.where(np.isfinite(z_pitch), z_pitch, 0.0)
    z_int = _zscore(db_on_pitch, in_speech)
    score = _smooth(0.5 * z_pitch + 0.5 * z_int, 9)
    score[~in_speech] = -np.inf

    # Local maxima above threshold, stronger ones first, then thin by minimum gap.
    cand = [i for i in range(1, len(score) - 1)
            if score[i] >= EMPHASIS_THRESHOLD_Z and score[i] >= score[i - 1] and score[i] > score[i + 1]]
    cand.sort(key=lambda i: -score[i])
    chosen: list[int] = []
    for i in cand:
        if all(abs(times[i] - times[j]) >= EMPHASIS_MIN_GAP_S for j in chosen):
            chosen.append(i)
    chosen.sort()
    emphasis = [Emphasis(float(times[i]), float(np.clip((score[i] - EMPHASIS_THRESHOLD_Z) / 2.0 + 0.3, 0.0, 1.0)))
                for i in chosen]

    pauses: list[tuple[float, float]] = []
    if regions:
        for (a0, a1), (b0, _b1) in zip(regions[:-1], regions[1:]):
            if b0 - a1 >= PAUSE_MIN_S:
                pauses.append((float(a1), float(b0)))

    # Energy: loudness of the speech plus how much the pitch moves.
    spans = [(int(a * rate_hz), int(b * rate_hz)) for a, b in regions or ()]
    spans = [(a, b) for a, b in spans if b > a] or [(0, len(x))]
    power = sum(float(np.dot(x[a:b].astype(np.float64), x[a:b])) for a, b in spans)
    count = sum(len(x[a:b]) for a, b in spans)
    rms = float(np.sqrt(power / count)) if count else 0.0
    loud_dbfs = 20.0 * np.log10(max(rms, 1e-9))
    loud = float(np.clip((loud_dbfs - ENERGY_QUIET_DBFS) / (ENERGY_LOUD_DBFS - ENERGY_QUIET_DBFS), 0.0, 1.0))
    voiced = semitones[in_speech & np.isfinite(semitones)]
    spread = float(np.std(voiced)) if len(voiced) > 5 else 0.0  # semitones; ~2 flat, ~5 lively
    lively = float(np.clip((spread - 1.5) / 4.0, 0.0, 1.0))
    energy = float(np.clip(0.6 * loud + 0.4 * lively, 0.0, 1.0))
    return Prosody(times, f0, db_on_pitch, emphasis, pauses, energy, float(loud_dbfs))
