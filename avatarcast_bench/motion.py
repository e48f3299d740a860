"""Live head motion: the sub-clips a live session renders and how smoothly its head moves between them.

    python -m avatarcast_bench.motion [--json motion.json]

Drives a live session (the real scheduler, director, mouth analyzer and parametric generator at 128x128) on virtual
time (``FakeTimer``, the director planning in line: the figures do not depend on the machine's load; with
``--real-time`` on the machine's clock, the director planning in its worker process as in the server) through three
LJ Speech recordings, each sent at real-time pace after two seconds of listening, and reports from the frames shown:

- ``subclips``: sub-clips rendered, their median length in frames, and how many times the generator was opened
  (a sub-clip opened again part-way after held or replaced frames counts again);
- ``head_stops_per_s``: how often the head's angular speed falls to a local minimum below a quarter of its mean over
  the surrounding second (it eases to a stop at every keyframe: fewer, longer sub-clips mean fewer stops).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.audio.visemes import StreamingMouthAnalyzer
from avatarcast.core.types import AvatarState
from avatarcast.direction.director import LiveDirector
from avatarcast.face.loading import load_avatar
from avatarcast.generators.parametric.generator import ParametricGenerator
from avatarcast.live.load import cpu_model
from avatarcast.live.scheduler import MOUTH_LOOKAHEAD_S, Scheduler
from avatarcast.live.timer import FakeTimer

RECORDINGS = ("LJ001-0003.wav", "LJ001-0005.wav", "LJ001-0002.wav")
FPS = 25.0


class _Opened:
    """The generator, counting what it is opened on."""

    def __init__(self, generator: ParametricGenerator) -> None:
        self.generator = generator
        self.size = generator.size
        self.opens: list[tuple[int, int]] = []  # (clip index, its length)

    def render(self, clip, *, start: int = 0):
        self.opens.append((clip.index, clip.n_frames))
        return self.generator.render(clip, start=start)


class _Shown:
    def __init__(self, sch: Scheduler) -> None:
        self.sch = sch
        self.states: list[AvatarState] = []

    def on_video(self, frame) -> None:
        self.states.append(self.sch.state_shown())

    def on_audio(self, frame) -> None:
        pass


async def _session(seed: int, wav: Path, real_time: bool) -> tuple[list[AvatarState], list[tuple[int, int]]]:
    timer = None if real_time else FakeTimer()
    generator = _Opened(ParametricGenerator(load_avatar(None), (128, 128), seed=seed))
    sch = Scheduler(generator, LiveDirector(seed=seed, background=real_time), FPS,
                    StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S), seed=seed,
                    **({} if real_time else {"timer": timer}))  # (the machine's clock is the default)
    await sch.start()
    shown = _Shown(sch)
    sch.add_sink(shown)
    audio = load_audio(wav)
    pcm = float_to_pcm16(resample(audio.samples, audio.rate_hz, 16000))
    sleep = asyncio.sleep if real_time else timer.sleep
    try:
        await sleep(2.0)
        for pos in range(0, len(pcm), 640):
            sch.push_audio(pcm[pos:pos + 640], 16000)
            await sleep(0.02)
        sch.end_utterance()
        await sleep(3.0)
    finally:
        await sch.stop()
    return shown.states, generator.opens


def head_stops(states: list[AvatarState], fps: float = FPS) -> int:
    """Local minima of the head's angular speed below a quarter of its mean over the surrounding second."""
    pose = np.array([[s.head_yaw_deg, s.head_pitch_deg, s.head_roll_deg] for s in states], np.float64)
    speed = np.linalg.norm(np.diff(pose, axis=0), axis=1)
    window = max(1, int(round(fps)))
    local = np.convolve(speed, np.ones(window) / window, mode="same")
    return sum(1 for i in range(1, len(speed) - 1)
               if speed[i] <= speed[i - 1] and speed[i] <= speed[i + 1] and speed[i] < 0.25 * local[i]
               and local[i] > 1e-3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avatarcast_bench.motion", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
                   help="the data folder (with speech/ljspeech/)")
    p.add_argument("--real-time", action="store_true", help="on the machine's clock instead of virtual time")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures here")
    args = p.parse_args(argv)
    folder = Path(args.data) / "speech" / "ljspeech"
    clock = f"the machine's clock ({cpu_model() or 'unknown CPU'})" if args.real_time else "virtual time"
    print(f"live head motion on {clock}, 128x128 at {FPS:g} fps, {len(RECORDINGS)} LJ Speech recordings", flush=True)
    rows, stops, seconds, lengths, opens = [], 0, 0.0, [], 0
    for seed, name in enumerate(RECORDINGS, 1):
        states, opened = asyncio.run(_session(seed, folder / name, args.real_time))
        n = head_stops(states)
        secs = (len(states) - 1) / FPS
        clips = dict(opened)
        stops, seconds, opens = stops + n, seconds + secs, opens + len(opened)
        lengths += list(clips.values())
        rows.append({"recording": name, "seconds": round(secs, 2), "head_stops": n, "subclips": len(clips),
                     "opens": len(opened), "median_subclip_frames": float(np.median(list(clips.values())))})
        print(f"{name}: {secs:.1f} s shown, {len(clips)} sub-clips (median {rows[-1]['median_subclip_frames']:g} "
              f"frames), opened {len(opened)} times, {n} head stops ({n / secs:.2f}/s)", flush=True)
    result = {"head_stops_per_s": round(stops / seconds, 3), "median_subclip_frames": float(np.median(lengths)),
              "subclips": len(lengths), "opens": opens, "runs": rows}
    print(f"head_stops_per_s {result['head_stops_per_s']}, median sub-clip {result['median_subclip_frames']:g} "
          f"frames ({len(lengths)} sub-clips, opened {opens} times)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
