"""The offline cascade: portrait + speech (+ transcript, instruction) -> storyboard -> blueprint -> sub-clips -> MP4.

``render_video`` runs the whole path:

1. load and check the audio (clear errors for missing, corrupt, empty or silent files);
2. load the avatar (a prepared folder or a portrait image);
3. the global mouth track (with forced-alignment phones when a transcript is given);
4. the storyboard: the director's, or the user's ``storyboard`` file (validated against the audio);
5. the blueprint: keyframes, and optionally its low-resolution preview video;
6. one clip spec between each pair of consecutive keyframes; consecutive clips are grouped into runs of up to a
   few seconds that end in pauses (``blueprint.run_bounds``), and each run, longest first, is rendered clip by clip
   and encoded into one H.264 segment by an executor (in-process, process pool or Ray), or taken from the cache;
7. the segments' packets and the AAC audio are assembled into the output MP4.

Memory stays flat in the audio's duration: clip specs are views into the audio and mouth track (a few hundred bytes
each, even when all of them are held to order the runs), a bounded number of runs is in flight, frames are streamed
into segment files on disk, and the assembler copies one packet at a time. Only the audio itself (64 KB per second
at 16 kHz) and the per-frame mouth track are held whole.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatarcast.audio.alignment import align_transcript
from avatarcast.audio.io import load_audio
from avatarcast.audio.vad import check_speech
from avatarcast.audio.visemes import mouth_track
from avatarcast.blueprint import (
    MAX_KEYFRAME_SPACING_S,
    Blueprint,
    build_blueprint,
    iter_clip_runs,
    iter_clip_specs,
    longest_first,
    preview_size,
    run_bounds,
)
from avatarcast.core.errors import AvatarcastError, InputError, RenderFailedError, StoryboardError
from avatarcast.direction.director import RuleDirector
from avatarcast.direction.llm import LLMConfig, LLMDirector
from avatarcast.direction.storyboard import Storyboard, load_storyboard
from avatarcast.face.avatar import portrait_image
from avatarcast.face.loading import load_avatar
from avatarcast.generators.factory import check_generator, generator_settings, make_generator
from avatarcast.offline.clipcache import ClipCache, avatar_id, render_key, run_key
from avatarcast.offline.encoding import Segment, VideoEncoding, assemble, inspect_video, n_video_frames
from avatarcast.offline.executors import Executor, RenderSetup, default_workers, make_executor
from avatarcast.offline.preview import write_preview

logger = logging.getLogger(__name__)

MAX_WIDTH_PX = 1920
MAX_HEIGHT_PX = 1920
MAX_PIXELS = 1920 * 1080
"""Largest output: 1920x1080 (or 1080x1920 portrait); any size up to that many pixels, both sides even."""
MIN_SIDE_PX = 64
MIN_FPS = 1.0
MAX_FPS = 60.0
STORYBOARD_DURATION_TOLERANCE_S = 0.05
"""A user's storyboard must be as long as the audio within this tolerance."""


@dataclass
class RenderResult:
    """What a render produced, with its timings."""

    output: Path
    n_frames: int
    fps: float
    size: tuple[int, int]
    duration_s: float
    n_clips: int
    n_keyframes: int
    n_segments: int = 0  # runs of consecutive clips, each encoded into one segment (see types.ClipRun)
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    storyboard: Storyboard | None = None
    blueprint: Blueprint | None = None

    @property
    def real_time_factor(self) -> float:
        """Render time over video time (below 1 is faster than real time)."""
        return self.seconds / self.duration_s if self.duration_s else float("inf")


def parse_size(text: str | tuple[int, int]) -> tuple[int, int]:
    """``"WxH"`` (or a tuple) -> validated ``(width, height)``; ``InputError`` says what is allowed."""
    if isinstance(text, str):
        parts = text.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InputError(f"`size` must look like WIDTHxHEIGHT, e.g. 512x512 or 1920x1080; got {text!r}")
        w, h = int(parts[0]), int(parts[1])
    else:
        w, h = int(text[0]), int(text[1])
    if w < MIN_SIDE_PX or h < MIN_SIDE_PX:
        raise InputError(f"`size` {w}x{h} is too small: each side must be at least {MIN_SIDE_PX} pixels")
    if w > MAX_WIDTH_PX or h > MAX_HEIGHT_PX or w * h > MAX_PIXELS:
        raise InputError(f"`size` {w}x{h} is too large: the largest output is 1920x1080 (or 1080x1920)")
    if w % 2 or h % 2:
        raise InputError(f"`size` {w}x{h}: both sides must be even numbers (H.264 4:2:0), e.g. "
                         f"{w + w % 2}x{h + h % 2}")
    return w, h


def check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or not MIN_FPS <= fps <= MAX_FPS:
        raise InputError(f"`fps` must be between {MIN_FPS:g} and {MAX_FPS:g}, got {fps:g}")
    return fps


def read_transcript(transcript: str | Path | None) -> str | None:
    """The transcript text: given directly, or read from a ``.txt`` file when ``transcript`` names one."""
    if transcript is None:
        return None
    text = str(transcript)
    candidate = Path(text)
    looks_like_path = "\n" not in text and len(text) < 4096 and (text.endswith(".txt") or candidate.is_file())
    if looks_like_path:
        try:
            text = candidate.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"transcript file {candidate} does not exist; pass the text itself or a .txt path") \
                from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read transcript file {candidate}: {exc}; save it as UTF-8 text") from None
    text = text.strip()
    return text or None


class Progress:
    """A plain one-line progress bar on stderr (drawn only on a terminal)."""

    WIDTH = 30

    def __init__(self, total_frames: int, fps: float, enabled: bool = True, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total = max(1, total_frames)
        self.fps = fps
        self.done = 0
        self.t0 = time.monotonic()
        self._last_draw = 0.0

    def update(self, frames: int) -> None:
        self.done += frames
        now = time.monotonic()
        if self.enabled and (now - self._last_draw > 0.2 or self.done >= self.total):
            self._last_draw = now
            frac = min(1.0, self.done / self.total)
            elapsed = now - self.t0
            speed = (self.done / self.fps) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / self.fps / speed if speed > 0 else float("nan")
            bar = "#" * int(frac * self.WIDTH) + "." * (self.WIDTH - int(frac * self.WIDTH))
            eta_text = f"{eta:5.0f} s" if math.isfinite(eta) else "    ?"
            self.stream.write(f"\rrendering [{bar}] {frac * 100:5.1f}%  {self.done}/{self.total} frames  "
                              f"{speed:4.2f}x real time  eta {eta_text}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _fit_rows(mouth: np.ndarray, n_frames: int) -> np.ndarray:
    """The mouth track with exactly ``n_frames`` rows (closed mouth past the end of the analysis)."""
    mouth = np.asarray(mouth, np.float32).reshape(-1, 3)
    if len(mouth) >= n_frames:
        return mouth[:n_frames]
    return np.concatenate([mouth, np.zeros((n_frames - len(mouth), 3), np.float32)])


def _storyboard(storyboard, audio, transcript, instruction, words, seed, director, llm_url, llm_model,
                portrait=None) -> Storyboard:
    if storyboard is not None:
        sb = storyboard if isinstance(storyboard, Storyboard) else load_storyboard(storyboard)
        if abs(sb.duration_s - audio.duration_s) > STORYBOARD_DURATION_TOLERANCE_S:
            raise StoryboardError(f"the storyboard covers {sb.duration_s:.2f} s but the audio is "
                                  f"{audio.duration_s:.2f} s long; write the storyboard for this audio "
                                  "(`storyboard_out` gives one to start from)")
        return sb
    if director == "rules":
        return RuleDirector(seed=seed).storyboard(audio, transcript=transcript, instruction=instruction, words=words)
    if director == "llm":
        if not llm_url or not llm_model:
            raise InputError("the LLM `director` needs `llm_url` (an OpenAI-compatible base URL, e.g. "
                             "http://127.0.0.1:8000/v1) and `llm_model`")
        config = LLMConfig(base_url=llm_url, model=llm_model, portrait=portrait, send_portrait=portrait is not None)
        return LLMDirector(config, fallback=RuleDirector(seed=seed)).storyboard(
            audio, transcript=transcript, instruction=instruction, words=words)
    raise InputError(f"unknown director {director!r}; choose rules or llm")


def _write_joins(path: str | Path, blueprint: Blueprint) -> None:
    """Write the first frame of every sub-clip after the first (where clips join), for `avatarcast eval --joins`."""
    joins = [int(f) for f in blueprint.frames[1:-1]]
    try:
        Path(path).write_text(json.dumps({"joins": joins, "fps": blueprint.fps, "n_frames": blueprint.n_frames}))
    except OSError as exc:
        raise InputError(f"cannot write the joins to {path}: {exc.strerror or exc}") from None


class _Workers:
    """The render executor, made early (``start_now``: its workers get ready at once) or at its first use."""

    def __init__(self, name: str, setup: RenderSetup, workers: int, ray_address: str | None,
                 start_now: bool) -> None:
        self._args = (name, setup, workers, ray_address)
        self._executor: Executor | None = None
        if start_now:
            self.get().start()

    def get(self) -> Executor:
        if self._executor is None:
            self._executor = make_executor(*self._args)
        return self._executor

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.close()


def render_video(portrait_or_avatar, audio_path: str | Path, output: str | Path, *,
                 transcript: str | Path | None = None, instruction: str | None = None,
                 size: tuple[int, int] | str = (512, 512), fps: float = 25.0, workers: int | None = None,
                 executor: str = "process", ray_address: str | None = None,
                 storyboard: str | Path | Storyboard | None = None, storyboard_out: str | Path | None = None,
                 blueprint_out: str | Path | None = None, joins_out: str | Path | None = None,
                 cache_dir: str | Path | None = None, seed: int = 0,
                 progress: bool = True, generator: str = "parametric", model_dir: str | Path | None = None,
                 allow_silence: bool = False, encoding: VideoEncoding | None = None,
                 keyframe_spacing_s: float = MAX_KEYFRAME_SPACING_S, director: str = "rules",
                 llm_url: str | None = None, llm_model: str | None = None,
                 llm_send_portrait: bool = False) -> RenderResult:
    """Render a talking-avatar MP4 (H.264 + AAC) as long as the audio. See the module docstring for the stages.

    ``portrait_or_avatar`` is an ``Avatar``, a prepared avatar folder, a portrait image path, or None (the bundled
    default portrait). Errors the user must fix raise ``AvatarcastError`` subclasses.
    """

    t_start = time.monotonic()
    stages: dict[str, float] = {}

    def stage(name: str, t0: float) -> float:
        now = time.monotonic()
        stages[name] = stages.get(name, 0.0) + now - t0
        return now

    size = parse_size(size)
    fps = check_fps(fps)
    if workers is not None and workers < 1:
        raise InputError(f"`workers` must be at least 1, got {workers}")
    encoding = encoding or VideoEncoding()
    output = Path(output)
    if output.is_dir():
        raise InputError(f"the output {output} is a folder; give a file name such as {output / 'avatar.mp4'}")
    if not output.parent.exists():
        raise InputError(f"the output folder {output.parent} does not exist; create it or choose another path")
    transcript = read_transcript(transcript)
    check_generator(generator, model_dir)  # before any slow work: a missing model or extra fails at once

    t = time.monotonic()
    audio = load_audio(audio_path)
    if not allow_silence:
        check_speech(audio)
    n_frames = n_video_frames(audio.duration_s, fps)
    t = stage("audio", t)

    if hasattr(portrait_or_avatar, "landmarks") and hasattr(portrait_or_avatar, "image"):
        avatar = portrait_or_avatar
    else:
        avatar = load_avatar(portrait_or_avatar)
    t = stage("avatar", t)

    setup = RenderSetup(avatar=avatar, generator=generator, size=size, seed=seed,
                        model_dir=str(model_dir) if model_dir is not None else None, encoding=encoding)
    # Render workers start now and get ready (imports, their generator) while this process analyses the audio and
    # plans. Keyframes are at most keyframe_spacing_s apart, so there are at least that many clips: no idle workers
    # for short audio. With a clip cache, where most clips may be hits, they start at the first clip to render.
    n_workers = min(workers or default_workers(), max(1, math.ceil(audio.duration_s / keyframe_spacing_s)))
    pool = _Workers(executor, setup, n_workers, ray_address, start_now=cache_dir is None)
    try:
        words = phones = None
        if transcript:
            try:
                words, phones = align_transcript(audio.samples, audio.rate_hz, transcript)
            except AvatarcastError:
                raise
            except Exception as exc:  # alignment is an improvement, not a requirement
                logger.warning("forced alignment failed (%s); mouth shapes come from the audio alone", exc)
        mouth = _fit_rows(mouth_track(audio.samples, audio.rate_hz, fps, phones=phones or None), n_frames)
        t = stage("mouth", t)

        portrait = portrait_image(portrait_or_avatar) if llm_send_portrait else None
        sb = _storyboard(storyboard, audio, transcript, instruction, words, seed, director, llm_url, llm_model,
                         portrait)
        if storyboard_out is not None:
            try:
                sb.save(storyboard_out)
            except OSError as exc:
                raise InputError(f"cannot write the storyboard to {storyboard_out}: {exc.strerror or exc}") from None
        t = stage("storyboard", t)

        blueprint = build_blueprint(sb, mouth, fps, n_frames=n_frames, max_spacing_s=keyframe_spacing_s)
        n_clips = len(blueprint.keyframes) - 1
        logger.info("blueprint: %d keyframes, %d clips over %.2f s (%d frames at %g fps)",
                    len(blueprint.keyframes), n_clips, audio.duration_s, n_frames, fps)
        if blueprint_out is not None:
            psize = preview_size(size)
            preview = make_generator("parametric", avatar, psize, seed, fps=fps)
            write_preview(blueprint_out, blueprint, lambda s, i: preview.render_state(s, i, fps=fps), psize, mouth,
                          audio=audio.samples, audio_rate_hz=audio.rate_hz)
            del preview
        if joins_out is not None:
            _write_joins(joins_out, blueprint)
        t = stage("blueprint", t)

        cache = ClipCache(cache_dir) if cache_dir is not None else None
        shared_key = render_key(avatar_id(avatar), generator_settings(generator, size, seed, model_dir), size, encoding)
        starts = run_bounds(blueprint, mouth)
        segments: list[Segment | None] = [None] * len(starts)
        bar = Progress(n_frames, fps, enabled=progress)
        tmp_parent = output.parent if cache is None else Path(cache_dir)
        with tempfile.TemporaryDirectory(prefix=".avatarcast-", dir=tmp_parent) as tmp:
            def jobs():
                # the specs are views into the audio and mouth track, so holding all of them costs little; the
                # longest runs go first so that the workers finish together
                clips = iter_clip_specs(blueprint, audio.samples, mouth, audio_rate_hz=audio.rate_hz, seed=seed)
                for run in longest_first(iter_clip_runs(clips, starts)):
                    if cache is not None:
                        key = run_key(shared_key, run)
                        hit = cache.get(key, run.n_frames)
                        if hit is not None:
                            segments[run.index] = hit
                            bar.update(run.n_frames)
                            continue
                        path = cache.path_for(key)
                    else:
                        path = Path(tmp) / f"run{run.index:06d}.mp4"
                    yield run, path

            job_iter = jobs()
            try:
                first_job = next(job_iter, None)
                if first_job is not None:
                    def all_jobs():
                        yield first_job
                        yield from job_iter

                    for run, segment in pool.get().run(all_jobs()):
                        segments[run.index] = segment
                        bar.update(run.n_frames)
            finally:
                bar.close()
            pool.close()  # before assembly: the workers' memory is not needed any more
            t = stage("clips", t)

            missing = [i for i, s in enumerate(segments) if s is None]
            if missing:
                raise RenderFailedError(f"segments {missing[:5]} were not rendered")
            part = output.with_name(f".{output.name}.part")
            try:
                assemble(segments, part, fps, audio=audio.samples, audio_rate_hz=audio.rate_hz, n_frames=n_frames)
                part.replace(output)
            finally:
                part.unlink(missing_ok=True)
            stage("assemble", t)
    finally:
        pool.close()

    info = inspect_video(output, decode=False)
    if info.n_frames and info.n_frames != n_frames:
        raise RenderFailedError(f"{output} holds {info.n_frames} frames, expected {n_frames}")
    result = RenderResult(output=output, n_frames=n_frames, fps=fps, size=size, duration_s=audio.duration_s,
                          n_clips=n_clips, n_keyframes=len(blueprint.keyframes), n_segments=len(starts),
                          cache_hits=cache.hits if cache else 0, cache_misses=cache.misses if cache else 0,
                          seconds=time.monotonic() - t_start, stage_seconds=stages, storyboard=sb,
                          blueprint=blueprint)
    logger.info("wrote %s: %d frames, %.2f s, %d clips in %d segments (%d cached), %.1f s to render (real-time "
                "factor %.2f); stages: %s", output, n_frames, audio.duration_s, n_clips, len(starts), result.cache_hits,
                result.seconds, result.real_time_factor, ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))
    return result
