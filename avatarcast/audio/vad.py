"""Voice activity detection with webrtcvad: where in a recording someone speaks.

``speech_regions`` gives whole-utterance regions in seconds (offline). ``VoiceActivity`` is the same detector fed
10 ms at a time, with a causal hangover, for the streaming mouth analyzer.
"""

from __future__ import annotations

import math

import numpy as np
import webrtcvad

from avatarcast.audio.io import SILENCE_PEAK_DBFS, Audio, peak_dbfs, resample
from avatarcast.core.errors import AudioError, InvalidValueError
from avatarcast.core.types import AUDIO_RATE_HZ

VAD_AGGRESSIVENESS = 2
"""webrtcvad mode: 0 (keeps most) .. 3 (rejects most non-speech)."""

VAD_FRAME_S = 0.030
"""Offline frame length (webrtcvad accepts 10, 20 or 30 ms; 30 ms is the most reliable)."""

VAD_HANGOVER_S = 0.20
"""Pauses shorter than this inside speech are kept as speech (hangover smoothing)."""

VAD_MIN_REGION_S = 0.06
"""Speech regions shorter than this (clicks, a single noisy frame) are dropped."""

VAD_PAD_S = 0.03
"""Regions are widened by this much on each side: webrtcvad decides a few ms late at onsets and early at offsets."""

VAD_ENERGY_RANGE_DB = 45.0
"""Frames more than this far below the loudest frame never count as speech (webrtcvad flags faint noise)."""

VAD_ABS_FLOOR_DBFS = -60.0
"""Frames below this level never count as speech."""

_VAD_RATES_HZ = (8000, 16000, 32000, 48000)


def _as_pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def frame_flags(samples: np.ndarray, rate_hz: int = AUDIO_RATE_HZ, frame_s: float = VAD_FRAME_S,
                aggressiveness: int = VAD_AGGRESSIVENESS) -> np.ndarray:
    """One boolean per whole frame of ``frame_s``: webrtcvad's raw decision, gated by frame energy."""
    x = np.asarray(samples, dtype=np.float32)
    if rate_hz not in _VAD_RATES_HZ:
        x = resample(x, rate_hz, AUDIO_RATE_HZ)
        rate_hz = AUDIO_RATE_HZ
    n = int(round(frame_s * rate_hz))
    n_frames = len(x) // n
    if n_frames == 0:
        return np.zeros(0, dtype=bool)
    frames = x[: n_frames * n].reshape(n_frames, n)
    db = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    floor = max(VAD_ABS_FLOOR_DBFS, float(db.max()) - VAD_ENERGY_RANGE_DB)
    vad = webrtcvad.Vad(aggressiveness)
    pcm = _as_pcm16(x[: n_frames * n])
    flags = np.array([vad.is_speech(pcm[2 * i * n: 2 * (i + 1) * n], rate_hz) for i in range(n_frames)], bool)
    return flags & (db > floor)


def speech_regions(samples: np.ndarray, rate_hz: int = AUDIO_RATE_HZ, *,
                   aggressiveness: int = VAD_AGGRESSIVENESS, hangover_s: float = VAD_HANGOVER_S,
                   min_region_s: float = VAD_MIN_REGION_S, pad_s: float = VAD_PAD_S) -> list[tuple[float, float]]:
    """Speech regions ``[(start_s, end_s), ...]``, sorted, non-overlapping, clipped to the audio.

    webrtcvad decides per 30 ms frame; pauses shorter than ``hangover_s`` are bridged, regions shorter than
    ``min_region_s`` dropped, and each region padded by ``pad_s``.
    """
    duration_s = len(samples) / float(rate_hz)
    flags = frame_flags(samples, rate_hz, VAD_FRAME_S, aggressiveness)
    raw: list[list[float]] = []
    start = None
    for i, f in enumerate(flags):
        if f and start is None:
            start = i
        elif not f and start is not None:
            raw.append([start * VAD_FRAME_S, i * VAD_FRAME_S])
            start = None
    if start is not None:
        raw.append([start * VAD_FRAME_S, len(flags) * VAD_FRAME_S])
    merged: list[list[float]] = []
    for a, b in raw:
        if merged and a - merged[-1][1] < hangover_s:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    regions: list[tuple[float, float]] = []
    for a, b in merged:
        if b - a < min_region_s:
            continue
        a, b = max(0.0, a - pad_s), min(duration_s, b + pad_s)
        if regions and a <= regions[-1][1]:
            regions[-1] = (regions[-1][0], b)
        else:
            regions.append((a, b))
    return regions


def speech_fraction(samples: np.ndarray, rate_hz: int = AUDIO_RATE_HZ) -> float:
    """The share of the audio inside speech regions (0 for silence)."""
    duration_s = len(samples) / float(rate_hz)
    if duration_s <= 0:
        return 0.0
    return sum(b - a for a, b in speech_regions(samples, rate_hz)) / duration_s


class VoiceActivity:
    """webrtcvad fed one 10 ms frame at a time (16 kHz), with a causal hangover.

    ``update(frame)`` returns True while speech was detected within the last ``hangover_s``. The decision for a
    frame depends only on the frames before it, so feeding the same audio in any chunking gives the same answers.
    """

    FRAME_S = 0.010

    def __init__(self, rate_hz: int = AUDIO_RATE_HZ, aggressiveness: int = VAD_AGGRESSIVENESS,
                 hangover_s: float = 0.12) -> None:
        if rate_hz not in _VAD_RATES_HZ:
            raise InvalidValueError(f"webrtcvad needs 8, 16, 32 or 48 kHz, got {rate_hz} Hz")
        self.rate_hz = rate_hz
        self.frame_len = int(round(self.FRAME_S * rate_hz))
        self.aggressiveness = aggressiveness
        self.hangover_frames = int(math.ceil(hangover_s / self.FRAME_S))
        self.reset()

    def reset(self) -> None:
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._since_speech = 1 << 30

    def update(self, frame: np.ndarray) -> bool:
        if len(frame) != self.frame_len:
            raise InvalidValueError(f"expected {self.frame_len} samples, got {len(frame)}")
        if self._vad.is_speech(_as_pcm16(frame), self.rate_hz):
            self._since_speech = 0
        else:
            self._since_speech += 1
        return self._since_speech <= self.hangover_frames


MIN_SPEECH_S = 0.1
"""``check_speech`` wants at least this much voice activity."""

MIN_SPEECH_SPREAD_DB = 3.0
"""Speech loudness varies from syllable to syllable; a steadier signal (hum, a tone, fan noise) is not speech."""


def check_speech(audio: Audio | np.ndarray, rate_hz: int = AUDIO_RATE_HZ) -> None:
    """Raise ``AudioError`` when the audio holds no speech: peak below SILENCE_PEAK_DBFS, or no voice activity.

    The render command calls this unless the user passes ``--allow-silence`` (a silent avatar is then rendered).
    """
    if isinstance(audio, Audio):
        samples, rate_hz, name = audio.samples, audio.rate_hz, audio.path or "the audio"
    else:
        samples, name = np.asarray(audio, np.float32), "the audio"
    peak = peak_dbfs(samples)
    peak_text = "-inf" if math.isinf(peak) else f"{peak:.1f}"
    if len(samples) == 0 or peak < SILENCE_PEAK_DBFS:
        raise AudioError(
            f"{name} contains no speech (peak {peak_text} dBFS, below {SILENCE_PEAK_DBFS:.0f} dBFS); "
            f"check the recording, or set `allow_silence` to render a silent avatar"
        )
    regions = speech_regions(samples, rate_hz)
    voiced_s = sum(b - a for a, b in regions)
    if voiced_s >= MIN_SPEECH_S and _loudness_spread_db(samples, rate_hz, regions) < MIN_SPEECH_SPREAD_DB:
        voiced_s = 0.0  # webrtcvad accepts steady tones and noise; speech rises and falls by syllable
    if voiced_s < MIN_SPEECH_S:
        raise AudioError(
            f"{name} contains no speech (peak {peak_text} dBFS, but voice activity detection found "
            f"{voiced_s:.2f} s of speech); check the recording, or set `allow_silence` to render a silent avatar"
        )


def _loudness_spread_db(samples: np.ndarray, rate_hz: int, regions: list[tuple[float, float]]) -> float:
    """Standard deviation of the 20 ms loudness (dB) inside the speech regions."""
    n = max(1, int(0.02 * rate_hz))
    parts = [samples[int(a * rate_hz): int(b * rate_hz)] for a, b in regions]
    x = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    m = len(x) // n
    if m < 2:
        return 0.0
    frames = x[: m * n].reshape(m, n).astype(np.float64)
    return float(np.std(10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-10)))
