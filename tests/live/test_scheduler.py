"""The media clock and the look-ahead scheduler, driven directly (no sockets) with the real renderer, director and
mouth analyzer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.audio.visemes import StreamingMouthAnalyzer
from avatarcast.core.errors import InvalidValueError
from avatarcast.direction.director import LiveDirector
from avatarcast.face.loading import load_avatar
from avatarcast.generators.parametric.generator import ParametricGenerator
from avatarcast.live.mediaclock import SAMPLES_PER_TICK, MediaClock
from avatarcast.live.scheduler import MOUTH_LOOKAHEAD_S, Scheduler, Utterance
from avatarcast.live.renderer import ThreadRenderer
from avatarcast.live.session import send_playback_events
from avatarcast.live.timer import FakeTimer, RealTimer

FPS = 25.0


def test_utterance_audio_buffer_returns_what_was_appended():
    rng = np.random.default_rng(5)
    u = Utterance(id="u", rate_hz=16000, received_at=0.0, resample_48k=None, resample_16k=None)
    assert u.audio16_from(0.0, 1.0) is None
    chunks = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(1, 4000, 60)]
    seen = []
    for chunk in chunks:
        u.add_audio16(chunk)
        whole = np.concatenate(chunks[:len(seen) + 1])
        seen.append(u.audio16_from(0.01, 0.04))
        assert np.array_equal(u.audio16_from(0.0, 100.0), whole)
        assert np.array_equal(seen[-1], whole[160:800])
    # slices handed out earlier keep their samples when the buffer grows
    whole = np.concatenate(chunks)
    assert all(np.array_equal(a, whole[160:160 + len(a)]) for a in seen)


@pytest.mark.parametrize("fps", [25.0, 30.0, 24.0, 29.97])
def test_media_clock_pairs_frames_with_contiguous_audio(fps):
    clock = MediaClock(fps)
    n = int(fps * 3600)  # one hour
    starts = [clock.frame_start_sample(k) for k in (0, 1, 2, n)]
    assert starts[0] == 0
    assert sum(clock.frame_samples(k) for k in range(200)) == clock.frame_start_sample(200)
    assert abs(starts[3] - 3600 * 48000 * (n / fps / 3600)) <= 1  # no drift over an hour
    assert clock.frame_pts(n) == round(clock.frame_start_sample(n) * 90000 / 48000)
    assert clock.frames_starting_before(clock.frame_start_sample(10)) == 10
    assert clock.frames_starting_before(clock.frame_start_sample(10) + 1) == 11


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 23.976, 59.94, 12.5, 7.0])
def test_media_clock_integer_frame_starts_equal_the_rational_ones(fps):
    from fractions import Fraction

    clock = MediaClock(fps)
    exact = Fraction(48000) / Fraction(fps).limit_denominator(1001)
    ks = list(range(0, 5000)) + list(range(10**6, 10**6 + 5000, 7)) + [10**9 + 1, 2**40 + 3]
    assert [clock.frame_start_sample(k) for k in ks] == [round(k * exact) for k in ks]  # halves to even, too


@pytest.mark.parametrize("size", [(512, 512), (1920, 1080), (66, 34), (100, 50)])
def test_video_frames_carry_the_rendered_planes_exactly(size):
    import av

    from avatarcast.live.scheduler import video_frame

    w, h = size
    yuv = np.random.default_rng(w).integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    frame = video_frame(yuv)
    assert (frame.width, frame.height, frame.format.name) == (w, h, "yuv420p")
    assert np.array_equal(frame.to_ndarray(), yuv)
    assert np.array_equal(frame.to_ndarray(), av.VideoFrame.from_ndarray(yuv, format="yuv420p").to_ndarray())
    assert np.array_equal(video_frame(np.asfortranarray(yuv)).to_ndarray(), yuv)  # not C-contiguous: PyAV's copy


@pytest.fixture(scope="module")
def avatar():
    return load_avatar(None)


class Recorder:
    def __init__(self) -> None:
        self.video: list[int] = []
        self.audio: list[tuple[int, float]] = []

    def on_video(self, frame) -> None:
        self.video.append(frame.pts)

    def on_audio(self, frame) -> None:
        self.audio.append((frame.pts, float(np.abs(frame.to_ndarray()).max())))


class SlowSpeech(ThreadRenderer):
    """The real renderer, made slower than real time for speech frames (a loaded machine)."""

    def __init__(self, generator, delay_s: float) -> None:
        super().__init__(generator)
        self.delay_s = delay_s

    def frame(self, clip, i, mouth_of=None, row=None):
        if mouth_of is not None:  # a speech frame
            time.sleep(self.delay_s)
        return super().frame(clip, i, mouth_of, row)


def _scheduler(avatar, generator=None, timer=None, renderer=None) -> Scheduler:
    """A scheduler on the machine's clock, or on ``timer`` (a ``FakeTimer``: virtual time, faster than real time)."""
    generator = generator or ParametricGenerator(avatar, (192, 192), seed=1)
    return Scheduler(generator, LiveDirector(seed=1), FPS, StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S),
                     timer=timer, renderer=renderer)


async def _push_utterance(sch, pcm: bytes, chunk_bytes: int) -> None:
    """Push one utterance as fast as the event loop allows (a TTS burst), in ``chunk_bytes`` messages."""
    for pos in range(0, len(pcm), chunk_bytes):
        sch.push_audio(pcm[pos:pos + chunk_bytes], 16000)
        await asyncio.sleep(0)
    sch.end_utterance()


def _pcm16k(path, seconds):
    audio = load_audio(path)
    return float_to_pcm16(resample(audio.samples[: int(seconds * audio.rate_hz)], audio.rate_hz, 16000))


def _frame_steps(video_pts: list[int], stats: dict, fps: float = FPS) -> None:
    """Frames are a frame apart, except the idle frame before each utterance that started sooner than the frame
    grid: 20 ms shorter (``sooner_starts``)."""
    frame_pts = round(90000 / fps)
    steps = np.diff(video_pts)
    assert set(steps.tolist()) <= {frame_pts, frame_pts - 1800}
    assert int(np.sum(steps == frame_pts - 1800)) == stats["sooner_starts"]["count"]


def test_every_frame_is_paired_with_its_audio_and_idle_keeps_the_mouth_closed(avatar, speech):
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0003.wav", 1.5)

    async def body():
        timer = FakeTimer()
        sch = _scheduler(avatar, timer=timer)
        rec = Recorder()
        events = []
        send_playback_events(sch, events.append)
        await sch.start()
        sch.add_sink(rec)
        try:
            await timer.sleep(0.5)
            idle_jaw = []
            for _ in range(5):
                idle_jaw.append(sch.state_shown().jaw_open)
                await timer.sleep(0.04)
            assert idle_jaw == [0.0] * 5
            await _push_utterance(sch, pcm, 640)
            await timer.sleep(2.2)
        finally:
            await sch.stop()
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["PlaybackStartedEvent", "PlaybackFinishedEvent"]
        assert events[1].position_ms == pytest.approx(1500, abs=1)
        # both tracks start on the same media sample; audio ticks are contiguous; every video frame starts on a
        # sample the audio track also starts a tick on (25 fps: 1920 samples = 2 ticks)
        assert rec.video[0] * 48000 // 90000 == rec.audio[0][0]
        apts = [p for p, _ in rec.audio]
        assert np.all(np.diff(apts) == SAMPLES_PER_TICK)
        stats = sch.stats.snapshot()
        _frame_steps(rec.video, stats)
        assert set(p * 48000 // 90000 for p in rec.video) <= set(apts)
        loud = sum(1 for _, peak in rec.audio if peak > 1000)
        assert loud > 30  # the speech went out
        # on virtual time rendering takes no time: no frame is late, and audio never moves
        assert stats["av_drift_ms"] < 0.1 and stats["underrun_ms"] == 0
        assert stats["output_fps"] > 20

    asyncio.run(body())


def test_media_clock_shift_makes_one_frame_shorter_and_keeps_audio_contiguous():
    clock = MediaClock(FPS)
    clock.shift_from(10, SAMPLES_PER_TICK)
    clock.shift_from(30, SAMPLES_PER_TICK)
    assert clock.frame_samples(9) == 1920 - SAMPLES_PER_TICK and clock.frame_samples(29) == 1920 - SAMPLES_PER_TICK
    assert [clock.frame_samples(k) for k in (0, 8, 10, 28, 30, 100)] == [1920] * 6
    assert sum(clock.frame_samples(k) for k in range(200)) == clock.frame_start_sample(200) == 200 * 1920 - 1920
    assert clock.frames_starting_before(clock.frame_start_sample(40)) == 40
    assert clock.latest_shift_frame == 30 and clock.shifted_samples == 1920
    with pytest.raises(InvalidValueError, match="forward"):
        clock.shift_from(30, SAMPLES_PER_TICK)
    with pytest.raises(InvalidValueError, match="ticks"):
        clock.shift_from(40, 500)
    with pytest.raises(InvalidValueError, match="no length"):
        clock.shift_from(40, 2 * SAMPLES_PER_TICK)


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_speech_starts_on_the_next_audio_tick_it_can_not_the_next_frame(avatar, speech, fps):
    """Utterances pushed at every phase of the frame grid: each starts within one 20 ms audio tick of the render
    budget (before, within a whole frame), and never sooner: at 30 fps a frame leaves at the tick its first sample
    falls in, before its start, and the budget counts to then. Where one starts sooner than the frame grid, the idle
    frame before it is 20 ms shorter; every frame keeps its audio."""
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0006.wav", 0.5)
    period = 1.0 / fps
    phases_ms = list(range(0, int(period * 1000), 5))

    async def body():
        timer = FakeTimer()
        sch = Scheduler(ParametricGenerator(avatar, (128, 128), seed=4), LiveDirector(seed=1), fps,
                        StreamingMouthAnalyzer(fps, lookahead_s=MOUTH_LOOKAHEAD_S), timer=timer)
        rec = Recorder()
        await sch.start()
        sch.add_sink(rec)
        waits = []
        try:
            for phase in phases_ms:
                await timer.sleep(0.8)
                to_grid = -(timer.now() - sch._base) % period  # to the next frame of the unshifted grid
                grid = sch.clock.shifted_samples / 48000.0
                await timer.sleep((to_grid - grid) % period + phase / 1000.0)
                budget = sch._render_budget_s()
                before = len(sch.stats.avatar_first_frame_ms)
                await _push_utterance(sch, pcm, 16000)
                await timer.sleep(0.8)
                assert len(sch.stats.avatar_first_frame_ms) == before + 1
                waits.append((sch.stats.avatar_first_frame_ms[-1] - budget * 1000.0))
        finally:
            await sch.stop()
        return sch.stats.snapshot(), rec, waits

    stats, rec, waits = asyncio.run(body())
    print(f"{fps:g} fps: first frame minus the render budget, ms, by phase:", [round(w, 1) for w in waits])
    sooner = stats["sooner_starts"]
    assert 0 < sooner["count"] < len(phases_ms) and sooner["total_ms"] == 20.0 * sooner["count"]
    _frame_steps(rec.video, stats, fps)
    apts = [p for p, _ in rec.audio]
    assert np.all(np.diff(apts) == SAMPLES_PER_TICK)
    assert stats["av_drift_ms"] < 0.1 and stats["underrun_ms"] == 0
    assert all(-0.5 <= w < 20.5 for w in waits)
    if fps == 25.0:  # every frame starts on an audio tick
        assert set(p * 48000 // 90000 for p in rec.video) <= set(apts)


def test_slow_renderer_holds_frames_without_moving_audio(avatar, speech):
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0004.wav", 1.2)

    async def body():
        sch = _scheduler(avatar, renderer=SlowSpeech(ParametricGenerator(avatar, (160, 160), seed=2), delay_s=0.07))
        events = []
        send_playback_events(sch, lambda e: events.append((time.monotonic(), e)))
        await sch.start()
        try:
            await asyncio.sleep(0.3)
            await _push_utterance(sch, pcm, 3200)
            await asyncio.sleep(2.5)
        finally:
            await sch.stop()
        (t_start, started), (t_end, finished) = events
        stats = sch.stats.snapshot()
        # the renderer is slower than real time for speech: frames are held, counted, and the audio keeps time
        assert stats["underrun_ms"] > 200
        assert finished.position_ms == pytest.approx(1200, abs=1)
        assert (t_end - t_start) == pytest.approx(1.2, abs=0.15)
        assert stats["av_drift_ms"] < 0.1
        # each late frame says why: its audio was in before the deadline, it waited behind the slow renders before
        # it, and its render finished after the deadline (or never started)
        late = stats["late_speech"]
        n_late = round(stats["underrun_ms"] / 40.0)
        assert late["slack_at_assign_ms"]["count"] == min(n_late, 200)
        assert late["slack_at_assign_ms"]["p50"] > 0
        assert late["wait_before_render_ms"]["count"] + late["never_started"] == n_late
        assert late["wait_before_render_ms"]["p50"] > 20  # one 70 ms render ahead of it, part of the time
        assert late["rendered_after_deadline_ms"]["count"] > 0 and late["rendered_after_deadline_ms"]["p50"] > 0
        ticks = stats["playout_ticks"]
        assert ticks["count"] > 100 and ticks["late_20ms"] <= ticks["late_10ms"] <= ticks["count"]

    asyncio.run(body())


def test_first_frame_latency_with_tts_bursts(avatar, speech):
    """avatar_first_frame_ms for utterances pushed faster than real time (timings are noisy on a shared box)."""
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0006.wav", 0.6)

    async def body():
        sch = _scheduler(avatar)
        await sch.start()
        try:
            for _ in range(5):
                await asyncio.sleep(0.3 + np.random.default_rng(0).uniform(0, 0.04))
                await _push_utterance(sch, pcm, 1600)
                await asyncio.sleep(0.8)
        finally:
            await sch.stop()
        latency = sch.stats.snapshot()["avatar_first_frame_ms"]
        print("avatar_first_frame_ms (warm, 192x192, bursts):", latency)
        assert latency["count"] == 5
        assert latency["p50"] < 150

    asyncio.run(body())


class CountingRenderer(ThreadRenderer):
    """The real renderer, recording for each frame it renders whether it is a speech frame."""

    def __init__(self, generator) -> None:
        super().__init__(generator)
        self.clips: list[bool] = []

    def frame(self, clip, i, mouth_of=None, row=None):
        self.clips.append(mouth_of is not None)
        return super().frame(clip, i, mouth_of, row)


def test_a_busy_machine_holds_every_other_idle_frame_but_never_a_speech_frame(avatar, speech):
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0003.wav", 1.0)

    async def body():
        renderer = CountingRenderer(ParametricGenerator(avatar, (128, 128), seed=1))
        sch = Scheduler(None, LiveDirector(seed=1), FPS, StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S),
                        machine_busy=lambda: True, renderer=renderer)
        rec = Recorder()
        await sch.start()
        sch.add_sink(rec)
        try:
            await asyncio.sleep(1.2)
            await _push_utterance(sch, pcm, 640)
            await asyncio.sleep(1.6)
        finally:
            await sch.stop()
        stats = sch.stats.snapshot()
        held, out = stats["idle_frames_held"], stats["frames_out"]
        speech_frames = round(1.0 * FPS)
        # the stream stays at full rate (a held frame is sent again), the idle part renders about half its frames
        _frame_steps(rec.video, stats)
        assert 0.25 * (out - speech_frames) <= held <= 0.5 * (out - speech_frames) + 1
        assert sum(renderer.clips) >= speech_frames - 2  # every speech frame was rendered
        assert stats["frames_rendered"] + held >= out - 3

    asyncio.run(body())


def test_an_idle_machine_renders_every_frame(avatar):
    async def body():
        sch = Scheduler(ParametricGenerator(avatar, (128, 128), seed=1), LiveDirector(seed=1), FPS,
                        StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S), machine_busy=lambda: False)
        await sch.start()
        try:
            await asyncio.sleep(1.0)
        finally:
            await sch.stop()
        assert sch.stats.snapshot()["idle_frames_held"] == 0

    asyncio.run(body())


def test_video_frame_pool_reuses_only_frames_nobody_holds():
    from avatarcast.live.scheduler import VideoFramePool, video_frame

    pool = VideoFramePool(size=2)
    planes = [np.full((96, 64), v, np.uint8) for v in range(5)]
    held = [video_frame(planes[0], pool), video_frame(planes[1], pool)]
    assert held[0] is not held[1] and pool.reused == 0
    extra = video_frame(planes[2], pool)  # both pooled frames are held: a new one, not kept
    assert all(extra is not f for f in held)
    released = id(held[0])
    del held[0]
    again = video_frame(planes[3], pool)
    assert id(again) == released and pool.reused == 1 and again.pts is None
    assert np.array_equal(again.to_ndarray(), planes[3]) and np.array_equal(held[0].to_ndarray(), planes[1])
    other = video_frame(np.zeros((48, 32), np.uint8), pool)  # another size is never served from the pool
    assert (other.width, other.height) == (32, 32)


def test_start_cushion_rises_at_once_after_late_frames_and_falls_slowly():
    from avatarcast.live.cushion import (CUSHION_MAX_EXTRA_S, CUSHION_MIN_FRAMES, CUSHION_SHRINK_S,
                                         CUSHION_TARGET_MARGIN_S, START_CUSHION_S, StartCushion)

    c = StartCushion()
    assert c.adaptive and c.seconds == START_CUSHION_S
    for _ in range(CUSHION_MIN_FRAMES - 1):
        c.margin(-0.03, 0.0)
    c.update()
    assert c.extra_s == 0.0  # too few frames to judge
    c.margin(-0.03, 0.0)
    c.update()
    # the extra that would have put the low margins at the target, in one step
    assert c.extra_s == pytest.approx(CUSHION_TARGET_MARGIN_S + 0.03)
    assert c.seconds == pytest.approx(START_CUSHION_S + CUSHION_TARGET_MARGIN_S + 0.03)
    # frames of an utterance that started with that extra report margins as they would have been without it
    extra = c.extra_s
    for _ in range(600):
        c.margin(0.05 + extra, extra)  # well inside their deadlines: 50 ms to spare even without an extra
    c.update()
    assert c.extra_s == pytest.approx(extra - CUSHION_SHRINK_S)
    for _ in range(100):
        c.update()
    assert c.extra_s == 0.0
    # a renderer far slower than real time cannot buy an unbounded delay
    for _ in range(600):
        c.margin(-2.0, 0.0)
    c.update()
    assert c.extra_s == CUSHION_MAX_EXTRA_S


def test_a_fixed_start_cushion_never_moves():
    from avatarcast.live.cushion import StartCushion

    c = StartCushion(0.05)
    for _ in range(600):
        c.margin(-0.2, 0.0)
    c.update()
    assert not c.adaptive and c.seconds == 0.05 and c.extra_s == 0.0
    with pytest.raises(ValueError):
        StartCushion(-0.01)


@pytest.mark.parametrize("text, ms", [("auto", None), ("AUTO", None), (None, None), ("0", 0.0), ("35", 35.0),
                                      (80.0, 80.0)])
def test_start_cushion_setting_parses(text, ms):
    from avatarcast.live.cushion import parse_start_cushion

    assert parse_start_cushion(text) == (None if ms is None else pytest.approx(ms))


@pytest.mark.parametrize("text", ["soon", "-5", "501", "nan"])
def test_start_cushion_setting_refuses_what_it_cannot_use(text):
    from avatarcast.core.errors import InputError
    from avatarcast.live.cushion import parse_start_cushion

    with pytest.raises(InputError, match="`start_cushion_ms`"):
        parse_start_cushion(text)


class Hiccups(ThreadRenderer):
    """The real renderer with a stall on every ``every``-th speech frame (a busy machine's scheduling delays)."""

    def __init__(self, generator, every: int, stall_s: float, timer=None) -> None:
        super().__init__(generator)
        self.every, self.stall_s = every, stall_s
        self.timer = timer or RealTimer()  # the stall takes the scheduler's time (virtual under a FakeTimer)
        self.speech_clips = 0

    def frame(self, clip, i, mouth_of=None, row=None):
        if mouth_of is not None:  # a speech frame
            self.speech_clips += 1
            if self.speech_clips % self.every == 0:
                self.timer.pause(self.stall_s)
        return super().frame(clip, i, mouth_of, row)


async def _push_real_time(sch, pcm: bytes, stall_every: int = 0, stall_s: float = 0.0, end_after_s: float = 0.0,
                          rate_hz: int = 16000, chunk_s: float = 0.02, timer=None) -> None:
    """Push one utterance at real-time pace in ``chunk_s`` messages (a streaming TTS). With ``stall_every``, every
    so many messages are held back ``stall_s`` (then the sender catches up): a TTS or network with jitter.
    ``speech.end`` follows ``end_after_s`` after the last audio. ``timer``: the scheduler's (its time is the pace)."""
    clock = timer or RealTimer()
    step = int(rate_hz * chunk_s) * 2
    t0 = clock.now()
    for i, pos in enumerate(range(0, len(pcm), step)):
        if stall_every and i and i % stall_every == 0:
            await clock.sleep(stall_s)
        sch.push_audio(pcm[pos:pos + step], rate_hz)
        delay = t0 + (i + 1) * chunk_s - clock.now()
        if delay > 0:
            await clock.sleep(delay)
    await clock.sleep(end_after_s)
    sch.end_utterance()


async def _speak(sch, pcm: bytes, n: int, stat: str, timer=None, **push) -> tuple[list[float], list[float]]:
    """Push ``n`` utterances at real-time pace; how much ``stat`` (``underrun_ms``, ``starved_ms``) grew in each,
    and the start cushion at each start and after the last one."""
    clock = timer or RealTimer()
    grown, cushions = [], []
    for _ in range(n):
        await clock.sleep(0.4)
        before = getattr(sch.stats, stat)
        cushions.append(sch.stats.start_cushion_ms)
        await _push_real_time(sch, pcm, timer=timer, **push)
        await clock.sleep(0.6)
        grown.append(getattr(sch.stats, stat) - before)
    cushions.append(sch.stats.start_cushion_ms)
    return grown, cushions


@pytest.mark.parametrize("fixed_s", [None, 0.02])
def test_the_adaptive_start_cushion_absorbs_render_stalls(avatar, speech, fixed_s):
    """Every fourth speech frame stalls 90 ms: with the 20 ms cushion those frames miss their deadlines. Once the
    adaptive cushion has seen enough speech frames (one 2.4 s utterance) it grows, later utterances start later
    (their first frames, rendered as soon as they start, get its extra too), and within two more utterances every
    frame is in time; a fixed cushion stays where it is."""
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0004.wav", 2.4)
    n_utterances = 4 if fixed_s is None else 2

    async def body():
        timer = FakeTimer()  # virtual time: the stalls, and nothing else, make frames late
        renderer = Hiccups(ParametricGenerator(avatar, (128, 128), seed=3), every=4, stall_s=0.09, timer=timer)
        sch = Scheduler(None, LiveDirector(seed=1), FPS,
                        StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S), start_cushion_s=fixed_s,
                        renderer=renderer, timer=timer)
        await sch.start()
        try:
            return await _speak(sch, pcm, n_utterances, "underrun_ms", timer=timer)
        finally:
            await sch.stop()

    underruns, cushions = asyncio.run(body())
    starts = cushions[:-1]
    print("underrun_ms per utterance:", underruns, "start cushion at each start:", starts, "ms")
    assert underruns[0] > 0  # the stalls make frames late with the 20 ms cushion
    if fixed_s is None:
        assert starts[0] == 20.0 and 20.0 < starts[-1] <= 100.0
        # virtual time: only the stalls can make a frame late; at most one a later utterance while it rises
        assert max(underruns[1:]) <= 40.0 and underruns[-1] == 0.0
    else:
        assert underruns[1] > 0 and starts == [20.0] * n_utterances


def test_the_adaptive_start_cushion_absorbs_a_senders_jitter(avatar, speech):
    """Every 0.2 s the sender's audio comes 120 ms late: with the 20 ms cushion the speech pauses (audio and video
    together: ``starved_ms``). When the audio goes on after such a pause, the pause counts as late frames, so the
    cushion grows and later utterances play through."""
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0004.wav", 2.4)

    async def body():
        timer = FakeTimer()
        sch = _scheduler(avatar, ParametricGenerator(avatar, (128, 128), seed=3), timer)
        await sch.start()
        try:
            return await _speak(sch, pcm, 3, "starved_ms", timer=timer, stall_every=10, stall_s=0.12)
        finally:
            await sch.stop()

    starved, cushions = asyncio.run(body())
    print("starved_ms per utterance:", starved, "start cushion at each start:", cushions, "ms")
    assert starved[0] >= 40.0
    assert cushions[0] == 20.0 and cushions[1] > 60.0
    assert starved[1] + starved[2] < starved[0]


def test_a_late_speech_end_does_not_grow_the_start_cushion(avatar, speech):
    """The audio stops and ``speech.end`` comes 0.3 s later: the pause before the last frames is the end of the
    speech, not a late sender, and the cushion stays near 20 ms."""
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0004.wav", 2.4)

    async def body():
        timer = FakeTimer()
        sch = _scheduler(avatar, ParametricGenerator(avatar, (128, 128), seed=3), timer)
        await sch.start()
        try:
            return await _speak(sch, pcm, 2, "starved_ms", timer=timer, end_after_s=0.3)
        finally:
            await sch.stop()

    starved, cushions = asyncio.run(body())
    print("starved_ms per utterance:", starved, "start cushion at each start:", cushions, "ms")
    assert starved[0] >= 120.0  # the frames after the audio waited for speech.end
    assert cushions[-1] < 50.0  # counted as late audio, 7 gap frames would have set it near its 100 ms cap


class ClipLog:
    """The real generator, recording each sub-clip it is opened on (and from which frame) and each frame it
    renders."""

    def __init__(self, generator) -> None:
        self.generator = generator
        self.size = generator.size
        self.opens: list[tuple] = []  # (clip, start)
        self.frames: list[tuple] = []  # (clip index, frame in clip, state rendered)

    def render(self, clip, *, start=0):
        from avatarcast.core.trajectory import clip_state

        self.opens.append((clip, start))
        for i, frame in enumerate(self.generator.render(clip, start=start), start):
            self.frames.append((clip.index, i, clip_state(clip, i)))
            yield frame


def test_live_renders_sub_clips_between_consecutive_plan_keyframes(avatar, speech):
    """Live mode renders first-last-frame sub-clips between the plan's consecutive keyframes, each opened once in
    the generator and advanced a frame at a time (the poses between keyframes are the generator's, not the
    scheduler's); what the scheduler says it showed is what the generator rendered."""
    pcm = _pcm16k(speech / "ljspeech" / "LJ001-0003.wav", 3.0)

    async def body():
        log_gen = ClipLog(ParametricGenerator(avatar, (128, 128), seed=1))
        timer = FakeTimer()
        sch = _scheduler(avatar, log_gen, timer)
        shown = []
        await sch.start()
        try:
            await timer.sleep(0.3)
            await _push_utterance(sch, pcm, 640)
            for _ in range(120):
                shown.append(sch.state_shown())
                await timer.sleep(0.04)
        finally:
            await sch.stop()
        return log_gen, shown

    log_gen, shown = asyncio.run(body())
    clips = {c.index: c for c, _ in log_gen.opens}
    lengths = [c.n_frames for c in clips.values()]
    frames = len(log_gen.frames)
    print(f"{len(clips)} sub-clips, {len(log_gen.opens)} opens, {frames} frames; lengths {sorted(lengths)}")
    assert frames > 100
    assert len(log_gen.opens) < frames / 3  # most frames come from advancing an open sub-clip
    assert np.median(lengths) >= 3
    for c in clips.values():  # first-last-frame clips on the frame grid
        assert c.first.time_s == pytest.approx(c.start_frame / FPS) and c.last.time_s == pytest.approx(c.end_s)
        assert c.mouth is not None and c.mouth_streamed
    # consecutive sub-clips join: each starts where the one before ends, or at a frame inside it (a plan cut there)
    ordered = sorted(clips.values(), key=lambda c: (c.start_frame, c.index))
    for a, b in zip(ordered, ordered[1:]):
        assert a.start_frame <= b.start_frame <= a.start_frame + a.n_frames
    # the states the scheduler reports as shown are states the generator rendered
    rendered = {(round(s.head_yaw_deg, 6), round(s.head_pitch_deg, 6)) for _, _, s in log_gen.frames}
    assert sum((round(s.head_yaw_deg, 6), round(s.head_pitch_deg, 6)) in rendered for s in shown) >= 0.95 * len(shown)
