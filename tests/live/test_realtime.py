"""``serve --realtime-priority N``: the sessions' render worker threads and render processes run under SCHED_RR, the
work that is not on a frame's deadline (the live planner's process, the server's event loop) stays under the normal
policy, and a setting the machine refuses is a clear error."""

from __future__ import annotations

import asyncio
import os

import pytest

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.core.errors import InputError
from avatarcast.core.realtime import check_priority, check_worker_nice
from avatarcast.direction import director as director_module
from avatarcast.live.client import IngestClient
from avatarcast.live.server import ServerConfig, run_server


def test_the_setting_is_checked():
    assert check_priority(0) == 0
    for bad in (-1, 100, True, 2.5, "5"):
        with pytest.raises(InputError, match="realtime_priority"):
            check_priority(bad)


def test_render_threads_and_processes_run_under_sched_rr_and_planning_does_not(speech):
    try:
        check_priority(5)
    except InputError as exc:
        pytest.skip(str(exc))  # an unprivileged account: the error above is what the user sees
    audio = load_audio(speech / "ljspeech" / "LJ001-0002.wav")
    pcm = float_to_pcm16(resample(audio.samples, audio.rate_hz, 24000))

    async def run() -> dict:
        h = await run_server(ServerConfig(port=0, width=128, height=128, fps=25.0, token="admin", realtime_priority=5))
        try:
            s = h.session()
            async with IngestClient(f"ws://127.0.0.1:{h.port}/v1/sessions/default/ingest", s.ingest_token) as c:
                await c.start(24000)
                await c.send_audio(pcm, realtime=True)
                await c.speech_end()
                await c.wait_for("playback.finished", timeout=30)
            pool = director_module._POOL
            planners = [p.pid for p in pool._processes.values()] if pool is not None else []
            return {
                "render_process": os.sched_getscheduler(s.scheduler.renderer.pid),
                "render_priority": os.sched_getparam(s.scheduler.renderer.pid).sched_priority,
                "render_thread": os.sched_getscheduler(s.scheduler._thread.native_id),
                "event_loop": os.sched_getscheduler(0),
                "planners": [os.sched_getscheduler(pid) for pid in planners],
                "stats": s.stats(),
            }
        finally:
            await h.close()

    got = asyncio.run(run())
    assert got["render_process"] == os.SCHED_RR and got["render_priority"] == 5
    assert got["render_thread"] == os.SCHED_RR
    assert got["event_loop"] == os.SCHED_OTHER
    assert got["planners"] and all(p == os.SCHED_OTHER for p in got["planners"])
    assert got["stats"]["utterances"] == 1 and got["stats"]["speech_played_ms"] > 1000


def test_worker_nice_setting_is_checked():
    assert check_worker_nice(0) == 0 and check_worker_nice(19) == 19
    for bad in (-1, 20, True, 2.5, "5"):
        with pytest.raises(InputError, match="worker_nice"):
            check_worker_nice(bad)


def test_worker_nice_lowers_render_processes_render_threads_and_encoders_below_the_event_loop(speech):
    """``serve --worker-nice N``: the render process, the render worker thread and the encode threads run N nice
    levels below the event loop, which keeps its own level."""
    from avatarcast.live.outputs import fanout as fanout_module
    from avatarcast_bench.receiver import WhepReceiver

    audio = load_audio(speech / "ljspeech" / "LJ001-0002.wav")
    pcm = float_to_pcm16(resample(audio.samples, audio.rate_hz, 24000))

    async def run() -> dict:
        h = await run_server(ServerConfig(port=0, width=128, height=128, fps=25.0, token="admin", worker_nice=4))
        rx = None
        try:
            s = h.session()
            rx = WhepReceiver(f"http://127.0.0.1:{h.port}/v1/sessions/default/whep", s.viewer_token)
            await rx.connect()
            async with IngestClient(f"ws://127.0.0.1:{h.port}/v1/sessions/default/ingest", s.ingest_token) as c:
                await c.start(24000)
                await c.send_audio(pcm, realtime=True)
                await c.speech_end()
                await c.wait_for("playback.finished", timeout=30)
            encoders = [t.native_id for t in fanout_module._executor._threads] if fanout_module._executor else []
            return {
                "event_loop": os.getpriority(os.PRIO_PROCESS, 0),
                "render_process": os.getpriority(os.PRIO_PROCESS, s.scheduler.renderer.pid),
                "render_thread": os.getpriority(os.PRIO_PROCESS, s.scheduler._thread.native_id),
                "encoders": [os.getpriority(os.PRIO_PROCESS, tid) for tid in encoders],
                "frames": len(rx.log.video),
                "stats": s.stats(),
            }
        finally:
            if rx is not None:
                await rx.close()
            await h.close()

    base = os.getpriority(os.PRIO_PROCESS, 0)
    got = asyncio.run(run())
    want = min(base + 4, 19)
    assert got["event_loop"] == base
    assert got["render_process"] == want and got["render_thread"] == want
    assert got["encoders"] and all(n == want for n in got["encoders"]), got["encoders"]
    assert got["frames"] > 25 and got["stats"]["utterances"] == 1 and got["stats"]["speech_played_ms"] > 1000
