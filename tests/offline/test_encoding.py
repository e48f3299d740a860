"""H.264 + AAC writing: durations, frame counts, A/V alignment, and joining segments without re-encoding."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

from avatarcast.core.errors import InputError
from avatarcast.offline.encoding import (
    VideoEncoding,
    assemble,
    encode_segment,
    inspect_video,
    n_video_frames,
    write_video,
)

RATE_HZ = 16000
SIZE = (160, 128)


def _frames(start: int, stop: int, flash_frame: int | None = None):
    """Moving-bar test frames; ``flash_frame`` is all white (to find it after decoding)."""
    for k in range(start, stop):
        f = np.full((SIZE[1], SIZE[0], 3), 40, np.uint8)
        x = (k * 5) % (SIZE[0] - 20)
        f[20:60, x:x + 20] = (200, 60, 30)
        if k == flash_frame:
            f[:] = 255
        yield f


def _click_audio(duration_s: float, click_s: float) -> np.ndarray:
    audio = np.zeros(int(round(duration_s * RATE_HZ)), np.float32)
    i = int(click_s * RATE_HZ)
    audio[i:i + 160] = 0.8 * np.sin(2 * np.pi * 1000 * np.arange(160) / RATE_HZ)
    return audio


def _decoded_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]


def _flash_and_click_times(path) -> tuple[float, float]:
    with av.open(str(path)) as c:
        flash = next(float(f.pts * f.time_base) for f in c.decode(video=0) if f.to_ndarray(format="gray").mean() > 230)
    with av.open(str(path)) as c:
        for f in c.decode(audio=0):
            x = f.to_ndarray()[0]
            hits = np.flatnonzero(np.abs(x) > 0.3)
            if len(hits):
                return flash, float(f.pts * f.time_base) + hits[0] / f.sample_rate
    raise AssertionError("click not found in the decoded audio")


@pytest.mark.parametrize("fps", [25.0, 48.0, 29.97])
def test_round_trip_video_as_long_as_audio_and_both_start_at_zero(tmp_path, fps):
    duration_s = 2.345
    n = n_video_frames(duration_s, fps)
    assert n == math.ceil(duration_s * fps - 1e-9)
    out = tmp_path / "v.mp4"
    written = write_video(out, _frames(0, n), SIZE, fps, audio=_click_audio(duration_s, 1.0), audio_rate_hz=RATE_HZ)
    assert written == n
    info = inspect_video(out)
    assert info.n_frames == n
    assert (info.width, info.height) == SIZE
    assert info.video_start_s == pytest.approx(0.0, abs=1e-6)
    assert info.audio_start_s == pytest.approx(0.0, abs=1e-6)
    assert info.video_duration_s == pytest.approx(n / fps, abs=1e-3)
    assert info.audio_duration_s == pytest.approx(duration_s, abs=1e-3)
    assert 0 <= info.video_duration_s - duration_s < 1.0 / fps + 1e-3


def test_audio_and_video_events_line_up(tmp_path):
    """A click in the audio and a white frame at the same time decode within a few milliseconds of each other."""
    fps, duration_s, event_s = 25.0, 2.0, 1.0
    out = tmp_path / "sync.mp4"
    write_video(out, _frames(0, n_video_frames(duration_s, fps), flash_frame=int(event_s * fps)), SIZE, fps,
                audio=_click_audio(duration_s, event_s), audio_rate_hz=RATE_HZ)
    flash_s, click_s = _flash_and_click_times(out)
    assert flash_s == pytest.approx(event_s, abs=1e-6)
    assert click_s == pytest.approx(event_s, abs=0.004)  # AAC pre-echo only; no 21 ms priming offset


def test_assembled_segments_decode_to_exactly_the_segments_frames(tmp_path):
    """Packets are copied, not re-encoded: the joined video decodes to the segments' own frames, bit for bit,
    including a one-frame segment (which x264 encodes with less B-frame delay than the others)."""
    fps, duration_s = 25.0, 2.345
    n = n_video_frames(duration_s, fps)
    borders = [0, 10, 11, 30, n]
    segments = [encode_segment(tmp_path / f"s{i}.mp4", _frames(a, b, flash_frame=25), SIZE, fps)
                for i, (a, b) in enumerate(zip(borders, borders[1:]))]
    assert [s.n_frames for s in segments] == [10, 1, 19, n - 30]
    out = tmp_path / "joined.mp4"
    assert assemble(segments, out, fps, audio=_click_audio(duration_s, 1.0), audio_rate_hz=RATE_HZ,
                    n_frames=n) == n
    joined = _decoded_frames(out)
    parts = [f for s in segments for f in _decoded_frames(s.path)]
    assert len(joined) == len(parts) == n
    assert all(np.array_equal(a, b) for a, b in zip(joined, parts))
    info = inspect_video(out)
    assert info.video_start_s == pytest.approx(0.0, abs=1e-6) and info.audio_start_s == pytest.approx(0.0, abs=1e-6)
    assert info.video_duration_s == pytest.approx(n / fps, abs=1e-3)
    assert info.audio_duration_s == pytest.approx(duration_s, abs=1e-3)
    flash_s, click_s = _flash_and_click_times(out)
    assert flash_s == pytest.approx(1.0, abs=1e-6) and click_s == pytest.approx(1.0, abs=0.004)


def test_assembly_is_byte_identical_when_repeated(tmp_path):
    fps = 25.0
    segs = [encode_segment(tmp_path / f"s{i}.mp4", _frames(10 * i, 10 * i + 10), SIZE, fps) for i in range(2)]
    audio = _click_audio(0.8, 0.4)
    assemble(segs, tmp_path / "a.mp4", fps, audio=audio, audio_rate_hz=RATE_HZ)
    assemble(segs, tmp_path / "b.mp4", fps, audio=audio, audio_rate_hz=RATE_HZ)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_segments_with_other_encoder_settings_are_refused(tmp_path):
    fps = 25.0
    a = encode_segment(tmp_path / "a.mp4", _frames(0, 5), SIZE, fps, VideoEncoding(preset="veryfast"))
    b = encode_segment(tmp_path / "b.mp4", _frames(5, 10), SIZE, fps, VideoEncoding(preset="ultrafast"))
    with pytest.raises(ValueError, match="other settings"):
        assemble([a, b], tmp_path / "bad.mp4", fps, audio=None)
    with pytest.raises(ValueError, match="timeline needs"):
        assemble([a], tmp_path / "short.mp4", fps, audio=None, n_frames=6)


def test_unusual_audio_rate_is_resampled_for_aac(tmp_path):
    out = tmp_path / "r.mp4"
    write_video(out, _frames(0, 25), SIZE, 25.0, audio=np.zeros(37800, np.float32), audio_rate_hz=37800)
    info = inspect_video(out)
    assert info.audio_rate_hz == 48000
    assert info.audio_duration_s == pytest.approx(1.0, abs=1e-3)


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="crf"):
        VideoEncoding(crf=80)
    with pytest.raises(InputError, match="preset"):
        VideoEncoding(preset="warp")
    with pytest.raises(InputError, match="even"):
        write_video(tmp_path / "odd.mp4", [np.zeros((31, 31, 3), np.uint8)], (31, 31), 25.0)
    with pytest.raises(InputError, match="does not exist"):
        write_video(tmp_path / "missing" / "x.mp4", [], SIZE, 25.0)


def test_x264_params_are_checked_and_reach_the_encoder(tmp_path):
    for bad in ("me", "=dia", "keyint=10", "threads=4"):
        with pytest.raises(InputError, match="`x264_params`"):
            VideoEncoding(x264_params=bad)
    sizes = {}
    for params in ("", "me=dia:subme=1", "bframes=0"):
        out = tmp_path / f"p{len(sizes)}.mp4"
        write_video(out, _frames(0, 20), SIZE, 25.0, encoding=VideoEncoding(x264_params=params))
        assert inspect_video(out).n_frames == 20
        sizes[params] = out.read_bytes()
    assert len(set(sizes.values())) == 3  # each setting changes what the encoder wrote
    with av.open(str(tmp_path / "p2.mp4")) as c:  # bframes=0: decode order is display order
        pts = [p.pts for p in c.demux(video=0) if p.size]
    assert pts == sorted(pts)


@pytest.mark.parametrize("box", [(37, 21, 91, 77), (0, 0, 160, 128), (1, 1, 2, 2), (150, 100, 170, 140)])
def test_converting_only_the_changed_box_equals_a_full_conversion(box):
    import cv2

    from avatarcast.offline.encoding import I420Converter

    rng = np.random.default_rng(3)
    converter = I420Converter()
    frame = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    converter.convert(frame)
    for _ in range(3):
        frame = frame.copy()
        x0, y0, x1, y1 = box
        region = frame[y0:y1, x0:x1]
        region[...] = rng.integers(0, 256, region.shape, dtype=np.uint8)
        got = converter.convert(frame, box)
        assert np.array_equal(got, cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420))
