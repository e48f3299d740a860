"""``serve --realtime-priority N``: the sessions' render worker threads and render processes run under SCHED_RR, the
work that is not on a frame's deadline (the live planner's process, the server's event loop) stays under the normal
policy, and a setting the machine refuses is a clear error."""

from __future__ import annotations

import asyncio
import os

import pytest

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.core.errors import InputError
from avatarcast.core.realtime import check_priority
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
