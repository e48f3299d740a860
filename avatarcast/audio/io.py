"""Audio input: load any speech recording as mono float32 at AUDIO_RATE_HZ; PCM conversion and resampling.

Files are read with libsndfile (soundfile) first: WAV, FLAC, OGG/Vorbis, OGG/Opus, AIFF and, with libsndfile
1.1 or newer, MP3. Whatever libsndfile cannot read (AAC, M4A, WebM, older MP3 builds) is decoded with PyAV's
FFmpeg. Every input is downmixed to mono and resampled to ``AUDIO_RATE_HZ`` with soxr.

This module imports nothing above it. The analysis built on it lives next to it: voice activity and the check that
a recording holds speech in ``vad.py``, per-frame mouth features in ``visemes.py``, forced alignment in
``alignment.py``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from avatarcast.core.errors import AudioError, InvalidValueError
from avatarcast.core.types import AUDIO_RATE_HZ

logger = logging.getLogger(__name__)

SILENCE_PEAK_DBFS = -50.0
"""Audio whose peak stays below this level is treated as silent."""

CLIP_LEVEL = 0.999
"""Samples at or above this magnitude (full scale = 1.0) count as clipped."""

CLIP_WARN_FRACTION = 0.001
"""Warn when more than this fraction of the samples are clipped (0.1 %)."""

SUPPORTED_FORMATS_TEXT = "WAV, FLAC, MP3, OGG (Vorbis/Opus), M4A/AAC"


@dataclass
class Audio:
    """A recording, decoded: mono float32 samples in [-1, 1] at ``rate_hz`` (always AUDIO_RATE_HZ).

    ``source_*`` describe the file as it was before downmixing and resampling, for logs and reports.
    """

    samples: np.ndarray
    rate_hz: int
    source_rate_hz: int
    source_channels: int
    source_format: str
    path: str | None = None

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.rate_hz)

    @property
    def peak_dbfs(self) -> float:
        return peak_dbfs(self.samples)


def peak_dbfs(samples: np.ndarray) -> float:
    """The largest magnitude in dB relative to full scale (-inf for digital silence)."""
    if len(samples) == 0:
        return -math.inf
    peak = float(np.max(np.abs(samples)))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def load_audio(path: str | Path) -> Audio:
    """Decode a speech file (any rate, channel count, bit depth) to mono float32 at AUDIO_RATE_HZ.

    Raises ``AudioError`` with what was wrong and what to do for a missing path, a folder, an empty file, a file
    that is not audio or is corrupt or truncated, an unsupported format, and a file without samples. Clipping is
    logged as a warning (with the percentage of clipped samples), not an error.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}; check the path")
    if p.is_dir():
        raise AudioError(f"audio path is a folder, not a file: {p}; give a {SUPPORTED_FORMATS_TEXT} file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise AudioError(f"cannot read audio file {p}: {exc.strerror or exc}") from exc
    if size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {p}; give a recording that contains speech")

    try:
        data, source_rate, source_format = _read_soundfile(p)
    except _NotReadable as sf_exc:
        try:
            data, source_rate, source_format = _read_pyav(p)
        except _NotReadable as av_exc:
            raise AudioError(
                f"cannot decode audio file {p}: it is corrupt, truncated, not audio, or in an unsupported format "
                f"({sf_exc}; {av_exc}). Convert it to one of {SUPPORTED_FORMATS_TEXT}, for example with "
                f"`ffmpeg -i INPUT -ar 16000 -ac 1 OUT.wav`"
            ) from None

    if data.shape[0] == 0:
        raise AudioError(f"audio file contains no samples (zero length): {p}; give a recording that contains speech")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"audio file {p} contains NaN or infinite samples; it is corrupt, re-export it")

    channels = int(data.shape[1])
    _warn_if_clipped(data, p)
    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32) if channels > 1 else data[:, 0]
    samples = resample(mono, source_rate, AUDIO_RATE_HZ)
    if len(samples) == 0:
        raise AudioError(f"audio file {p} is too short to use ({data.shape[0]} samples at {source_rate} Hz)")
    return Audio(
        samples=np.ascontiguousarray(samples, dtype=np.float32),
        rate_hz=AUDIO_RATE_HZ,
        source_rate_hz=int(source_rate),
        source_channels=channels,
        source_format=source_format,
        path=str(p),
    )


class _NotReadable(AudioError):
    """One decoder could not read the file (the message says why); the next one may."""


def _read_soundfile(p: Path) -> tuple[np.ndarray, int, str]:
    try:
        with sf.SoundFile(str(p)) as f:
            declared = f.frames
            fmt = f"{f.format} {f.subtype}"
            rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _NotReadable(f"libsndfile: {exc}") from exc
    # libsndfile reads what is there of a truncated file; a header that promises more samples than the file holds
    # means the file was cut short (an interrupted copy or download).
    missing = _riff_missing_bytes(p)
    if missing > 0:
        raise AudioError(
            f"audio file {p} is truncated: its header declares {missing} more bytes of audio than the file "
            f"holds; re-export or re-copy the file"
        )
    if declared > 0 and declared < (1 << 62) and data.shape[0] < declared * 0.99:
        raise AudioError(
            f"audio file {p} is truncated: its header declares {declared} samples but only {data.shape[0]} "
            f"could be read; re-export or re-copy the file"
        )
    return data, int(rate), fmt


def _riff_missing_bytes(p: Path) -> int:
    """For a RIFF/WAVE file, how many bytes its data chunk declares beyond the end of the file (0 if none or
    not a WAV). libsndfile silently shortens such files, so this is how truncation is noticed."""
    with open(p, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        size = p.stat().st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            n = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                if n == 0xFFFFFFFF or n == 0:  # streamed WAV: size unknown
                    return 0
                return max(0, pos + 8 + n - size)
            pos += 8 + n + (n & 1)
    return 0


def _read_pyav(p: Path) -> tuple[np.ndarray, int, str]:
    import av  # FFmpeg, for what libsndfile cannot read

    try:
        container = av.open(str(p))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise _NotReadable(f"FFmpeg: {exc}") from exc
    with container:
        if not container.streams.audio:
            raise _NotReadable("FFmpeg: the file has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 0)
        fmt = f"{container.format.name} {stream.codec_context.name}"
        # Convert to planar float at the source rate and layout; downmixing and resampling are done by us,
        # identically for every decoder.
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except (av.FFmpegError, ValueError) as exc:
            if not chunks:
                raise _NotReadable(f"FFmpeg: {exc}") from exc
            raise AudioError(
                f"audio file {p} is corrupt or truncated: decoding failed after "
                f"{sum(c.shape[1] for c in chunks) / max(rate, 1):.2f} s ({exc}); re-export or re-copy the file"
            ) from exc
    if not chunks:
        return np.zeros((0, max(channels, 1)), np.float32), rate, fmt
    data = np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False)
    if rate <= 0:
        raise _NotReadable("FFmpeg: the audio stream declares no sample rate")
    return np.ascontiguousarray(data), rate, fmt


def _warn_if_clipped(data: np.ndarray, p: Path) -> None:
    clipped = np.count_nonzero(np.abs(data) >= CLIP_LEVEL)
    fraction = clipped / data.size
    if fraction > CLIP_WARN_FRACTION:
        logger.warning(
            "audio file %s is clipped: %.2f %% of its samples are at full scale; mouth shapes may be less "
            "precise (lower the recording gain if you can)", p, 100.0 * fraction,
        )


def pcm16_to_float(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Raw PCM16 little-endian mono bytes (the live ingest format) to float32 in [-1, 1)."""
    n = len(data)
    if n % 2:
        raise AudioError(
            f"PCM16 audio must have an even number of bytes (2 per sample), got {n}; send whole samples"
        )
    return np.frombuffer(bytes(data), dtype="<i2").astype(np.float32) * np.float32(1.0 / 32768.0)


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] to PCM16 little-endian bytes (clipped to the 16-bit range)."""
    scaled = np.clip(np.round(np.asarray(samples, np.float32) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample a whole mono signal with soxr (high quality). Returns float32; a copy-free pass when rates match.

    For a stream that arrives in chunks use ``StreamResampler``: resampling chunks one by one with this function
    would click at every chunk border.
    """
    if from_hz <= 0 or to_hz <= 0:
        raise AudioError(f"sample rates must be positive, got {from_hz} Hz -> {to_hz} Hz")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise InvalidValueError(f"resample expects mono samples (1-D), got shape {x.shape}")
    if from_hz == to_hz or len(x) == 0:
        return x
    return soxr.resample(x, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resamples a mono stream chunk by chunk without clicks at chunk borders (soxr's streaming resampler)."""

    def __init__(self, from_hz: int, to_hz: int = AUDIO_RATE_HZ) -> None:
        if from_hz <= 0 or to_hz <= 0:
            raise AudioError(f"sample rates must be positive, got {from_hz} Hz -> {to_hz} Hz")
        self.from_hz = int(from_hz)
        self.to_hz = int(to_hz)
        self._stream = None if from_hz == to_hz else soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32")

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x, last=last)

    def flush(self) -> np.ndarray:
        return self.push(np.zeros(0, np.float32), last=True)


__all__ = [
    "AUDIO_RATE_HZ", "Audio", "StreamResampler", "float_to_pcm16", "load_audio", "pcm16_to_float", "peak_dbfs",
    "resample",
]
