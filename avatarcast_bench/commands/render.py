"""Benchmark: raw render fps of the parametric generator, and the real-time factor of a 1080p/48 fps render (with a
video avatar folder as --portrait: the video generator).

Raw fps: frames rendered per second by one ParametricGenerator in one process with cv2.setNumThreads(1) (one core),
no encoding, over a realistic varying state sequence (a speech-like mouth track, blinks, head motion, gaze), at
512x512 and at 1920x1080. Construction (framing, precomputation) is timed separately.

Paced: the same generator at 512x512 rendering one frame every 1/25 s and sleeping in between, as a live session's
render process does, with the CPU time of each frame (the thread's own clock, not the wall). On a shared virtual
machine a frame rendered after a sleep has cost up to twice what one in a back-to-back loop does (most likely the
caches and branch predictors were taken by other work meanwhile). The paced figure, not the raw one, is what a
live session costs: it gives the sessions one core can render (``frame interval / paced CPU per frame``).

End to end: the whole offline cascade (what `avatarcast render` runs: audio analysis, director, blueprint,
sub-clips rendered and H.264-encoded by worker processes, assembly with AAC) on real speech looped to 45 s, at
1920x1080 and 48 fps, with 1 and then 2 workers. The real-time factor is wall time divided by the video duration
(below 1 = faster than real time); peak memory is this process plus its workers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import avatarcast
from avatarcast.audio.io import load_audio
from avatarcast.core.errors import InputError
from avatarcast.core.types import AvatarState
from avatarcast.face.loading import load_avatar
from avatarcast.generators.factory import make_generator
from avatarcast.live.load import cpu_model
from avatarcast.offline.cascade import render_video
from avatarcast.offline.encoding import VideoEncoding

E2E_SIZE = (1920, 1080)
E2E_FPS = 48.0
E2E_WORKERS = 2
RAW_SIZES = ((512, 512), (1920, 1080))
MEMORY_SIZE = (512, 512)
BENCH_FPS = 25.0
PACED_SIZE = (512, 512)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--portrait", default=None, metavar="P",
                   help="portrait image or prepared avatar folder (default: the bundled default portrait)")
    p.add_argument("--frames", type=int, default=300, metavar="N", help="frames per raw measurement")
    p.add_argument("--paced-frames", type=int, default=250, metavar="N",
                   help="frames of the paced measurement (512x512, one frame every 1/25 s; 0 skips it)")
    p.add_argument("--e2e-seconds", type=float, default=45.0, metavar="S",
                   help="length of the end-to-end 1080p/48 fps render of real speech (0 skips it)")
    p.add_argument("--audio", default=None, metavar="A",
                   help="speech for the end-to-end render, looped to --e2e-seconds (default: the bundled demo clip)")
    p.add_argument("--workers", default="1,2", metavar="N[,N...]",
                   help="worker counts for the end-to-end render; speed-ups are relative to the first")
    p.add_argument("--preset", default="veryfast", help="x264 preset for the end-to-end render")
    p.add_argument("--x264-params", default=None, metavar="K=V[:K=V...]",
                   help="extra x264 settings for the end-to-end render (default: those of `avatarcast render`)")
    p.add_argument("--memory-minutes", default="", metavar="M[,M...]",
                   help="also render speech of these lengths (minutes, e.g. 1,10) at 512x512 @ 25 fps with "
                        "2 workers and compare their peak memory (memory must not grow with duration)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")


def bench_states(n_frames: int, fps: float) -> list[AvatarState]:
    """A realistic varying state sequence: syllable-rate mouth, blinks every ~3 s, slow head motion, glances."""
    states = []
    for i in range(n_frames):
        t = i / fps
        syllable = 0.5 + 0.5 * math.sin(2 * math.pi * 4.0 * t) * math.sin(2 * math.pi * 0.7 * t + 1.0)
        blink_t = t % 3.1
        closure = 1.0 if 0.04 < blink_t < 0.12 else (0.5 if blink_t < 0.2 else 0.0)
        states.append(AvatarState(
            jaw_open=max(0.0, syllable * 0.8), mouth_wide=0.3 * max(0.0, math.sin(2 * math.pi * 1.3 * t)),
            mouth_round=0.3 * max(0.0, math.sin(2 * math.pi * 0.9 * t + 2.0)),
            smile=0.3 * math.sin(2 * math.pi * 0.1 * t), brow_raise=0.4 * max(0.0, math.sin(2 * math.pi * 0.3 * t)),
            head_yaw_deg=6.0 * math.sin(2 * math.pi * 0.15 * t), head_pitch_deg=3.0 * math.sin(2 * math.pi * 0.23 * t),
            head_roll_deg=2.0 * math.sin(2 * math.pi * 0.11 * t),
            eye_open_left=1.0 - closure, eye_open_right=1.0 - closure,
            gaze_x=0.4 * math.sin(2 * math.pi * 0.07 * t), gaze_y=0.1 * math.sin(2 * math.pi * 0.05 * t)))
    return states


def _load(portrait: str | None):
    return load_avatar(portrait)


def measure_raw(avatar, size: tuple[int, int], n_frames: int) -> dict:
    """Raw render fps on one core (cv2 single-threaded), no encoding."""
    import cv2

    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    # the parametric generator for a portrait, the video generator for a video avatar folder
    gen = make_generator("parametric", avatar, size, 0, fps=BENCH_FPS)
    setup_s = time.perf_counter() - t0
    states = bench_states(n_frames, BENCH_FPS)
    gen.render_state(states[0], 0)  # warm up
    t0 = time.perf_counter()
    for i, s in enumerate(states):
        gen.render_state(s, i)
    dt = time.perf_counter() - t0
    return {"size": f"{size[0]}x{size[1]}", "frames": n_frames, "render_fps": n_frames / dt,
            "ms_per_frame": 1000.0 * dt / n_frames, "setup_ms": 1000.0 * setup_s, "cores": 1}


def measure_paced(avatar, size: tuple[int, int], n_frames: int, fps: float = BENCH_FPS) -> dict:
    """CPU time per frame when frames are rendered on a live session's schedule (one every ``1 / fps`` s, sleeping
    in between), next to the back-to-back figure over the same states, both on this thread's CPU clock."""
    import cv2

    cv2.setNumThreads(1)
    gen = make_generator("parametric", avatar, size, 0, fps=fps)
    states = bench_states(n_frames, fps)
    for i, s in enumerate(states):  # warm up: the mouth bank's samples are fitted to the portrait at first use
        gen.render_state(s, i)
    c0 = time.thread_time()
    for i, s in enumerate(states):
        gen.render_state(s, i)
    back_to_back = (time.thread_time() - c0) / n_frames
    cpu = 0.0
    start = time.perf_counter() + 1.0 / fps
    for i, s in enumerate(states):
        wait = start + i / fps - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        c0 = time.thread_time()
        gen.render_state(s, i)
        cpu += time.thread_time() - c0
    paced = cpu / n_frames
    return {"size": f"{size[0]}x{size[1]}", "frames": n_frames, "fps": fps,
            "paced_cpu_ms_per_frame": 1000.0 * paced, "back_to_back_cpu_ms_per_frame": 1000.0 * back_to_back,
            "paced_vs_back_to_back": paced / max(back_to_back, 1e-9),
            "sessions_per_core": 1.0 / (fps * max(paced, 1e-9))}


class PeakMemory:
    """Samples the resident memory of this process plus its children (the render workers) in a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        import threading

        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def looped_speech(audio_path: str | None, seconds: float, out_path: Path) -> Path:
    """Real speech repeated (with 0.6 s pauses) to ``seconds``, written as a 16 kHz WAV."""
    import soundfile as sf

    src = load_audio(audio_path or Path(avatarcast.__file__).resolve().parent / "assets" / "demo_speech.flac")
    gap = np.zeros(int(0.6 * src.rate_hz), np.float32)
    unit = np.concatenate([src.samples, gap])
    n = int(round(seconds * src.rate_hz))
    samples = np.tile(unit, int(math.ceil(n / len(unit))))[:n]
    sf.write(str(out_path), samples, src.rate_hz, subtype="PCM_16")
    return out_path


def measure_end_to_end(portrait: str | None, audio: str | None, seconds: float, workers: list[int],
                       size: tuple[int, int] = E2E_SIZE, fps: float = E2E_FPS, preset: str = "veryfast",
                       x264_params: str | None = None) -> dict:
    """The whole offline cascade (`avatarcast render`) on real speech: real-time factor, speed-up, peak memory."""

    encoding = VideoEncoding(preset=preset, crf=20, **({} if x264_params is None else {"x264_params": x264_params}))
    runs = []
    with tempfile.TemporaryDirectory(prefix="avatarcast-bench-") as tmp:
        wav = looped_speech(audio, seconds, Path(tmp) / "speech.wav")
        for n in workers:
            out = Path(tmp) / f"out_w{n}.mp4"
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                result = render_video(portrait, wav, out, size=size, fps=fps, workers=n, executor="process",
                                      progress=False, encoding=encoding)
                wall = time.perf_counter() - t0
            runs.append({"workers": n, "wall_s": wall, "real_time_factor": wall / result.duration_s,
                         "peak_memory_mib": mem.peak_bytes / 2**20, "stages_s": result.stage_seconds,
                         "clips": result.n_clips})
    base = runs[0]["wall_s"]
    for r in runs:
        r["speedup_vs_first"] = base / r["wall_s"]
    return {"measured": True, "size": f"{size[0]}x{size[1]}", "fps": fps, "video_s": seconds,
            "encoder": f"libx264 {preset} crf20 {encoding.x264_params or '(preset only)'}, 1 thread per worker",
            "audio": audio or "bundled demo speech, looped",
            "includes": "audio analysis, director, blueprint, worker start, render, encode, assembly with AAC",
            "runs": runs}


def run(args: argparse.Namespace) -> int:
    if args.frames < 10:
        raise InputError(f"--frames must be at least 10 for a meaningful figure, got {args.frames}")
    if args.paced_frames != 0 and args.paced_frames < 10:
        raise InputError(f"--paced-frames must be 0 (skip) or at least 10, got {args.paced_frames}")
    avatar = _load(args.portrait)
    portrait = args.portrait or "default portrait"
    raw = [measure_raw(avatar, size, args.frames) for size in RAW_SIZES]
    paced = measure_paced(avatar, PACED_SIZE, args.paced_frames) if args.paced_frames else None
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    e2e = measure_end_to_end(args.portrait, args.audio, args.e2e_seconds, workers, preset=args.preset,
                             x264_params=args.x264_params) \
        if args.e2e_seconds > 0 else {"measured": False, "reason": "skipped (--e2e-seconds 0)"}
    minutes = [float(m) for m in str(args.memory_minutes).split(",") if m.strip()]
    if any(m <= 0 for m in minutes):
        raise InputError(f"--memory-minutes must be positive, got {args.memory_minutes}")
    memory = [measure_end_to_end(args.portrait, args.audio, 60.0 * m, [E2E_WORKERS], size=MEMORY_SIZE,
                                 fps=BENCH_FPS, preset=args.preset, x264_params=args.x264_params)
              for m in minutes]
    machine = {"cpu_count": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
               "machine": platform.machine()}
    kind = "video generator" if getattr(avatar, "kind", "") == "video" else "parametric generator"
    print(f"render benchmark: {kind}, portrait: {portrait}, machine: {machine['cpu_count']} cores, {machine['cpu']}")
    print(f"{'size':>10} {'frames':>7} {'cores':>5} {'render_fps':>11} {'ms/frame':>9} {'setup_ms':>9}")
    for r in raw:
        print(f"{r['size']:>10} {r['frames']:>7} {r['cores']:>5} {r['render_fps']:>11.1f} {r['ms_per_frame']:>9.2f}"
              f" {r['setup_ms']:>9.1f}")
    if paced is not None:
        print(f"paced, {paced['size']} at one frame every 1/{paced['fps']:g} s (as a live session renders): "
              f"{paced['paced_cpu_ms_per_frame']:.2f} ms CPU a frame, {paced['paced_vs_back_to_back']:.2f}x the "
              f"{paced['back_to_back_cpu_ms_per_frame']:.2f} ms of the same frames back to back: "
              f"{paced['sessions_per_core']:.1f} sessions' rendering per core")
    if e2e.get("measured"):
        print(f"end to end: avatarcast render, {e2e['size']} @ {e2e['fps']:.0f} fps, {e2e['video_s']:.0f} s of speech, "
              f"{e2e['encoder']}")
        print(f"{'workers':>8} {'wall_s':>8} {'real_time_factor':>17} {'speedup':>8} {'peak_memory_mib':>16}")
        for r in e2e["runs"]:
            print(f"{r['workers']:>8} {r['wall_s']:>8.1f} {r['real_time_factor']:>17.2f} {r['speedup_vs_first']:>8.2f}"
                  f" {r['peak_memory_mib']:>16.0f}")
        print("real_time_factor = wall time / video duration (below 1 is faster than real time); "
              f"includes {e2e['includes']}")
    else:
        print(f"end to end 1920x1080 @ 48 fps: not measured ({e2e['reason']})")
    if memory:
        first = memory[0]["runs"][0]["peak_memory_mib"]
        print(f"memory against duration: avatarcast render, {memory[0]['size']} @ {BENCH_FPS:.0f} fps, "
              f"{E2E_WORKERS} workers, {memory[0]['encoder']}")
        print(f"{'video_s':>8} {'wall_s':>8} {'real_time_factor':>17} {'peak_memory_mib':>16} {'vs_first':>9}")
        for m in memory:
            r = m["runs"][0]
            r["peak_vs_first"] = r["peak_memory_mib"] / first
            print(f"{m['video_s']:>8.0f} {r['wall_s']:>8.1f} {r['real_time_factor']:>17.2f} "
                  f"{r['peak_memory_mib']:>16.0f} {r['peak_vs_first']:>9.2f}")
    print("raw fps: one process, cv2.setNumThreads(1), no encoding; figures from a shared machine are noisy")
    if args.json:
        Path(args.json).write_text(json.dumps({"portrait": portrait, "machine": machine, "raw": raw, "paced": paced,
                                               "end_to_end": e2e, "memory_vs_duration": memory}, indent=2))
    return 0
