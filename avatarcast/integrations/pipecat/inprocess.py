"""The avatar engine inside the Pipecat process: a live session's scheduler, director and render process.

It is what ``avatarcast serve`` runs for one session, without the server: the TTS audio goes to the session's
``IngestBacklog`` (which keeps the scheduler's look-ahead bounded and keeps alignment and instructions in order
with the audio), and the scheduler's playout loop, on Pipecat's event loop, hands every frame and every 20 ms of
audio to the service from its one media clock, the way it hands them to WebRTC viewers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import av

from avatarcast.audio.alignment import phones_from_words
from avatarcast.audio.visemes import StreamingMouthAnalyzer
from avatarcast.core.errors import StateError
from avatarcast.direction.director import LiveDirector
from avatarcast.face.avatar import Avatar
from avatarcast.face.loading import load_avatar
from avatarcast.generators.parametric.generator import ParametricGenerator
from avatarcast.integrations.pipecat.media import (
    AudioOut,
    MediaHandler,
    SpeechFinished,
    SpeechStarted,
    UtteranceLedger,
    VideoOut,
)
from avatarcast.live.ingest import SCHEDULER_AHEAD_MS, IngestBacklog
from avatarcast.live.mediaclock import PLAYOUT_RATE_HZ, VIDEO_CLOCK_RATE_HZ
from avatarcast.live.renderer import GeneratorFactory, ProcessRenderer
from avatarcast.live.scheduler import MOUTH_LOOKAHEAD_S, PlaybackEnd, Scheduler
from avatarcast.live.session import check_fps

log = logging.getLogger(__name__)

MAX_BUFFER_MS = 60000.0
"""Speech held ahead of playback (the scheduler's look-ahead plus the backlog), as in the server's default."""


class InProcessAvatar:
    """A live avatar session run in this process. ``avatar``: a portrait image or prepared avatar folder (``None``:
    the bundled portrait), or an ``Avatar`` already loaded (``avatarcast.face.loading.load_avatar``).
    ``render_process``: render in a child process of its own (the server's default; False renders in a thread of
    this process). ``start_cushion_ms``: a fixed start cushion (``None`` adapts it)."""

    def __init__(self, avatar: Any = None, *, size: tuple[int, int] = (512, 512), fps: float = 25.0,
                 seed: int = 0, instruction: str | None = None, render_process: bool = True,
                 start_cushion_ms: float | None = None, max_buffer_ms: float = MAX_BUFFER_MS,
                 name: str = "pipecat") -> None:
        self.avatar = avatar
        self.width, self.height = int(size[0]), int(size[1])
        self.fps = check_fps(fps)
        self.seed = seed
        self.instruction = instruction
        self.render_process = render_process
        self.start_cushion_ms = start_cushion_ms
        self.max_buffer_ms = float(max_buffer_ms)
        self.name = name
        self.scheduler: Scheduler | None = None
        self._backlog: IngestBacklog | None = None
        self._on_media: MediaHandler | None = None
        self._ledger = UtteranceLedger()
        self._last_video_sample = 0
        self._rate_hz: int | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def _build(self) -> Scheduler:
        avatar = self.avatar if isinstance(self.avatar, Avatar) else load_avatar(self.avatar)
        size = (self.width, self.height)
        generator = renderer = None
        if self.render_process:
            renderer = ProcessRenderer(GeneratorFactory(avatar, size, self.seed, self.fps), name=self.name)
        else:
            generator = ParametricGenerator(avatar, size=size, seed=self.seed, fps=self.fps)
        cushion_s = None if self.start_cushion_ms is None else self.start_cushion_ms / 1000.0
        return Scheduler(generator, LiveDirector(instruction=self.instruction, seed=self.seed), self.fps,
                         StreamingMouthAnalyzer(self.fps, lookahead_s=MOUTH_LOOKAHEAD_S), seed=self.seed,
                         max_buffer_ms=min(self.max_buffer_ms, SCHEDULER_AHEAD_MS), name=self.name,
                         renderer=renderer, on_playback_started=self._started, on_playback_finished=self._finished,
                         on_render_failed=self._render_failed, start_cushion_s=cushion_s)

    async def start(self, on_media: MediaHandler) -> None:
        """Prepare the avatar, start the render process and the media clock; from then on ``on_media`` gets every
        frame and every audio tick, in order, on this event loop."""
        self._on_media = on_media
        loop = asyncio.get_running_loop()
        scheduler = await loop.run_in_executor(None, self._build)  # avatar preparation is CPU-bound
        await scheduler.start()
        self.scheduler = scheduler
        self._backlog = IngestBacklog(scheduler, self.max_buffer_ms)
        scheduler.add_sink(self)

    async def stop(self) -> None:
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is None:
            return
        scheduler.remove_sink(self)
        if self._backlog is not None:
            self._backlog.close()
        await scheduler.stop()

    @property
    def stats(self) -> dict[str, Any]:
        """The session's live metrics (the server's ``stats``)."""
        return self.scheduler.stats.snapshot() if self.scheduler is not None else {}

    # ------------------------------------------------------------------------------------------ speech in

    def _require(self) -> tuple[Scheduler, IngestBacklog]:
        if self.scheduler is None or self._backlog is None:
            raise StateError("the avatar is not running: call start() first (the service does at pipeline start)")
        return self.scheduler, self._backlog

    async def push_audio(self, pcm: bytes, rate_hz: int) -> int:
        scheduler, backlog = self._require()
        if self._ledger.open is not None and rate_hz != self._rate_hz:
            await self.end_speech()  # the scheduler would close it too; the ledger must know
        self._rate_hz = rate_hz
        n = self._ledger.audio()
        backlog.push_audio(pcm, rate_hz)
        return n

    async def add_words(self, words: list) -> None:
        scheduler, backlog = self._require()
        phones = phones_from_words(words)
        backlog.control(lambda: scheduler.add_words(words, phones))

    async def end_speech(self) -> None:
        scheduler, backlog = self._require()
        if self._ledger.open is not None:
            self._ledger.end()
            backlog.control(scheduler.end_utterance)

    async def interrupt(self) -> None:
        scheduler, backlog = self._require()
        events = backlog.interrupt()  # drops the backlog's speech and the scheduler's at once
        positions = [e.position_ms for e in events]
        for i, n in enumerate(self._ledger.cut_all()):
            self._emit(SpeechFinished(n, positions[i] if i < len(positions) else 0.0, True))

    async def set_instruction(self, text: str | None) -> None:
        scheduler, backlog = self._require()
        backlog.control(lambda: scheduler.set_instruction(text), keep_on_interrupt=True)

    # ------------------------------------------------------------------------------------------ media out

    def _emit(self, message: object) -> None:
        if self._on_media is not None:
            self._on_media(message)

    def on_video(self, frame: av.VideoFrame) -> None:
        """Scheduler sink: a frame leaves the playout loop (copied: the scheduler reuses its frames)."""
        sample = round(frame.pts * PLAYOUT_RATE_HZ / VIDEO_CLOCK_RATE_HZ)
        self._last_video_sample = sample
        self._emit(VideoOut(frame.to_ndarray(), frame.width, frame.height, sample))

    def on_audio(self, frame: av.AudioFrame) -> None:
        self._emit(AudioOut(frame.to_ndarray().reshape(-1).copy(), int(frame.pts)))

    # the scheduler's callbacks: right after the first frame of an utterance, right after its last audio, and once
    # if the render process dies
    def _started(self, utterance_id: str) -> None:
        n = self._ledger.started()
        if n is not None:
            self._emit(SpeechStarted(n, self._last_video_sample))

    def _finished(self, end: PlaybackEnd) -> None:
        if not end.interrupted:
            n = self._ledger.finished()
            if n is not None:
                self._emit(SpeechFinished(n, end.position_ms, False))

    def _render_failed(self, message: str) -> None:
        log.error("avatar session: %s", message)
