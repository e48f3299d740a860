"""The offline cascade: same bytes whatever the executor, cache resume, seamless joins, bad settings."""

from __future__ import annotations

import av
import numpy as np
import pytest

from avatarcast.core.errors import InputError, MissingDependencyError
from avatarcast.face.loading import load_avatar
from avatarcast.generators.factory import check_generator
from avatarcast.offline.cascade import parse_size, render_video
from avatarcast.offline.encoding import inspect_video, n_video_frames

SIZE = (256, 256)
FPS = 25.0


@pytest.fixture(scope="module")
def avatar(portraits):
    return load_avatar(portraits / "astronaut.png")


@pytest.fixture(scope="module")
def short_speech(speech):
    return speech / "ljspeech" / "LJ001-0002.wav"  # 1.9 s


def _render(avatar, audio, out, **kw):
    kw.setdefault("size", SIZE)
    kw.setdefault("fps", FPS)
    kw.setdefault("progress", False)
    kw.setdefault("keyframe_spacing_s", 0.6)  # several clips even for short audio
    return render_video(avatar, audio, out, **kw)


def _decoded(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def inline_render(avatar, short_speech, tmp_path_factory):
    out = tmp_path_factory.mktemp("inline") / "inline.mp4"
    return _render(avatar, short_speech, out, executor="inline")


def test_render_is_as_long_as_the_audio(inline_render):
    r = inline_render
    info = inspect_video(r.output)
    assert r.n_clips >= 3
    assert info.n_frames == r.n_frames == n_video_frames(r.duration_s, FPS)
    assert info.audio_duration_s == pytest.approx(r.duration_s, abs=1e-3)
    assert info.video_start_s == pytest.approx(0.0, abs=1e-6) and info.audio_start_s == pytest.approx(0.0, abs=1e-6)
    assert 0 <= info.video_duration_s - r.duration_s < 1 / FPS + 1e-6


def test_process_pool_gives_the_same_bytes_as_inline(inline_render, avatar, short_speech, tmp_path):
    out = tmp_path / "process.mp4"
    _render(avatar, short_speech, out, executor="process", workers=2)
    assert out.read_bytes() == inline_render.output.read_bytes()


@pytest.mark.ray
def test_ray_gives_the_same_bytes_as_inline(inline_render, avatar, short_speech, tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    out = tmp_path / "ray.mp4"
    _render(avatar, short_speech, out, executor="ray", workers=2)
    assert out.read_bytes() == inline_render.output.read_bytes()


def test_interrupted_render_resumes_from_the_clip_cache(avatar, short_speech, inline_render, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "cached.mp4"
    first = _render(avatar, short_speech, out, executor="inline", cache_dir=cache)
    assert 1 <= first.n_segments <= first.n_clips
    assert (first.cache_hits, first.cache_misses) == (0, first.n_segments)
    data = out.read_bytes()
    assert data == inline_render.output.read_bytes()

    out.unlink()
    again = _render(avatar, short_speech, out, executor="inline", cache_dir=cache)
    assert (again.cache_hits, again.cache_misses) == (again.n_segments, 0)
    assert out.read_bytes() == data

    # an interruption loses the segments not yet written: only those are rendered again
    segments = sorted(cache.rglob("*.mp4"))
    assert len(segments) == first.n_segments
    segments[0].unlink()
    out.unlink()
    resumed = _render(avatar, short_speech, out, executor="inline", cache_dir=cache)
    assert (resumed.cache_hits, resumed.cache_misses) == (first.n_segments - 1, 1)
    assert out.read_bytes() == data

    other_seed = _render(avatar, short_speech, tmp_path / "seed1.mp4", executor="inline", cache_dir=cache, seed=1)
    assert other_seed.cache_hits == 0


def _step_sizes(frames) -> np.ndarray:
    """Mean absolute change from each frame to the next (diffs[i]: frame i -> i + 1)."""
    f = np.stack(frames).astype(np.float32)
    return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))


def test_joins_are_as_smooth_as_the_inside_of_clips(inline_render, avatar, short_speech):
    """The generator's frames change no more from one clip's last frame to the next clip's first frame than
    between frames inside clips (first-last-frame clips join seamlessly by construction)."""
    from avatarcast.audio.io import load_audio
    from avatarcast.blueprint import clip_specs
    from avatarcast.generators.parametric.generator import ParametricGenerator
    from avatarcast.audio.visemes import mouth_track

    r = inline_render
    audio = load_audio(short_speech)
    mouth = mouth_track(audio.samples, audio.rate_hz, FPS)[:r.n_frames]
    generator = ParametricGenerator(avatar, size=SIZE, seed=0)
    frames = [f for clip in clip_specs(r.blueprint, audio, mouth, FPS) for f in generator.render(clip)]
    assert len(frames) == r.n_frames
    steps = _step_sizes(frames)
    joins = [f - 1 for f in r.blueprint.frames[1:-1]]
    inside = np.delete(steps, joins)
    assert steps[joins].max() <= np.percentile(inside, 95) + 1e-3

    # After encoding, each clip starts a new GOP: its keyframe redraws the codec noise, a change of a level or
    # two per pixel (what any video shows at a keyframe), far below a visible jump in pose or expression.
    encoded = _step_sizes(_decoded(r.output))
    assert encoded[joins].max() < 4.0


def test_render_settings_are_validated():
    assert parse_size("1920x1080") == (1920, 1080)
    assert parse_size("1080x1920") == (1080, 1920)
    for bad in ("1920", "abc", "4000x3000", "255x256", "32x32", "2560x1440"):
        with pytest.raises(InputError):
            parse_size(bad)
    with pytest.raises(InputError, match="`model_dir`"):
        check_generator("neural", None)
    with pytest.raises((InputError, MissingDependencyError)):
        check_generator("neural", "/nonexistent/model")
    with pytest.raises(InputError, match="unknown generator"):
        check_generator("magic")
