"""The look-ahead scheduler: one media clock per session, a render worker thread, and the playout loop.

How a frame is made and played:

1. Frames live in *slots*: slot ``k`` is video frame ``k`` of the session, paired with the 48 kHz audio samples
   ``[clock.frame_start_sample(k), clock.frame_start_sample(k + 1))``.
2. The render worker (a thread of the server process) *assigns* the next few slots
   (``LOOKAHEAD_FRAMES``) a content: ``speech`` (a frame of the current utterance and its audio), ``idle`` (the
   director's idle/listening plan with a closed mouth), ``gap`` (the client has not sent the next audio yet:
   silence and a closed mouth, so audio and video pause together) or ``transition`` (the first-last-frame clip to
   the listening pose after an interrupt). It then renders each slot as the next frame of a sub-clip: the
   first-last-frame ``ClipSpec`` between the two consecutive keyframes of the director's plan around the slot (the
   live blueprint), opened once in the generator and advanced a frame at a time, with each frame's mouth row
   written in as its speech arrives. The poses between keyframes are the generator's (``clip_state``), not the
   scheduler's; a sub-clip is reopened part-way when the plan after a committed frame changes (a new plan, an
   instruction, an interrupt) or when frames were held or replaced. The frames come from a renderer
   (``renderer.py``): the generator in this same thread, or in a child process of the session's own that the
   thread waits on (so several sessions render on several cores). The streaming mouth analysis runs in the
   renderer as well: the scheduler passes each utterance's 16 kHz audio on as it arrives, assigns a speech slot
   once the sample counts say its mouth row exists, and gets the row back with the frame.
3. The playout loop (an asyncio task) runs on the wall clock in 20 ms audio ticks. When a tick reaches the start of
   slot ``k`` it emits that slot's frame and queues its audio; every sink (WebRTC tracks, RTMP) receives both with
   timestamps from the same sample counter, so audio and video cannot drift.

Never stall: the clock never waits for the renderer. A speech frame that is not rendered by its deadline is
replaced by the last frame shown while its audio plays on time (``underrun_ms``); the late render is discarded.
Idle slots that are assigned but not yet shown are replaced at once when speech becomes playable, so the idle
look-ahead adds no latency to the first speech frame. ``interrupt`` drops all queued speech, slots and audio at once
and plays the transition clip from the state last shown to the listening pose. While the machine is short of CPU
(``machine_busy``), every other idle slot is a *hold*: it shows the previous frame again and is not rendered.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import sys
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Callable, Protocol

import av
import numpy as np

from avatarcast.audio.io import StreamResampler, pcm16_to_float
from avatarcast.core.realtime import WorkerPriority
from avatarcast.core.trajectory import clip_state, smoothstep
from avatarcast.core.types import AUDIO_RATE_HZ, MOUTH_FIELDS, NEUTRAL_STATE, AvatarState, ClipSpec, Keyframe
from avatarcast.live.cushion import StartCushion
from avatarcast.live.mediaclock import PLAYOUT_RATE_HZ, SAMPLES_PER_TICK, MediaClock
from avatarcast.live.plan import PlanTimeline
from avatarcast.live.renderer import RenderError, Renderer, RendererDied, ThreadRenderer
from avatarcast.live.stats import SessionStats
from avatarcast.live.timer import RealTimer, Timer

log = logging.getLogger(__name__)

LOOKAHEAD_FRAMES = 3
"""Slots assigned and rendered ahead of the playout position (the look-ahead budget)."""
MOUTH_LOOKAHEAD_S = 0.03
"""Look-ahead of the streaming mouth analyzer in live mode (short: it adds directly to the first-frame latency)."""
TRANSITION_S = 0.24
"""Length of the first-last-frame transition to the listening pose after an interrupt."""
PLAN_HORIZON_S = 0.2
"""How far each director call plans while speaking. The director works a keyframe's state out when it returns it, and
the utterance's plan is made again every 0.4 s of new audio: a keyframe returned further ahead would miss what the
next plan places there (a gesture's onset, a segment border) or show an instructed gesture smaller (planning 2 s
ahead made "tilt your head left" at an utterance's start about a fifth smaller, eight seeds). So speech is planned
in short steps; where a step ends between two of the director's keyframes, the sub-clip ends on a point on the way."""
IDLE_PLAN_HORIZON_S = 1.0
"""The same while listening, where no utterance plan comes: past the director's next keyframe (every 1.2-2 s) or a
second ahead. A change of mode (speech starts or stops, an instruction) cuts the plan at the first frame not assigned
yet and the director plans again from there (``_replan_from``), so it reaches the keyframes within the director's
own mode-switch time."""
PLAN_MARGIN_S = 0.2
"""The plan is extended when it covers less than this beyond the slot being assigned."""
HOLD_BLINK_GUARD_S = 0.1
"""No idle frame is held from this long before a blink starts to half a second after (blinks stay smooth)."""
MAX_LATE_S = 0.25
"""If the event loop was blocked longer than this, the clock is re-based instead of bursting to catch up."""
FADE_OUT_S = 0.008
"""Fade applied to speech audio cut by an interrupt (avoids a click)."""
PRIME_TIMEOUT_S = 60.0
"""How long ``start`` waits for the first rendered frame."""
AUDIO_TIME_BASE = Fraction(1, PLAYOUT_RATE_HZ)
VIDEO_TIME_BASE = Fraction(1, 90000)


def video_frame(yuv: np.ndarray, pool: "VideoFramePool | None" = None) -> av.VideoFrame:
    """A yuv420p ``av.VideoFrame`` from one (H * 3 / 2, W) uint8 array of planes (``renderer.to_yuv420p``), taken
    from ``pool`` when one is given.

    The planes are copied in with one ``memcpy`` each when their rows have no padding (PyAV's ``from_ndarray``
    copies row by row: 0.17 against 0.03 ms a 512x512 frame, on the event loop for every frame of every session).
    """
    h = yuv.shape[0] * 2 // 3
    w = yuv.shape[1]
    frame = pool.take(w, h) if pool is not None else av.VideoFrame(w, h, "yuv420p")
    planes = frame.planes
    if (w % 2 or h % 2 or not yuv.flags.c_contiguous or planes[0].line_size != w
            or planes[1].line_size != w // 2 or planes[2].line_size != w // 2):
        return av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    flat = yuv.reshape(-1)
    n_y, n_c = w * h, (w // 2) * (h // 2)
    planes[0].update(flat[:n_y])
    planes[1].update(flat[n_y:n_y + n_c])
    planes[2].update(flat[n_y + n_c:n_y + 2 * n_c])
    return frame


class VideoFramePool:
    """yuv420p frames that are used again once nothing else holds them.

    A new ``av.VideoFrame`` costs little on an idle machine (2 us at 512x512) but ~0.5 ms on a busy one (measured in
    the server with 4 sessions on 2 cores: fresh buffers mean fresh pages), once per frame per session on the event
    loop. A frame is handed out again only when the pool holds the last reference to it: the viewers' track queues,
    aiortc's encoder (which encodes synchronously: libvpx keeps no reference after ``encode`` returns) and the RTMP
    pusher all hold references while they use a frame. At most ``size`` frames are kept; beyond that (every frame
    still in use) new ones are made and not kept.
    """

    def __init__(self, size: int = 12) -> None:
        self.size = size
        self._frames: list[av.VideoFrame] = []
        self.reused = 0
        self._free_refs = self._baseline()

    @staticmethod
    def _baseline() -> int:
        # the reference count of a frame that only the pool's list holds, seen from the loop in ``take``
        frames = [av.VideoFrame(2, 2, "yuv420p")]
        for f in frames:
            return sys.getrefcount(f)
        raise AssertionError

    def take(self, width: int, height: int) -> av.VideoFrame:
        for f in self._frames:
            if sys.getrefcount(f) == self._free_refs and f.width == width and f.height == height:
                self.reused += 1
                f.pts = None
                return f
        frame = av.VideoFrame(width, height, "yuv420p")
        if len(self._frames) < self.size:
            self._frames.append(frame)
        return frame


@dataclass(frozen=True)
class PlaybackEnd:
    """An utterance stopped playing: after ``position_ms`` of its audio, cut short by an interrupt or not."""

    utterance_id: str
    position_ms: float
    interrupted: bool


class MediaSink(Protocol):
    """Receives the session's media: frames with timestamps from the session's media clock."""

    def on_audio(self, frame: av.AudioFrame) -> None: ...

    def on_video(self, frame: av.VideoFrame) -> None: ...


class Director(Protocol):
    def plan_next(self, t0_s: float, horizon_s: float, speaking: bool, audio: np.ndarray | None = None,
                  words: list | None = None) -> Any: ...

    def interrupt(self, t_s: float) -> None: ...

    def set_instruction(self, text: str | None) -> None: ...


class SampleQueue:
    """A FIFO of float32 samples kept as chunks (appending never copies what is already queued)."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self._chunks.append(np.asarray(samples, np.float32))
            self._len += len(samples)

    def take(self, n: int) -> np.ndarray:
        """Remove and return up to ``n`` samples."""
        out = np.empty(min(n, self._len), np.float32)
        pos = 0
        while pos < len(out):
            chunk = self._chunks[0]
            m = min(len(chunk), len(out) - pos)
            out[pos:pos + m] = chunk[:m]
            pos += m
            if m == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[m:]
        self._len -= len(out)
        return out

    def drop_last(self, n: int) -> None:
        """Remove the last ``n`` samples (at most all of them)."""
        n = min(n, self._len)
        self._len -= n
        while n:
            chunk = self._chunks[-1]
            if len(chunk) <= n:
                self._chunks.pop()
                n -= len(chunk)
            else:
                self._chunks[-1] = chunk[:len(chunk) - n]
                n = 0

    def clear(self) -> int:
        n = self._len
        self._chunks.clear()
        self._len = 0
        return n




def _with_mouth(state: AvatarState, row: np.ndarray) -> AvatarState:
    return replace(state, **{name: float(v) for name, v in zip(MOUTH_FIELDS, row)})


@dataclass(eq=False)
class Utterance:
    """One stretch of speech from ``speech`` start to ``speech.end`` (or an interrupt)."""

    id: str
    rate_hz: int
    received_at: float  # monotonic time the first audio byte arrived
    resample_48k: StreamResampler
    resample_16k: StreamResampler
    audio48: SampleQueue = field(default_factory=SampleQueue)
    audio16: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [:n16] received, 16 kHz
    n16: int = 0
    seq: int = 0  # the renderer's key for its mouth rows
    frames_ready: int = 0  # frames whose mouth rows the renderer has (from the sample counts)
    words: list = field(default_factory=list)
    ended: bool = False
    next_frame: int = 0
    start_slot: int | None = None
    cushion_extra_s: float = 0.0  # the start cushion's extra it started with (StartCushion)
    gap_run: int = 0  # gap slots since its last speech slot (the sender's audio was late)
    samples_in48: int = 0
    samples_out48: int = 0
    done: bool = False

    def add_audio16(self, samples: np.ndarray) -> None:
        """Append 16 kHz samples (the buffer grows by doubling, so appending is amortised O(1))."""
        end = self.n16 + len(samples)
        if end > len(self.audio16):
            grown = np.empty(max(end, 2 * len(self.audio16), AUDIO_RATE_HZ), np.float32)
            grown[:self.n16] = self.audio16[:self.n16]
            self.audio16 = grown
        self.audio16[self.n16:end] = samples
        self.n16 = end

    def audio16_from(self, t_s: float, duration_s: float) -> np.ndarray | None:
        if not self.n16:
            return None
        all16 = self.audio16[:self.n16]  # written once, never changed: slices of it stay valid
        i0 = max(0, int(t_s * AUDIO_RATE_HZ))
        seg = all16[i0:i0 + int(duration_s * AUDIO_RATE_HZ)]
        return seg if len(seg) else None


@dataclass(eq=False)
class Slot:
    index: int
    kind: str  # "idle" | "speech" | "gap" | "transition"
    state: AvatarState
    audio: np.ndarray | None = None  # 48 kHz float32 speech samples; None = silence
    speech_samples: int = 0  # how many of them are received audio (the rest pads the utterance's last frame)
    utterance: Utterance | None = None
    utt_frame: int = -1
    last_of_utterance: bool = False
    image: np.ndarray | None = None  # the rendered frame as yuv420p planes (see Scheduler._render)
    hold: bool = False  # an idle slot that shows the previous frame again instead of rendering (machine busy)
    assigned_at: float = 0.0  # monotonic time the slot got its content (for a speech slot: its audio was in)
    render_started_at: float | None = None  # monotonic time its render was asked for


@dataclass(eq=False)
class RenderJob:
    """One slot's frame: frame ``frame`` of the sub-clip ``clip``."""

    clip: ClipSpec
    frame: int
    slot: Slot
    mouth_of: tuple[int, int] | None = None  # (utterance seq, frame): the renderer fills in that mouth row
    row: np.ndarray | None = None  # the mouth row of a frame that is not speech (None: closed)


def _cushion_extra(slot: Slot) -> float:
    return slot.utterance.cushion_extra_s if slot.utterance is not None else 0.0


class Scheduler:
    """Owns one session's media clock, look-ahead buffer, render worker and playout loop."""

    def __init__(
        self,
        generator: Any,
        director: Director,
        fps: float,
        analyzer: Any,
        *,
        seed: int = 0,
        max_buffer_ms: float = 10000.0,
        name: str = "session",
        on_playback_started: Callable[[str], None] | None = None,
        on_playback_finished: Callable[[PlaybackEnd], None] | None = None,
        on_render_failed: Callable[[str], None] | None = None,
        renderer: Renderer | None = None,
        machine_busy: Callable[[], bool] | None = None,
        start_cushion_s: float | None = None,
        priority: WorkerPriority = WorkerPriority(),
        timer: Timer | None = None,
    ) -> None:
        """``generator`` renders in the scheduler's thread unless a ``renderer`` (for example a
        ``ProcessRenderer``) is given; then ``generator`` may be ``None``. ``machine_busy`` (for example
        ``CpuLoad.busy``): while it returns True, every other idle frame shows the previous one again instead of
        being rendered (``Slot.hold``), which leaves the CPU to the speech frames. ``start_cushion_s``: a fixed start
        cushion (``StartCushion``); ``None`` adapts it. The scheduler says what happens to the speech through three
        callbacks (the session turns them into the protocol's events): ``on_playback_started(utterance_id)`` when an
        utterance's first frame goes out, ``on_playback_finished(PlaybackEnd)`` after its last audio, and
        ``on_render_failed(message)`` once when the render process is gone (called on the event loop).
        ``priority``: how the render worker thread runs (``core/realtime.py``: under ``SCHED_RR`` at
        ``priority.realtime``, ``priority.nice`` levels below the event loop; the session's encoders take the same
        nice level). ``timer``: the time the session runs on (``timer.py``: the machine's clock by default, virtual
        time in tests)."""
        self.priority = priority
        self.timer: Timer = timer if timer is not None else RealTimer()
        self.generator = generator
        self.renderer: Renderer = renderer if renderer is not None else ThreadRenderer(generator)
        self.director = director
        self.clock = MediaClock(fps)
        self.fps = self.clock.fps
        if hasattr(director, "fps"):
            director.fps = self.fps  # its keyframes fall on this session's frames
        self.seed = seed
        self.max_buffer_ms = float(max_buffer_ms)
        self.name = name
        self.on_playback_started = on_playback_started or (lambda utterance_id: None)
        self.on_playback_finished = on_playback_finished or (lambda end: None)
        self.on_render_failed = on_render_failed or (lambda message: None)
        # StreamingMouthAnalyzer: the renderer analyses with it (a ProcessRenderer with one like it in its child);
        # here it only says from sample counts which rows exist
        self.analyzer = analyzer
        self.renderer.use_mouth_analyzer(analyzer)
        self.stats = SessionStats()
        self.log = logging.LoggerAdapter(log, {"session": name})

        self._cond = threading.Condition()
        self._slots: dict[int, Slot] = {}
        self._jobs: deque[RenderJob] = deque()
        self._queue: deque[Utterance] = deque()  # utterances with slots still to assign, in order
        self._current: Utterance | None = None  # the utterance being assigned to slots
        self._open: Utterance | None = None  # the utterance receiving audio
        self._pending_words: list = []
        self._emitted = -1
        self._emitted_kind = ""
        self._ticked_to = 0  # the playout ticks have emitted every frame starting before this sample
        self._next_assign = 0
        self._base: float | None = None  # monotonic time of media sample 0
        self._plan = PlanTimeline(self.fps)
        self._speaking = False
        self._received48 = 0
        self._out48 = 0
        self._dropped48 = 0
        self._ids = itertools.count(1)
        self._seqs = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._render_s = 0.01
        self._loop: asyncio.AbstractEventLoop | None = None
        self.machine_busy = machine_busy
        self._last_assigned: Slot | None = None
        self.cushion = StartCushion(start_cushion_s)
        self.stats.start_cushion_ms = self.cushion.seconds * 1000.0

        # playout-loop state (event-loop thread only)
        self._fifo = SampleQueue()
        self._fifo_written = 0
        self._tick = 0
        self._next_frame = 0
        self._last_image: np.ndarray | None = None
        self._frame_pool = VideoFramePool()
        self._last_state = NEUTRAL_STATE
        self._sinks: list[MediaSink] = []
        self._pending_sinks: list[tuple[MediaSink, int]] = []
        self._finishes: list[tuple[int, Utterance]] = []
        self._silence_mark: float | None = None
        self._listening_mark: tuple[float, int] | None = None
        self._task: asyncio.Task | None = None
        self._space: asyncio.Event | None = None
        self.first_frame_ready = threading.Event()

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the renderer and the worker, wait for the first frame, then start the clock. On failure everything
        started is stopped again."""
        self._space = asyncio.Event()
        self._space.set()
        loop = self._loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.renderer.start)
            self._thread = threading.Thread(target=self._worker, name=f"render-{self.name}", daemon=True)
            self._thread.start()
            ok = await loop.run_in_executor(None, self.first_frame_ready.wait, PRIME_TIMEOUT_S)
            if not ok:
                raise RenderError(self.render_error or
                                  f"the renderer produced no frame within {PRIME_TIMEOUT_S:.0f} s")
        except BaseException:
            await self.stop()
            raise
        with self._cond:
            self._base = self.timer.now()
            self._cond.notify_all()
        self._task = asyncio.create_task(self._playout(), name=f"playout-{self.name}")

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        loop = asyncio.get_running_loop()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, 5.0)
        await loop.run_in_executor(None, self.renderer.close)  # a render process ends here
        if self._thread is not None and self._thread.is_alive():  # it was waiting on a wedged render process
            await loop.run_in_executor(None, self._thread.join, 5.0)

    # ------------------------------------------------------------------------------------------ ingest side

    def buffered_ms(self) -> float:
        """Speech audio received and not yet played (the backpressure budget)."""
        return (self._received48 - self._out48 - self._dropped48) * 1000.0 / PLAYOUT_RATE_HZ

    def over_budget(self) -> bool:
        return self.buffered_ms() > self.max_buffer_ms

    async def wait_for_space(self) -> None:
        """Return once the buffered audio is within budget (the ingest stops reading until then)."""
        assert self._space is not None
        while self.over_budget() and not self._stopping:
            self._space.clear()
            await self._space.wait()

    def push_audio(self, pcm: bytes, rate_hz: int, received_at: float | None = None) -> Utterance:
        """Queue raw PCM16 LE mono audio at ``rate_hz``; opens a new utterance when none is open."""
        received_at = self.timer.now() if received_at is None else received_at
        samples = pcm16_to_float(pcm)
        u = self._open
        if u is not None and u.rate_hz != rate_hz:
            self.end_utterance()
            u = None
        if u is None:
            u = Utterance(
                id=f"utt_{next(self._ids)}",
                seq=next(self._seqs),
                rate_hz=rate_hz,
                received_at=received_at,
                resample_48k=StreamResampler(rate_hz, PLAYOUT_RATE_HZ),
                resample_16k=StreamResampler(rate_hz, AUDIO_RATE_HZ),
            )
            with self._cond:
                u.words, self._pending_words = self._pending_words, []
                self._queue.append(u)
                self._open = u
                self.stats.utterances += 1
        a48 = u.resample_48k.push(samples)
        a16 = u.resample_16k.push(samples)
        if len(a16):
            self.renderer.mouth_push(u.seq, a16)  # on its way before any request for its frames
        self._append(u, a48, a16, ended=False)
        return u

    def end_utterance(self) -> None:
        """The open utterance is complete: flush the resamplers and the mouth analyzer."""
        u = self._open
        if u is None:
            return
        a48 = u.resample_48k.flush()
        a16 = u.resample_16k.flush()
        if len(a16):
            self.renderer.mouth_push(u.seq, a16)
        self.renderer.mouth_end(u.seq)
        self._append(u, a48, a16, ended=True)

    def _append(self, u: Utterance, a48: np.ndarray, a16: np.ndarray, ended: bool) -> None:
        with self._cond:
            if u.done:  # interrupted meanwhile
                if ended and self._open is u:
                    self._open = None
                return
            u.audio48.push(a48)
            u.samples_in48 += len(a48)
            self._received48 += len(a48)
            if len(a16):
                u.add_audio16(np.asarray(a16, np.float32))
            if ended:  # the analyzer's flush gives every frame of the utterance
                u.frames_ready = self.analyzer.frames_for(u.n16)
            else:
                while self.analyzer.needed_samples(u.frames_ready) <= u.n16:
                    u.frames_ready += 1
            if ended:
                u.ended = True
                if self._open is u:
                    self._open = None
            self.stats.audio_received_ms += len(a48) * 1000.0 / PLAYOUT_RATE_HZ
            self._cond.notify_all()

    def add_words(self, words: list, phones: list) -> None:
        """Word and phone timings (seconds from the start of the open utterance, or of the next one when none is
        open): words go to the director, phones to the mouth analyzer."""
        self.renderer.mouth_phones(phones)
        with self._cond:
            if self._open is not None:
                self._open.words.extend(words)
            else:
                self._pending_words.extend(words)

    def drop_pending_words(self) -> None:
        """Forget the words (and their phones) sent for an utterance that has not started (their client is gone)."""
        with self._cond:
            if self._open is not None or not self._pending_words:
                return
            self._pending_words = []
        self.renderer.mouth_discard()  # the analyzer's phones for the next utterance go with them

    def set_instruction(self, text: str | None) -> None:
        """Free-text direction; the director uses it from its next plan on."""
        with self._cond:
            self.director.set_instruction(text)
            self._replan_from(max(self._next_assign, self._emitted + 1))

    def interrupt(self) -> list[PlaybackEnd]:
        """Barge-in: drop queued speech, slots and audio now; play the transition to the listening pose."""
        now = self.timer.now()
        events: list[PlaybackEnd] = []
        with self._cond:
            dropped = 0
            for u in self._queue:
                u.done = True
                dropped += len(u.audio48)
                u.audio48.clear()
            cut: list[Utterance] = []
            for idx in [i for i in self._slots if i > self._emitted]:
                slot = self._slots.pop(idx)
                dropped += slot.speech_samples
                if slot.utterance is not None:
                    slot.utterance.done = True
                    cut.append(slot.utterance)
            seen: set[int] = set()
            for u in list(self._queue) + cut:
                if id(u) in seen:
                    continue
                seen.add(id(u))
                events.append(PlaybackEnd(u.id, round(u.samples_out48 * 1000.0 / PLAYOUT_RATE_HZ, 1), True))
            # utterances already fully assigned and still playing out are finished too
            for _, u in self._finishes:
                if id(u) not in seen:
                    seen.add(id(u))
                    events.append(PlaybackEnd(u.id, round(u.samples_out48 * 1000.0 / PLAYOUT_RATE_HZ, 1), True))
            self._finishes.clear()
            self._queue.clear()
            self._current = None
            if self._open is not None:
                self.renderer.mouth_discard()  # the cut utterance's analysis ends; the next push starts afresh
            self._open = None
            self._pending_words = []
            self._jobs.clear()
            self._dropped48 += dropped
            self.stats.audio_dropped_ms += dropped * 1000.0 / PLAYOUT_RATE_HZ

            k = self._emitted + 1
            t_k = k / self.fps
            start = self._last_state
            self.director.interrupt(t_k)
            self._speaking = False
            self._plan.cut_after(t_k, start)
            # the director's first keyframe after an interrupt is the listening pose at the end of its transition
            plan = self.director.plan_next(t_k, TRANSITION_S + 0.1, False, None, None)
            target_kfs = [kf for kf in plan.keyframes if kf.time_s > t_k]
            t_target = target_kfs[0].time_s if target_kfs else t_k + TRANSITION_S
            n = max(1, round((t_target - t_k) * self.fps))
            t_end = (k + n) / self.fps
            target = _with_mouth(target_kfs[0].state if target_kfs else start, np.zeros(3, np.float32))
            self._plan.keyframes.append(Keyframe(t_end, target))
            self._plan.add([kf for kf in plan.keyframes[1:] if kf.time_s > t_end + 1e-6], plan.blink_times_s)
            start_mouth = np.array([getattr(start, f) for f in MOUTH_FIELDS], np.float32)
            for i in range(n):  # the sub-clip to the listening pose, the mouth closing over it
                self._make_slot(k + i, "transition", start_mouth * (1.0 - smoothstep(i / n)), None, None, -1, False)
            self._next_assign = k + n
            self._cond.notify_all()
        # playout-side: cut the queued speech audio (keep the sample count: the clock never jumps)
        self._cut_fifo()
        self._silence_mark = now
        self._listening_mark = (now, k + n)
        if self._space is not None:
            self._space.set()
        return events

    # ------------------------------------------------------------------------------------------ outputs

    def add_sink(self, sink: MediaSink) -> None:
        """Attach an output; it starts at the next frame that begins on an audio tick (both tracks together)."""
        self._pending_sinks.append((sink, self._tick))

    def remove_sink(self, sink: MediaSink) -> None:
        self._sinks = [s for s in self._sinks if s is not sink]
        self._pending_sinks = [(s, t) for s, t in self._pending_sinks if s is not sink]

    @property
    def sink_count(self) -> int:
        return len(self._sinks) + len(self._pending_sinks)

    def state_shown(self) -> AvatarState:
        """The state of the frame shown last (for tests and the stats overlay)."""
        return self._last_state

    # ------------------------------------------------------------------------------------------ worker thread

    def _deadline(self, k: int) -> float:
        """When frame ``k`` leaves: at the playout tick its first sample falls in (its start where frames start on
        the 20 ms ticks, as at 25 fps; up to a tick before it at other rates, 30 fps say)."""
        if self._base is None:
            return math.inf
        start = self.clock.frame_start_sample(k)
        return self._base + (start - start % SAMPLES_PER_TICK) / PLAYOUT_RATE_HZ

    def _render_budget_s(self) -> float:
        return max(0.008, 2.0 * self._render_s) + 0.004

    def _worker(self) -> None:
        self.timer.attach()
        self.priority.apply_to_render_worker(self.log, "render worker")
        while True:
            with self._cond:
                job = None
                while job is None:
                    if self._stopping:
                        return
                    try:
                        self._assign_ahead()
                    except Exception:  # a planning bug must not stop the stream
                        self.log.exception("slot assignment failed")
                    job = self._next_job()
                    if job is None:
                        self.timer.wait(self._cond, self._wait_timeout())
            self._render(job)

    def _wait_timeout(self) -> float:
        if self._current is not None and self._base is not None:
            t = self._deadline(self._next_assign) - self._render_budget_s() - self.timer.now()
            return min(max(t, 0.001), 0.02)
        return 0.02

    def _next_job(self) -> RenderJob | None:
        while self._jobs:
            job = self._jobs.popleft()
            if self._slots.get(job.slot.index) is job.slot and job.slot.index > self._emitted:
                return job
        return None

    def _render(self, job: RenderJob) -> None:
        if self.render_error is not None:  # the renderer is gone: slots keep their place, the last frame is held
            return
        slot = job.slot
        try:
            # yuv420p, converted by the renderer (OpenCV): the video encoders take it as it is
            t0 = slot.render_started_at = self.timer.now()
            frame, row = self.renderer.frame(job.clip, job.frame, job.mouth_of, job.row)
            dt = self.timer.now() - t0  # on the session's time (virtual in tests: a simulated stall counts)
            self._render_s = 0.8 * self._render_s + 0.2 * dt
            self.stats.frame_rendered(dt)
            with self._cond:
                if self._slots.get(slot.index) is slot:
                    if row is not None:
                        slot.state = _with_mouth(slot.state, row)
                    slot.image = frame
                    if slot.kind == "speech":
                        self.cushion.margin(self._deadline(slot.index) - self.timer.now(), _cushion_extra(slot))
                    if slot.index == 0:
                        self.first_frame_ready.set()
                elif slot.kind == "speech" and slot.index <= self._emitted:  # shown without it: an underrun
                    late = self.timer.now() - self._deadline(slot.index)
                    self.stats.late_speech_rendered(late)
                    self.cushion.margin(-late, _cushion_extra(slot))
        except RendererDied as exc:
            self._renderer_died(str(exc))
        except Exception:
            self.log.exception("rendering failed; the last frame is held")

    @property
    def render_error(self) -> str | None:
        """Why the session renders no more (its render process died), or None."""
        return self.stats.error

    def _renderer_died(self, message: str) -> None:
        """The render process is gone: say so once (log, stats, ``on_render_failed``, which the session sends the
        ingest client as an ``error`` event); the clock, the audio and the other sessions carry on, with the last
        frame held."""
        if self._stopping or self.render_error is not None:
            return
        self.stats.error = f"{message}; the video holds its last frame. Delete the session and create a new one"
        self.log.error("%s", self.render_error)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.on_render_failed, self.render_error)

    def _assign_ahead(self) -> None:
        """Assign content to the slots in the look-ahead window (called with the lock held)."""
        now = self.timer.now()
        self._next_assign = max(self._next_assign, self._emitted + 1)
        head = self._queue[0] if self._queue else None
        if self._current is None and head is not None and self._ready_to_start(head):
            # speech preempts idle slots that are assigned but not shown yet
            s0 = self._emitted + 1
            lead = self._start_lead_s()
            while self._deadline(s0) - now < lead:
                s0 += 1
            committed = [i for i, s in self._slots.items() if s.kind != "idle" and i > self._emitted]
            if committed:
                s0 = max(s0, max(committed) + 1)
            self._start_sooner(s0, now, lead)
            if s0 < self._next_assign:
                for i in [i for i, s in self._slots.items() if i >= s0]:
                    del self._slots[i]
                self._next_assign = s0
        while self._next_assign <= self._emitted + LOOKAHEAD_FRAMES:
            k = self._next_assign
            force = self._deadline(k) - now < self._render_budget_s()
            slot = self._assign(k, force)
            if slot is None:
                break
            self._next_assign = k + 1

    def _start_lead_s(self) -> float:
        """How far ahead of its deadline an utterance's first frame is assigned: the render budget, plus the start
        cushion's extra (``StartCushion.audio_s``)."""
        return self._render_budget_s() + self.cushion.extra_s

    def _start_sooner(self, s0: int, now: float, lead: float) -> None:
        """Speech is to start on slot ``s0``, the first whose deadline is at least ``lead`` away: where that deadline
        is whole audio ticks further away than needed, move it (and every later frame) that many ticks
        sooner, so the speech waits for the next audio tick it can make, not for the next frame of the grid. The idle
        frame before it, on screen or still to come, is shown that much shorter (``_emit_frame`` takes back the
        silence it queued). Nothing moves where that frame is not idle, or where a playout tick has already looked
        for frames beyond the new start."""
        p = s0 - 1
        if p < self._emitted or s0 <= self.clock.latest_shift_frame:
            return
        prev_kind = self._emitted_kind if p == self._emitted else getattr(self._slots.get(p), "kind", None)
        if prev_kind != "idle":
            return
        start = self.clock.frame_start_sample(s0)
        spare = self._deadline(s0) - now - lead
        ticks = min(int(spare * PLAYOUT_RATE_HZ) // SAMPLES_PER_TICK,
                    (self.clock.frame_samples(p) - 1) // SAMPLES_PER_TICK,
                    (start - self._ticked_to) // SAMPLES_PER_TICK)
        if ticks > 0:
            self.clock.shift_from(s0, ticks * SAMPLES_PER_TICK)
            self.stats.sooner_starts += 1
            self.stats.sooner_start_ms += ticks * SAMPLES_PER_TICK * 1000.0 / PLAYOUT_RATE_HZ

    def _ready_to_start(self, u: Utterance) -> bool:
        if not u.frames_ready:
            return u.ended  # an utterance too short for one frame is retired at once
        need = (self.clock.frame_duration_s + MOUTH_LOOKAHEAD_S + self.cushion.audio_s) * PLAYOUT_RATE_HZ
        return u.ended or len(u.audio48) >= need

    def _stream_to_director(self, committed_s: float) -> None:
        """Tell the director what is known of the utterance being played (its audio so far, words, end), so it plans
        the utterance as the offline director would; when its new plan changes keyframes not used yet, they are
        dropped from the time the director says (``committed_s`` or later) and it goes on from the state planned
        there."""
        u = self._current
        stream = getattr(self.director, "stream", None)
        if stream is None or u is None or u.start_slot is None:
            return
        busy = self.machine_busy is not None and self.machine_busy()
        cut = stream(u.seq, u.start_slot / self.fps, u.audio16[:u.n16], u.words, u.ended, committed_s, busy)
        if cut is not None:
            self._cut_plan(round(cut * self.fps))

    def _extend_plan(self, until_s: float) -> None:
        guard = 0
        while self._plan.end_s < until_s and guard < 50:
            guard += 1
            t0 = self._plan.end_s
            audio = words = None
            horizon = PLAN_HORIZON_S if self._speaking else IDLE_PLAN_HORIZON_S
            u = self._current
            if u is not None and u.start_slot is not None:
                u_t0 = u.start_slot / self.fps
                audio = u.audio16_from(t0 - u_t0, horizon)
                words = [type(w)(w.text, w.start_s + u_t0, w.end_s + u_t0) for w in u.words] or None
            plan = self.director.plan_next(t0, horizon, self._speaking, audio, words)
            keyframes = [kf for kf in plan.keyframes if kf.time_s > t0]
            if not keyframes:
                keyframes = [Keyframe(t0 + horizon, self._plan.keyframes[-1].state)]
            self._plan.add(keyframes, plan.blink_times_s)

    def _set_speaking(self, k: int, speaking: bool) -> None:
        self._speaking = speaking
        self._replan_from(k)

    def _replan_from(self, k: int) -> None:
        """Drop the plan from frame ``k`` on (not assigned yet) and have the director plan again from the state the
        plan shows there (a change of mode or instruction acts now, not at the plan's end)."""
        if getattr(self.director, "rewind", None) is None or k / self.fps >= self._plan.end_s - 1e-9:
            return
        self._cut_plan(k)

    def _cut_plan(self, k: int) -> None:
        """Drop the plan's keyframes from frame ``k`` on and rewind the director to the state the plan shows there."""
        t = k / self.fps
        state = self._plan.state_at_frame(k)
        if t < self._plan.end_s - 1e-9:
            self._plan.cut_after(t, state, keep_blinks=True)  # the director has planned its blinks past them already
        self.director.rewind(t, state)

    def _assign(self, k: int, force: bool) -> Slot | None:
        """Decide what slot ``k`` shows; ``None`` means wait for audio (only when not ``force``)."""
        n = self.clock.frame_samples(k)
        u = self._current
        if u is None and self._queue and self._ready_to_start(self._queue[0]):
            u = self._current = self._queue[0]
            u.start_slot = k
            u.cushion_extra_s = self.cushion.extra_s
            self._set_speaking(k, True)
        if u is not None:
            j = u.next_frame
            if j < u.frames_ready and (len(u.audio48) >= n or u.ended):
                if u.gap_run and not u.ended:
                    # the speech paused for lack of audio and goes on: the sender was late by about the pause
                    self.cushion.margin(-u.gap_run * self.clock.frame_duration_s, u.cushion_extra_s)
                u.gap_run = 0
                audio = u.audio48.take(n)
                real = len(audio)
                if len(audio) < n:
                    audio = np.concatenate([audio, np.zeros(n - len(audio), np.float32)])
                last = u.ended and j == u.frames_ready - 1
                u.next_frame += 1
                row = np.zeros(3, np.float32)  # the renderer puts the analysed row in
                if last:
                    self._finish_assigning(u)
                slot = self._make_slot(k, "speech", row, audio, u, j, last)
                slot.speech_samples = real
                return slot
            if u.ended and j >= u.frames_ready:
                self._finish_assigning(u)
                return self._assign(k, force)
            if not force:
                return None
            self.stats.starved_ms += self.clock.frame_duration_s * 1000.0
            u.gap_run += 1
            return self._make_slot(k, "gap", np.zeros(3, np.float32), None, u, -1, False)
        if self._speaking:
            self._set_speaking(k, False)
        return self._make_slot(k, "idle", np.zeros(3, np.float32), None, None, -1, False)

    def _finish_assigning(self, u: Utterance) -> None:
        self.cushion.update()
        self.stats.start_cushion_ms = round(self.cushion.seconds * 1000.0, 1)
        leftover = u.audio48.clear()  # resampler rounding beyond the last frame (a few samples)
        self._dropped48 += leftover
        if self._queue and self._queue[0] is u:
            self._queue.popleft()
        self._current = None

    def _make_slot(self, k: int, kind: str, row: np.ndarray, audio: np.ndarray | None, u: Utterance | None,
                   j: int, last: bool) -> Slot:
        t, t1 = k / self.fps, (k + 1) / self.fps
        self._stream_to_director(t)
        self._extend_plan(t1 + PLAN_MARGIN_S)
        self._plan.prune_before(t - 1.0)
        if self.renderer.prepares:  # a generator that makes a whole sub-clip at once starts on the planned ones
            for clip in self._plan.new_subclips(t, self.seed):
                self.renderer.prepare(clip)
        prev = self._last_assigned
        if (kind == "idle" and self.machine_busy is not None and prev is not None and prev.index == k - 1
                and prev.kind == "idle" and not prev.hold and not self._plan.blinks_near(t, t1 + HOLD_BLINK_GUARD_S)
                and self.machine_busy()):
            slot = Slot(index=k, kind=kind, state=prev.state, hold=True, assigned_at=self.timer.now())
            self._slots[k] = self._last_assigned = slot
            return slot
        clip, i = self._plan.subclip(k, self.seed)
        state = _with_mouth(clip_state(clip, i), row)
        speech = kind == "speech" and u is not None and j >= 0  # the renderer puts in the analysed mouth row
        slot = Slot(index=k, kind=kind, state=state, audio=audio, utterance=u, utt_frame=j, last_of_utterance=last,
                    assigned_at=self.timer.now())
        self._slots[k] = self._last_assigned = slot
        self._jobs.append(RenderJob(clip, i, slot, (u.seq, j) if speech else None,
                                    None if speech else np.asarray(row, np.float32)))
        return slot

    # ------------------------------------------------------------------------------------------ playout loop

    async def _playout(self) -> None:
        try:
            while not self._stopping:
                assert self._base is not None
                s = self._tick * SAMPLES_PER_TICK
                target = self._base + s / PLAYOUT_RATE_HZ
                delay = target - self.timer.now()
                if delay > 0:
                    await self.timer.sleep(delay)
                    self.stats.tick_run(self.timer.now() - target)
                else:
                    self.stats.tick_run(-delay)
                if delay < -MAX_LATE_S:
                    self.stats.clock_slips += 1
                    with self._cond:
                        self._base = self.timer.now() - s / PLAYOUT_RATE_HZ
                self._run_tick(s)
                self._tick += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("playout loop failed")
            raise

    def _run_tick(self, s: int) -> None:
        end = s + SAMPLES_PER_TICK
        # activate waiting sinks on a frame that starts exactly on this tick (both tracks start together)
        if self._pending_sinks:
            aligned = self.clock.frame_start_sample(self._next_frame) == s
            still = []
            for sink, since in self._pending_sinks:
                if aligned or self._tick - since > 50:
                    self._sinks.append(sink)
                else:
                    still.append((sink, since))
            self._pending_sinks = still
        with self._cond:  # which frames this tick emits, decided where ``_start_sooner`` sees it
            self._ticked_to = end
            first = self._next_frame
            while self.clock.frame_start_sample(self._next_frame) < end:
                self._next_frame += 1
        for k in range(first, self._next_frame):
            self._emit_frame(k)
        samples = self._fifo.take(SAMPLES_PER_TICK)
        now = self.timer.now()
        if self._silence_mark is not None:
            self.stats.interrupt_to_silence_ms.append((now - self._silence_mark) * 1000.0)
            self._silence_mark = None
        if self._sinks:
            pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = PLAYOUT_RATE_HZ
            frame.pts = s
            frame.time_base = AUDIO_TIME_BASE
            for sink in self._sinks:
                sink.on_audio(frame)
        while self._finishes and self._finishes[0][0] <= end:
            _, u = self._finishes.pop(0)
            self.on_playback_finished(PlaybackEnd(u.id, round(u.samples_out48 * 1000.0 / PLAYOUT_RATE_HZ, 1), False))

    def _emit_frame(self, k: int) -> None:
        with self._cond:
            slot = self._slots.pop(k, None)
            if slot is None:  # the worker has not even assigned it: decide now, show the last frame
                self._next_assign = max(self._next_assign, k)
                slot = self._assign(k, True)
                self._slots.pop(k, None)
                self._next_assign = max(self._next_assign, k + 1)
            self._emitted = k
            self._emitted_kind = slot.kind
            self._out48 += slot.speech_samples
            self._cond.notify_all()
        now = self.timer.now()
        image = slot.image
        frame_ms = self.clock.frame_duration_s * 1000.0
        if slot.hold:
            self.stats.idle_frames_held += 1
            image = self._last_image
        elif image is None:
            if slot.kind == "speech":
                self.stats.underrun_ms += frame_ms
                started = slot.render_started_at
                self.stats.late_speech_frame(self._deadline(k) - slot.assigned_at,
                                             None if started is None else started - slot.assigned_at)
                if started is None:  # never rendered: a frame late (a started render reports its own lateness)
                    with self._cond:
                        self.cushion.margin(-self.clock.frame_duration_s, _cushion_extra(slot))
            else:
                self.stats.late_idle_frames += 1
            image = self._last_image
        if image is not self._last_image or self._last_image is None:
            self._last_state = slot.state  # the state of the picture on screen (a held picture keeps its own)
        self._last_image = image
        start = self.clock.frame_start_sample(k)
        n = self.clock.frame_samples(k)
        if self._fifo_written > start:  # the idle frame before was made shorter after its silence was queued
            self._fifo.drop_last(self._fifo_written - start)
            self._fifo_written = start
        # the audio queued so far ends exactly where this frame starts: that is the pairing invariant
        drift_ms = abs(self._fifo_written - start) * 1000.0 / PLAYOUT_RATE_HZ
        drift_ms = max(drift_ms, abs(self.clock.frame_pts(k) / 90.0 - start * 1000.0 / PLAYOUT_RATE_HZ))
        self.stats.av_drift_ms = max(self.stats.av_drift_ms, drift_ms)
        audio = slot.audio if slot.audio is not None else np.zeros(n, np.float32)
        self._fifo.push(audio)
        self._fifo_written += len(audio)
        self.stats.frame_out()
        if self._sinks and image is not None:
            vf = video_frame(image, self._frame_pool)
            vf.pts = self.clock.frame_pts(k)
            vf.time_base = VIDEO_TIME_BASE
            for sink in self._sinks:
                sink.on_video(vf)
        u = slot.utterance
        if slot.kind == "speech" and u is not None:
            u.samples_out48 += slot.speech_samples
            self.stats.speech_played_ms += slot.speech_samples * 1000.0 / PLAYOUT_RATE_HZ
            if slot.utt_frame == 0:
                self.stats.avatar_first_frame_ms.append((now - u.received_at) * 1000.0)
                self.on_playback_started(u.id)
            if slot.last_of_utterance:
                self._finishes.append((start + n, u))
        if self._listening_mark is not None and k >= self._listening_mark[1]:
            self.stats.interrupt_to_listening_ms.append((now - self._listening_mark[0]) * 1000.0)
            self._listening_mark = None
        if self._space is not None and not self.over_budget():
            self._space.set()

    def _cut_fifo(self) -> None:
        """Replace queued speech audio with silence, fading out the first few milliseconds."""
        n = len(self._fifo)
        if n == 0:
            return
        queued = self._fifo.take(n)
        fade = min(n, int(FADE_OUT_S * PLAYOUT_RATE_HZ))
        out = np.zeros(n, np.float32)
        out[:fade] = queued[:fade] * np.linspace(1.0, 0.0, fade, dtype=np.float32)
        self._fifo.push(out)
