"""The scheduler on virtual time (``FakeTimer``): a session of several seconds runs in a fraction of that, with the
real generator, director and mouth analyzer, and gives the same frames, states and events on every run."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.audio.visemes import StreamingMouthAnalyzer
from avatarcast.direction.director import LiveDirector
from avatarcast.face.loading import load_avatar
from avatarcast.generators.parametric.generator import ParametricGenerator
from avatarcast.live.scheduler import MOUTH_LOOKAHEAD_S, Scheduler
from avatarcast.live.session import send_playback_events
from avatarcast.live.timer import FakeTimer

FPS = 25.0


def test_fake_timer_wakes_sleepers_in_order_of_their_ends():
    async def body():
        timer = FakeTimer(start=10.0)
        woke = []

        async def sleeper(name, seconds):
            await timer.sleep(seconds)
            woke.append((name, round(timer.now(), 6)))

        t0 = time.perf_counter()
        await asyncio.gather(sleeper("c", 3600.0), sleeper("a", 0.5), sleeper("b", 0.5), sleeper("d", 0.0))
        return woke, time.perf_counter() - t0

    woke, real_s = asyncio.run(body())
    assert woke == [("d", 10.0), ("a", 10.5), ("b", 10.5), ("c", 3610.0)]
    assert real_s < 60.0  # the hour was not waited for


def test_a_workers_pause_takes_virtual_time_while_the_tasks_go_on():
    """``pause`` in a worker thread: virtual time moves on to the pause's end while a task keeps ticking, and the
    worker goes on exactly there."""
    import threading

    async def body():
        timer = FakeTimer(start=0.0)
        cond = threading.Condition()
        seen: dict[str, float] = {}
        done = threading.Event()

        def worker() -> None:
            timer.attach()
            seen["paused_at"] = timer.now()
            timer.pause(0.1)
            seen["resumed_at"] = timer.now()
            with cond:
                while not done.is_set():
                    timer.wait(cond, 0.02)

        thread = threading.Thread(target=worker)
        thread.start()
        ticks = []
        for _ in range(10):
            await timer.sleep(0.02)
            ticks.append(round(timer.now(), 6))
        done.set()
        with cond:
            cond.notify_all()
        thread.join(5.0)
        return seen, ticks

    seen, ticks = asyncio.run(body())
    assert seen["paused_at"] == 0.0 and seen["resumed_at"] == pytest.approx(0.1)
    assert ticks == pytest.approx([0.02 * k for k in range(1, 11)])  # the task's ticks ran through the pause


class Shown:
    """A sink recording, per video frame, its timestamp, its pixels' checksum and the state the scheduler showed."""

    def __init__(self, sch) -> None:
        self.sch = sch
        self.frames: list[tuple] = []
        self.audio_pts: list[int] = []

    def on_video(self, frame) -> None:
        self.frames.append((frame.pts, int(frame.to_ndarray().sum()), self.sch.state_shown()))

    def on_audio(self, frame) -> None:
        self.audio_pts.append(frame.pts)


def _session(pcm: bytes) -> tuple[list, list, dict, float, float]:
    async def body():
        timer = FakeTimer()
        avatar = load_avatar(None)
        sch = Scheduler(ParametricGenerator(avatar, (96, 96), seed=1), LiveDirector(seed=1, background=False), FPS,
                        StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S), timer=timer)
        events = []
        send_playback_events(sch, events.append)
        t_real = time.perf_counter()
        await sch.start()
        t_virtual = timer.now()
        rec = Shown(sch)
        sch.add_sink(rec)
        try:
            await timer.sleep(1.0)
            half = len(pcm) // 2
            for pos in range(0, len(pcm), 640):  # a real-time sender: 20 ms of speech every 20 ms
                sch.push_audio(pcm[pos:pos + 640], 16000)
                await timer.sleep(0.02)
                if pos >= half and pos - 640 < half:
                    sch.end_utterance()
                    await timer.sleep(1.0)  # then a second utterance, interrupted part-way
            await timer.sleep(0.6)
            events.extend(sch.interrupt())  # the session sends these as playback.finished (interrupted)
            await timer.sleep(1.5)
        finally:
            await sch.stop()
        return rec.frames, events, sch.stats.snapshot(), timer.now() - t_virtual, time.perf_counter() - t_real

    return asyncio.run(body())


def test_a_session_on_virtual_time_runs_faster_than_real_time_and_the_same_every_run(speech):
    audio = load_audio(speech / "ljspeech" / "LJ001-0003.wav")
    pcm = float_to_pcm16(resample(audio.samples, audio.rate_hz, 16000)[:16000 * 4])
    frames, events, stats, virtual_s, real_s = _session(pcm)
    print(f"{virtual_s:.1f} s of session in {real_s:.2f} s")
    assert virtual_s > 8.0 and real_s < virtual_s  # virtual time was not waited for (how much faster: see the print)
    # every frame on time: rendering takes no virtual time
    assert stats["underrun_ms"] == 0 and stats["av_drift_ms"] < 0.1
    # 40 ms frames; the idle frame before an utterance that starts sooner than the frame grid lasts 20 ms
    steps = np.diff([pts for pts, _, _ in frames])
    assert set(steps.tolist()) <= {3600, 1800}
    assert int(np.sum(steps == 1800)) == stats["sooner_starts"]["count"] <= 2
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["PlaybackStartedEvent", "PlaybackFinishedEvent", "PlaybackStartedEvent", "PlaybackEnd"]
    assert not events[1].interrupted and events[3].interrupted
    assert events[1].position_ms == pytest.approx(2020, abs=1) and 0 < events[3].position_ms < 2000  # 101 messages
    # the mouth moved with the speech and closed after the interrupt's transition
    jaw = np.array([s.jaw_open for _, _, s in frames])
    assert jaw.max() > 0.3 and np.all(jaw[-10:] == 0.0)
    again = _session(pcm)
    assert [(p, c) for p, c, _ in again[0]] == [(p, c) for p, c, _ in frames]  # the same pixels, frame by frame
    assert [s for _, _, s in again[0]] == [s for _, _, s in frames]
    assert [(type(e).__name__, getattr(e, "position_ms", None)) for e in again[1]] == \
        [(type(e).__name__, getattr(e, "position_ms", None)) for e in events]
