"""Latency the Pipecat video service adds, measured in a real Pipecat pipeline (espeak-ng -> avatar -> recorder).

    python -m avatarcast_bench.pipecat                      # in-process, 512x512 at 25 fps
    python -m avatarcast_bench.pipecat --mode remote        # an avatarcast server in this process
    python -m avatarcast_bench.pipecat --mode remote --server http://127.0.0.1:8080 --token T

Per utterance it reports ``first_frame_ms``: the pipeline clock from the TTS's first audio frame reaching the
service to the first video frame of that speech leaving it (the service's ``first_frame_ms``). The first utterance
is cold (labelled), the rest warm. It also interrupts one utterance mid-speech and reports ``interrupt_to_silence_ms``:
from the ``InterruptionFrame`` entering the pipeline to the last loud audio frame leaving the service (0 when none
left after it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time

import numpy as np

from avatarcast.integrations.pipecat import AvatarcastVideoService, InProcessAvatar, RemoteAvatar
from avatarcast.integrations.pipecat.espeak import EspeakTTSService
from avatarcast.live.load import cpu_model
from avatarcast.live.server import ServerConfig, run_server
from avatarcast.live.session import parse_size

SENTENCES = [
    "Good morning, and welcome to the show.",
    "Today we talk about the weather in the mountains.",
    "It was cold last night, and the roads are icy.",
    "Drive slowly, and take a warm coat with you.",
    "The sun comes out again in the afternoon.",
    "That is all for now, thank you for listening.",
]
LOUD_PCM16 = 328  # 0.01 of full scale


async def _bench(args: argparse.Namespace) -> dict:
    from pipecat.frames.frames import (
        EndFrame,
        InterruptionFrame,
        OutputAudioRawFrame,
        StartFrame,
        TTSSpeakFrame,
        TTSStoppedFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    class Recorder(FrameProcessor):
        def __init__(self) -> None:
            super().__init__()
            self.stops = 0
            self.started = False
            self.loud: list[int] = []

        async def process_frame(self, frame, direction) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, StartFrame):
                self.started = True
            elif isinstance(frame, TTSStoppedFrame):
                self.stops += 1
            elif isinstance(frame, OutputAudioRawFrame):
                if np.max(np.abs(np.frombuffer(frame.audio, np.int16)), initial=0) > LOUD_PCM16:
                    self.loud.append(self.get_clock().get_time())
            await self.push_frame(frame, direction)

    w, h = parse_size(args.size)
    handle = None
    if args.mode == "remote" and not args.server:
        handle = await run_server(ServerConfig(port=0, width=w, height=h, fps=args.fps, token="bench"))
        engine = RemoteAvatar(handle.base_url, token="bench")
    elif args.mode == "remote":
        engine = RemoteAvatar(args.server, args.session, token=args.token)
    else:
        engine = InProcessAvatar(args.avatar, size=(w, h), fps=args.fps)
    service = AvatarcastVideoService(engine)
    rec = Recorder()
    worker = PipelineWorker(Pipeline([EspeakTTSService(), service, rec]), params=PipelineParams(),
                            enable_rtvi=False, idle_timeout_secs=None, setup_timeout_secs=60)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    result: dict = {}

    async def wait(pred, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError("the pipeline stopped making progress")
            await asyncio.sleep(0.01)

    async def drive() -> None:
        await wait(lambda: rec.started, 90)
        await asyncio.sleep(1.0)
        for i in range(args.utterances):
            await worker.queue_frame(TTSSpeakFrame(SENTENCES[i % len(SENTENCES)]))
            await wait(lambda: rec.stops > i, 60)
            await asyncio.sleep(args.gap_s)
        # one interruption, mid-speech
        await worker.queue_frame(TTSSpeakFrame(" ".join(SENTENCES)))
        n_loud = len(rec.loud)
        await wait(lambda: len(rec.loud) > n_loud + 25, 60)
        t_int = rec.get_clock().get_time()
        await worker.queue_frame(InterruptionFrame())
        await asyncio.sleep(1.0)
        after = [t for t in rec.loud if t >= t_int]
        result["interrupt_to_silence_ms"] = round((max(after) - t_int) / 1e6, 1) if after else 0.0
        await worker.queue_frame(EndFrame())

    try:
        await asyncio.gather(runner.run(), drive())
    finally:
        if handle is not None:
            await handle.close()
    ms = service.first_frame_ms
    warm = np.asarray(ms[1:args.utterances], np.float64)
    result.update({
        "mode": args.mode, "size": args.size, "fps": args.fps,
        "cpu": cpu_model() or platform.processor() or "unknown",
        "first_frame_ms_cold": round(ms[0], 1) if ms else None,
        "first_frame_ms_warm": {"n": int(warm.size), "p50": round(float(np.percentile(warm, 50)), 1),
                                "p90": round(float(np.percentile(warm, 90)), 1),
                                "max": round(float(warm.max()), 1)} if warm.size else None,
        "first_frame_ms_all": [round(x, 1) for x in ms],
        "video_frames_out": service.video_frames_out,
    })
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("local", "remote"), default="local",
                   help="local: the engine in this process (default); remote: over an avatarcast server")
    p.add_argument("--server", default=None, help="remote mode: a running server (default: start one here)")
    p.add_argument("--token", default=None, help="remote mode: the server's admin token")
    p.add_argument("--session", default="default", help="remote mode: the session id (default 'default')")
    p.add_argument("--avatar", default=None, help="portrait or prepared avatar (default: the bundled portrait)")
    p.add_argument("--size", default="512x512", help="video size (default 512x512)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    p.add_argument("--utterances", type=int, default=6, help="utterances measured (default 6; the first is cold)")
    p.add_argument("--gap-s", type=float, default=0.5, help="silence between utterances (default 0.5 s)")
    args = p.parse_args()
    print(json.dumps(asyncio.run(_bench(args)), indent=1))


if __name__ == "__main__":
    main()
