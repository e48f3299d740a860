"""Benchmark: video avatars against the real thing, their loops, and their speed.

Against the real thing: for each clip of one speaker in one setting (leave one out), a video avatar is built from
the other clips and driven by the held-out clip's own audio through the offline cascade (`avatarcast render`);
the parametric generator on a portrait cut from the same footage (the video avatar's own still: the first frame of
its base performance, `AVATAR_DIR/portrait`) is the baseline. Both are measured against the held-out real clip by an independent detector (dlib's 68 landmarks,
`avatarcast_bench.against_real`): mouth opening over time (correlation at the best lag, and the lag), mouth
landmark error after aligning the faces (eye distances), SSIM of the aligned mouth crops.

Loops: a long live-like run (a streamed sub-clip, speech and silence alternating) over LOOP_MINUTES; the largest
frame-to-frame change where the base performance turns around or cuts between stretches, against the median
change between consecutive frames of the footage itself.

Speed: frames per second of the video generator on one core (no encoding) at 512x512 and 1920x1080.
Needs the `eval` extra (dlib) for the comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from avatarcast.core.errors import InputError
from avatarcast.core.types import AvatarState, ClipSpec, Keyframe
from avatarcast.face.video_avatar import VideoAvatar, prepare_video_avatar
from avatarcast.generators.video.generator import VideoGenerator
from avatarcast.live.load import cpu_model
from avatarcast.offline.cascade import parse_size, render_video
from avatarcast_bench.against_real import aligned_mouth_crops, compare_to_real
from avatarcast_bench.evaluation import iter_video_frames

DEFAULT_CLIPS = "../shared/data/video/obama_weekly_address/wa_sentence_*.mp4"
SPEED_SIZES = ((512, 512), (1920, 1080))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clips", nargs="+", default=None, metavar="CLIP",
                   help=f"clips of one speaker in one setting, at least 2 (default: {DEFAULT_CLIPS})")
    p.add_argument("--size", default="1280x720", help="render size for the comparison")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of the rendered videos")
    p.add_argument("--loop-minutes", type=float, default=10.0, metavar="M",
                   help="length of the loop check (0 skips it)")
    p.add_argument("--speed-frames", type=int, default=200, metavar="N", help="frames per speed measurement")
    p.add_argument("--grid", default=None, metavar="IMAGE",
                   help="write a grid of aligned mouth crops: real clip, video avatar, parametric baseline")
    p.add_argument("--work-dir", default=None, metavar="DIR", help="keep the avatars and videos here")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")


def compare(clips: list[str], size: tuple[int, int], fps: float, work: Path) -> tuple[list[dict], dict]:
    """Leave-one-out comparison of the video avatar and the parametric baseline against the real clips."""
    import logging

    rows, videos = [], {}
    quiet = logging.getLogger("avatarcast")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        for check in clips:
            build = [c for c in clips if c != check]
            name = Path(check).stem
            avatar_dir = work / f"avatar_without_{name}"
            prepare_video_avatar(build, avatar_dir, progress=False)
            portrait = avatar_dir / "portrait"  # the video avatar's own still: the first frame of its base footage
            for generator, source in (("video avatar", avatar_dir), ("parametric", portrait)):
                out = work / f"{'video' if generator == 'video avatar' else 'parametric'}_{name}.mp4"
                render_video(str(source), check, out, size=size, fps=fps, workers=1, executor="inline")
                c = compare_to_real(out, check)
                videos[(name, generator)] = out
                rows.append({"check": name, "built_from": [Path(b).stem for b in build], "generator": generator,
                             "opening_correlation": c.opening_correlation, "opening_lag_frames": c.opening_lag_frames,
                             "landmark_error_iod": c.landmark_error_iod, "mouth_ssim": c.mouth_ssim,
                             "frames": c.frames, "frames_measured": c.frames_measured})
    finally:
        quiet.setLevel(level)
    return rows, videos


def loop_check(avatar_dir: Path, minutes: float, fps: float = 25.0, size: tuple[int, int] = (512, 512)) -> dict:
    """Frame-to-frame change at the base performance's loop points over a long live-like run (see the docstring)."""
    import cv2

    avatar = VideoAvatar.load(avatar_dir)
    gen = VideoGenerator(avatar, size=size, fps=fps)
    n = int(minutes * 60 * fps)
    rng = np.random.default_rng(0)
    # speech-like rows: 3 s of syllables, 2 s of silence
    t = np.arange(n) / fps
    talking = (t % 5.0) < 3.0
    jaw = np.where(talking, np.clip(0.45 + 0.4 * np.sin(2 * np.pi * 4.0 * t) + 0.1 * rng.standard_normal(n), 0, 1),
                   0.0)
    prev_grey, prev_base = None, None
    inside, at_loop = [], []
    state = AvatarState()
    rows = np.stack([jaw, np.full(n, 0.1), np.full(n, 0.05)], axis=1).astype(np.float32)
    frames = gen.render(ClipSpec(index=0, first=Keyframe(0.0, state), last=Keyframe(n / fps, state), fps=fps,
                                 start_frame=0, n_frames=n, mouth=rows, mouth_streamed=True))
    for k in range(n):
        frame = next(frames)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        base = avatar.base_index(k / fps)
        if prev_grey is not None:
            change = float(np.abs(grey - prev_grey).mean())
            # a loop point: the footage turns around, or a step that is not to the next or the same base frame
            p_prev, p_now = avatar.loop_position((k - 1) / fps), avatar.loop_position(k / fps)
            # (a step that reaches the last frame forward is the footage's own step; the turn is the step after it)
            turned = (p_prev < len(avatar.playlist) <= p_now) or p_now < p_prev
            (at_loop if turned or abs(base - prev_base) > 2 else inside).append(change)
        prev_grey, prev_base = grey, base
    # the footage's own change between consecutive base frames, framed the same way
    footage = []
    prev = None
    for i in range(len(avatar.playlist)):
        g = cv2.cvtColor(gen._base_frame(int(avatar.playlist[i])), cv2.COLOR_RGB2GRAY).astype(np.float32)
        if prev is not None:
            footage.append(float(np.abs(g - prev).mean()))
        prev = g
    median_footage = float(np.median(footage)) if footage else 0.0
    largest = max(at_loop) if at_loop else 0.0
    return {"minutes": minutes, "frames": n, "loop_points": len(at_loop),
            "largest_change_at_loop": round(largest, 3), "median_change_in_footage": round(median_footage, 3),
            "ratio": round(largest / median_footage, 3) if median_footage else None,
            "median_change_in_run": round(float(np.median(inside)), 3) if inside else None}


def speed(avatar_dir: Path, n_frames: int) -> list[dict]:
    """Frames per second of the video generator on one core (a sub-clip with its mouth rows streamed, as live renders
    it)."""
    import cv2

    cv2.setNumThreads(1)
    avatar = VideoAvatar.load(avatar_dir)
    out = []
    for size in SPEED_SIZES:
        gen = VideoGenerator(avatar, size=size, fps=25.0)
        state = AvatarState()
        t0 = None
        n = n_frames + 5
        jaw = 0.5 + 0.45 * np.sin(2 * np.pi * 4.0 * np.arange(n) / 25.0)
        rows = np.stack([jaw, np.full(n, 0.1), np.zeros(n)], axis=1).astype(np.float32)
        frames = gen.render(ClipSpec(index=0, first=Keyframe(0.0, state), last=Keyframe(n / 25, state), fps=25.0,
                                     start_frame=0, n_frames=n, mouth=rows, mouth_streamed=True))
        for k in range(n):
            if k == 5:
                t0 = time.perf_counter()
            next(frames)
        dt = time.perf_counter() - t0
        out.append({"size": f"{size[0]}x{size[1]}", "frames": n_frames, "render_fps": round(n_frames / dt, 1),
                    "ms_per_frame": round(1000 * dt / n_frames, 2), "cores": 1})
    return out


def _grid(videos: dict, clips: list[str], path: str, fps: float) -> None:
    import cv2

    rows = []
    for check in clips:
        name = Path(check).stem
        gen = videos[(name, "video avatar")]
        frames_it, _, _ = iter_video_frames(gen)
        n = sum(1 for _ in frames_it)
        idx = list(np.linspace(3, n - 4, 6).round().astype(int))
        _, real_fps, _ = iter_video_frames(check)
        real_idx = [int(round(i / fps * real_fps)) for i in idx]
        rows.append(np.concatenate(aligned_mouth_crops(check, check, real_idx), 1))
        rows.append(np.concatenate(aligned_mouth_crops(gen, check, idx), 1))
        rows.append(np.concatenate(aligned_mouth_crops(videos[(name, "parametric")], check, idx), 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    cv2.imwrite(path, np.concatenate(rows, 0)[:, :, ::-1])


def run(args: argparse.Namespace) -> int:
    import glob

    clips = args.clips or sorted(glob.glob(DEFAULT_CLIPS))
    if len(clips) < 2:
        raise InputError("give at least two clips of one speaker in one setting (--clips CLIP CLIP ...)")
    for c in clips:
        if not Path(c).is_file():
            raise InputError(f"clip not found: {c}")
    size = parse_size(args.size)
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="avatarcast-bench-video-")
        work = Path(tmp.name)
    try:
        conditions = {"cpu": cpu_model() or platform.processor() or "unknown", "size": args.size, "fps": args.fps,
                      "clips": [Path(c).name for c in clips]}
        print(f"conditions: {conditions['cpu']}, rendered at {args.size}@{args.fps:g}, leave-one-out over "
              f"{len(clips)} clips")
        rows, videos = compare(clips, size, args.fps, work)
        print(f"{'check clip':<42} {'generator':<13} {'opening corr (lag)':>19} {'landmark err':>13} {'mouth SSIM':>11}")
        for r in rows:
            lag = "" if r["opening_lag_frames"] is None else f" ({r['opening_lag_frames']:+d})"
            print(f"{r['check']:<42} {r['generator']:<13} {str(r['opening_correlation']) + lag:>19} "
                  f"{r['landmark_error_iod']!s:>13} {r['mouth_ssim']!s:>11}")
        summary = {}
        for g in ("video avatar", "parametric"):
            sel = [r for r in rows if r["generator"] == g]
            summary[g] = {k: round(float(np.mean([r[k] for r in sel if r[k] is not None])), 4)
                          for k in ("opening_correlation", "landmark_error_iod", "mouth_ssim")}
            s = summary[g]
            print(f"{'mean':<42} {g:<13} {s['opening_correlation']:>19} {s['landmark_error_iod']:>13} "
                  f"{s['mouth_ssim']:>11}")
        print("landmark error: mean distance of dlib's 20 mouth points after aligning the faces, in eye distances "
              "(lower is better); SSIM of the aligned mouth crops (higher is better)")
        if args.grid:
            _grid(videos, clips, args.grid, args.fps)
            print(f"mouth crops (rows per clip: real, video avatar, parametric) written to {args.grid}")
        avatar_dir = work / f"avatar_without_{Path(clips[-1]).stem}"
        loop = None
        if args.loop_minutes > 0:
            loop = loop_check(avatar_dir, args.loop_minutes)
            print(f"loops over {loop['minutes']:g} min at 512x512@25: {loop['loop_points']} loop points, largest "
                  f"change there {loop['largest_change_at_loop']} grey levels, median change in the footage "
                  f"{loop['median_change_in_footage']} (ratio {loop['ratio']})")
        sp = speed(avatar_dir, args.speed_frames)
        for s in sp:
            print(f"video generator {s['size']}: {s['render_fps']} fps ({s['ms_per_frame']} ms/frame, one core, "
                  "no encoding)")
        if args.json:
            Path(args.json).write_text(json.dumps({"conditions": conditions, "comparison": rows,
                                                   "summary": summary, "loop": loop, "speed": sp}, indent=2))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0
