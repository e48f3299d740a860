"""Audio loading, conversion and voice activity on the real speech files."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from avatarcast.audio.io import (
    AUDIO_RATE_HZ, StreamResampler, float_to_pcm16, load_audio, pcm16_to_float, resample,
)
from avatarcast.audio.vad import check_speech, speech_regions
from avatarcast.core.errors import AudioError


def _encode(samples: np.ndarray, rate_hz: int, path: Path, codec: str, fmt: str) -> Path:
    """Encode mono float speech with PyAV (a real encoder), as a user's MP3/OGG file would be."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate_hz)
        stream.layout = "mono"
        pcm = np.clip(samples * 32767, -32768, 32767).astype(np.int16)
        step = 1024
        for i in range(0, len(pcm), step):
            frame = av.AudioFrame.from_ndarray(pcm[None, i:i + step], format="s16", layout="mono")
            frame.sample_rate = rate_hz
            frame.pts = i
            frame.time_base = Fraction(1, rate_hz)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def lj_clip(speech: Path) -> Path:
    return speech / "ljspeech" / "LJ001-0002.wav"


def test_flac_44k_stereo_24bit_loads_as_16k_mono(speech: Path) -> None:
    audio = load_audio(speech / "jfk.flac")
    info = sf.info(str(speech / "jfk.flac"))
    assert (audio.source_rate_hz, audio.source_channels) == (44100, 2)
    assert "PCM_24" in audio.source_format
    assert audio.rate_hz == AUDIO_RATE_HZ and audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert abs(audio.duration_s - info.duration) < 1e-3
    assert 0.05 < np.abs(audio.samples).max() <= 1.0


@pytest.mark.parametrize("name", ["LJ001-0001.wav", "LJ001-0006.wav", "LJ001-0010.wav"])
def test_wav_22k_pcm16_loads_as_16k_mono(speech: Path, name: str) -> None:
    path = speech / "ljspeech" / name
    audio = load_audio(path)
    info = sf.info(str(path))
    assert (audio.source_rate_hz, audio.source_channels) == (22050, 1)
    assert abs(audio.duration_s - info.duration) < 1e-3
    # the content survives resampling: same loudness within half a dB (what is lost is above 8 kHz)
    src, _ = sf.read(str(path), dtype="float32")
    assert abs(20 * np.log10(np.std(audio.samples) / np.std(src))) < 0.5


@pytest.mark.parametrize("codec, fmt, suffix", [("libmp3lame", "mp3", ".mp3"), ("libopus", "ogg", ".opus"),
                                                 ("vorbis", "ogg", ".ogg")])
def test_compressed_formats_load(lj_clip: Path, tmp_path: Path, codec: str, fmt: str, suffix: str) -> None:
    src, rate = sf.read(str(lj_clip), dtype="float32")
    path = tmp_path / f"speech{suffix}"
    if codec == "vorbis":  # FFmpeg's own Vorbis encoder is experimental; libsndfile writes OGG/Vorbis
        sf.write(str(path), np.repeat(src[:, None], 2, axis=1), rate, format="OGG", subtype="VORBIS")
    else:
        if codec == "libopus":
            src, rate = resample(src, rate, 48000), 48000  # Opus runs at 48 kHz
        _encode(src, rate, path, codec, fmt)
    audio = load_audio(path)
    expected_s = len(src) / rate
    assert audio.rate_hz == AUDIO_RATE_HZ and audio.samples.ndim == 1
    assert abs(audio.duration_s - expected_s) < 0.08  # encoder priming and padding
    regions = speech_regions(audio.samples, audio.rate_hz)
    assert sum(b - a for a, b in regions) > 0.5 * expected_s


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="folder"):
        load_audio(tmp_path)


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(path)


def test_zero_length_audio_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="no samples"):
        load_audio(path)


def test_non_audio_file_is_a_clear_error(tmp_path: Path, portraits: Path) -> None:
    path = tmp_path / "photo.wav"
    path.write_bytes((portraits / "astronaut.png").read_bytes())
    with pytest.raises(AudioError, match="cannot decode.*WAV, FLAC, MP3"):
        load_audio(path)
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(text)


def test_truncated_file_is_a_clear_error(lj_clip: Path, tmp_path: Path) -> None:
    data = lj_clip.read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(path)


def test_silence_is_reported_as_no_speech(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    rng = np.random.default_rng(0)
    sf.write(str(path), (rng.standard_normal(32000) * 1e-4).astype(np.float32), 16000)  # about -80 dBFS
    audio = load_audio(path)  # loading silence is fine ...
    with pytest.raises(AudioError, match=r"contains no speech \(peak -\d+\.\d dBFS.*`allow_silence`"):
        check_speech(audio)  # ... but rendering it is refused unless the user allows it


@pytest.mark.parametrize("kind", ["hum", "clicks"])
def test_loud_sound_without_speech_is_reported(kind: str) -> None:
    n = 3 * AUDIO_RATE_HZ
    if kind == "hum":  # mains hum: loud and steady
        x = 0.3 * np.sin(2 * np.pi * 50 * np.arange(n) / AUDIO_RATE_HZ)
    else:  # isolated clicks: a high peak, no voice
        x = np.where(np.arange(n) % 8000 == 0, 0.9, 0.0)
    with pytest.raises(AudioError, match="contains no speech.*voice activity"):
        check_speech(x.astype(np.float32))


def test_speech_passes_the_speech_check(speech: Path) -> None:
    check_speech(load_audio(speech / "jfk.flac"))


def test_clipping_is_a_warning_with_percentage(lj_clip: Path, tmp_path: Path, caplog) -> None:
    src, rate = sf.read(str(lj_clip), dtype="float32")
    path = tmp_path / "hot.wav"
    sf.write(str(path), np.clip(src * 20, -1, 1), rate, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="avatarcast.audio.io"):
        audio = load_audio(path)
    assert audio.duration_s > 1
    assert any("clipped" in r.getMessage() and "%" in r.getMessage() for r in caplog.records)


def test_pcm16_round_trip_and_odd_bytes() -> None:
    x = np.array([0.0, 0.5, -0.5, -1.0, 0.999], np.float32)
    y = pcm16_to_float(float_to_pcm16(x))
    assert np.allclose(x, y, atol=1 / 32768)
    with pytest.raises(AudioError, match="even number of bytes"):
        pcm16_to_float(b"\x00\x01\x02")


def test_stream_resampler_matches_whole_signal(lj_clip: Path) -> None:
    src, rate = sf.read(str(lj_clip), dtype="float32")
    whole = resample(src, rate, AUDIO_RATE_HZ)
    rs = StreamResampler(rate, AUDIO_RATE_HZ)
    rng = np.random.default_rng(1)
    parts, i = [], 0
    while i < len(src):
        n = int(rng.integers(50, 3000))
        parts.append(rs.push(src[i:i + n]))
        i += n
    parts.append(rs.flush())
    streamed = np.concatenate(parts)
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(streamed), len(whole))
    # no clicks at chunk borders: the streamed signal is the whole-signal resampling, up to filter details
    assert np.max(np.abs(streamed[:n] - whole[:n])) < 0.02


def test_speech_regions_find_speech_between_silences(lj_clip: Path) -> None:
    audio = load_audio(lj_clip)
    pad = np.zeros(AUDIO_RATE_HZ, np.float32)
    x = np.concatenate([pad, audio.samples, pad])
    regions = speech_regions(x, AUDIO_RATE_HZ)
    assert regions, "no speech found"
    assert regions[0][0] >= 0.9 and regions[-1][1] <= 1.0 + audio.duration_s + 0.1
    assert sum(b - a for a, b in regions) > 0.7 * audio.duration_s
    assert speech_regions(pad, AUDIO_RATE_HZ) == []
