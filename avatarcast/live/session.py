"""A live session: one avatar, its settings and tokens, its scheduler, its viewers and its event subscribers."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from avatarcast.audio.visemes import StreamingMouthAnalyzer
from avatarcast.core.errors import AvatarcastError, InputError
from avatarcast.core.realtime import WorkerPriority
from avatarcast.direction.director import LiveDirector, RuleDirector
from avatarcast.direction.llm import LLMDirector, LLMPlanner
from avatarcast.face.avatar import portrait_image
from avatarcast.face.loading import load_avatar
from avatarcast.generators.factory import check_generator
from avatarcast.live.ingest import SCHEDULER_AHEAD_MS, IngestBacklog
from avatarcast.live.outputs.fanout import fanout_for
from avatarcast.live.outputs.whep import WhepViewer, close_all
from avatarcast.live.protocol import ErrorCode, ErrorEvent, PlaybackFinishedEvent, PlaybackStartedEvent, StatsEvent
from avatarcast.live.renderer import GeneratorFactory, ProcessRenderer
from avatarcast.live.scheduler import MOUTH_LOOKAHEAD_S, PlaybackEnd, Scheduler

log = logging.getLogger(__name__)

EVENT_QUEUE_SIZE = 256
"""Events a slow ingest client may leave unread before the oldest stats events are dropped."""
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
MIN_FPS, MAX_FPS = 1.0, 60.0


def parse_size(text: str) -> tuple[int, int]:
    """``"512x512"`` -> ``(512, 512)`` (width, height)."""
    m = SIZE_RE.match(str(text))
    if not m:
        raise InputError(f"size {text!r} is not WIDTHxHEIGHT (for example 512x512)")
    w, h = int(m.group(1)), int(m.group(2))
    if not (16 <= w <= 1920 and 16 <= h <= 1920) or w % 2 or h % 2:
        raise InputError(f"size {w}x{h} is out of range: use even sizes from 16 to 1920 pixels per side")
    return w, h


def check_fps(fps: float) -> float:
    fps = float(fps)
    if not (MIN_FPS <= fps <= MAX_FPS):
        raise InputError(f"fps {fps} is out of range: use {MIN_FPS:g} to {MAX_FPS:g}")
    return fps


@dataclass(frozen=True)
class LiveGenerator:
    """What renders live sessions' sub-clips: ``parametric`` (the default: a portrait's parametric generator, a video
    avatar's own footage) or ``neural`` (a local diffusers model folder, ``model_dir``, with ``neural_options`` for
    ``NeuralGenerator``), which a session uses only when it renders faster than real time on the machine."""

    name: str = "parametric"
    model_dir: str | None = None
    neural_options: dict | None = None

    def __post_init__(self) -> None:
        check_generator(self.name, self.model_dir)


@dataclass(frozen=True)
class SessionSettings:
    avatar: str | None = None  # portrait image or prepared avatar folder; None = the bundled portrait
    width: int = 512
    height: int = 512
    fps: float = 25.0
    public: bool = False  # viewing needs no token
    seed: int = 0
    instruction: str | None = None


def new_token() -> str:
    return secrets.token_urlsafe(18)


def finished_event(end: PlaybackEnd) -> PlaybackFinishedEvent:
    """The protocol's ``playback.finished`` event for an utterance the scheduler stopped playing."""
    return PlaybackFinishedEvent(utterance_id=end.utterance_id, position_ms=end.position_ms,
                                 interrupted=end.interrupted)


def send_playback_events(scheduler: Scheduler, emit: Callable[[Any], None]) -> None:
    """Pass the scheduler's playback callbacks to ``emit`` as the protocol's events: ``playback.started``,
    ``playback.finished`` and the ``render_failed`` error."""
    scheduler.on_playback_started = lambda utterance_id: emit(PlaybackStartedEvent(utterance_id=utterance_id))
    scheduler.on_playback_finished = lambda end: emit(finished_event(end))
    scheduler.on_render_failed = lambda message: emit(ErrorEvent(code=ErrorCode.RENDER_FAILED, message=message))


class Session:
    """Owns the scheduler and everything attached to it; created and started by ``SessionManager``."""

    def __init__(self, session_id: str, settings: SessionSettings, scheduler: Scheduler, *,
                 ingest_token: str | None = None, viewer_token: str | None = None,
                 max_buffer_ms: float | None = None) -> None:
        self.id = session_id
        self.settings = settings
        self.scheduler = scheduler
        # speech beyond what the scheduler holds waits here (see ingest.py); both together hold max_buffer_ms
        self.backlog = IngestBacklog(scheduler, scheduler.max_buffer_ms if max_buffer_ms is None else max_buffer_ms)
        self.ingest_token = ingest_token or new_token()
        self.viewer_token = viewer_token or new_token()
        self.created_at = time.time()
        self.viewers: dict[str, WhepViewer] = {}
        self.ingest: Any = None  # the open ingest connection (ingest.IngestConnection)
        self.ingest_lost = False  # the last ingest connection ended without a close (see ingest.take_over)
        self.drop_until_start = False  # after an interrupt over REST: audio already on its way is not played
        self.closed = False
        self.extra_sinks: list[Any] = []  # RTMP outputs
        self.whip: Any = None  # the WHIP publisher (whip.WhipPublisher), if the session publishes to one
        self._subscribers: set[asyncio.Queue] = set()
        send_playback_events(scheduler, self.emit)
        self.log = logging.LoggerAdapter(log, {"session": session_id})

    @property
    def ingest_active(self) -> bool:
        return self.ingest is not None

    # ------------------------------------------------------------------------------------------ events

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=EVENT_QUEUE_SIZE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def emit(self, event: Any) -> None:
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    def interrupt(self, out_of_band: bool = False) -> list[Any]:
        """Barge-in: drop the queued speech (backlog and scheduler) and go to the listening pose. ``out_of_band``
        (``POST /v1/sessions/{id}/interrupt``): also drop the ingest's audio until its next ``start`` (audio sent
        before the interrupt may still be in the socket, unread). Emits and returns the ``playback.finished``
        events."""
        if out_of_band:
            self.drop_until_start = True
        events = [finished_event(end) for end in self.backlog.interrupt()]
        for event in events:
            self.emit(event)
        return events

    def stats(self) -> dict[str, Any]:
        snap = self.scheduler.stats.snapshot()
        snap["buffered_ms"] = round(self.backlog.buffered_ms(), 1)
        snap["ingest_backlog_ms"] = round(self.backlog.backlog_ms(), 1)
        snap["viewers"] = len(self.viewers)
        snap["encoding"] = fanout_for(self.scheduler).info()  # WebRTC: encoded once per codec, shared by viewers
        snap["ingest_connected"] = self.ingest_active
        info = getattr(self.scheduler.director, "info", None)
        if info is not None:
            snap["director"] = info()
        if self.whip is not None:
            snap["whip"] = self.whip.info()
        return snap

    def stats_event(self) -> StatsEvent:
        return StatsEvent(session_id=self.id, **self.stats())

    # ------------------------------------------------------------------------------------------ lifecycle

    def info(self, base_url: str = "", with_tokens: bool = False) -> dict[str, Any]:
        s = self.settings
        view_q = "" if s.public else f"?token={self.viewer_token}"
        ws_base = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        out: dict[str, Any] = {
            "id": self.id,
            "avatar": s.avatar or "default",
            "size": f"{s.width}x{s.height}",
            "fps": s.fps,
            "public": s.public,
            "created_at": self.created_at,
            "viewers": len(self.viewers),
            "ingest_connected": self.ingest_active,
            "render": self.scheduler.renderer.mode,  # "process" (a child process of its own) or "thread"
            "error": self.scheduler.render_error,
            "urls": {
                "view": f"{base_url}/view/{self.id}{view_q}",
                "ingest": f"{ws_base}/v1/sessions/{self.id}/ingest",
                "whep": f"{base_url}/v1/sessions/{self.id}/whep",
                "stats": f"{base_url}/v1/sessions/{self.id}/stats",
            },
        }
        if self.whip is not None:
            out["whip"] = self.whip.info()
        if with_tokens:
            out["ingest_token"] = self.ingest_token
            out["viewer_token"] = self.viewer_token
        return out

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.backlog.close()
        await close_all(list(self.viewers.values()))
        self.viewers.clear()
        if self.whip is not None:
            await self.whip.close()  # DELETE of the WHIP session
        for sink in self.extra_sinks:
            try:
                sink.close()
            except Exception:
                self.log.exception("closing an output failed")
        await self.scheduler.stop()


class SessionManager:
    """Creates sessions (loading and caching avatars off the event loop) and enforces the session limit."""

    def __init__(self, max_sessions: int, max_buffer_ms: float, render_processes: bool = True,
                 machine_busy: Callable[[], bool] | None = None, start_cushion_s: float | None = None,
                 llm: Any = None, priority: WorkerPriority = WorkerPriority(),
                 generator: "LiveGenerator | None" = None) -> None:
        self.max_sessions = max_sessions
        self.max_buffer_ms = max_buffer_ms
        self.render_processes = render_processes  # each session renders in a child process of its own
        self.machine_busy = machine_busy  # while True, sessions hold every other idle frame (see CpuLoad)
        self.start_cushion_s = start_cushion_s  # a fixed start cushion; None: each session adapts its own
        self.llm = llm  # an LLMConfig: each session's live director also asks this model (LiveDirector's llm)
        self.priority = priority  # how the sessions' render and encode workers run (realtime.py)
        self.generator = generator or LiveGenerator()  # what renders the sessions' sub-clips
        self.sessions: dict[str, Session] = {}
        self._avatars: dict[str, Any] = {}
        self._creating = 0
        self._lock = asyncio.Lock()

    def _load_avatar(self, path: str | None) -> Any:
        key = path or ""
        if key not in self._avatars:
            self._avatars[key] = load_avatar(path)
        return self._avatars[key]

    def _build_scheduler(self, settings: SessionSettings, name: str) -> Scheduler:
        avatar = self._load_avatar(settings.avatar)
        size = (settings.width, settings.height)
        generator = renderer = None
        if self.render_processes:  # the generator is built in the child (started by Scheduler.start)
            renderer = ProcessRenderer(self._factory(avatar, size, settings), name=name, priority=self.priority)
        else:
            generator = self._factory(avatar, size, settings)()
        director = LiveDirector(instruction=settings.instruction, seed=settings.seed, llm=self._llm_planner(settings))
        analyzer = StreamingMouthAnalyzer(settings.fps, lookahead_s=MOUTH_LOOKAHEAD_S)
        return Scheduler(generator, director, settings.fps, analyzer, seed=settings.seed,
                         max_buffer_ms=min(self.max_buffer_ms, SCHEDULER_AHEAD_MS), name=name, renderer=renderer,
                         machine_busy=self.machine_busy, start_cushion_s=self.start_cushion_s,
                         priority=self.priority)

    def _factory(self, avatar: Any, size: tuple[int, int], settings: SessionSettings) -> GeneratorFactory:
        g = self.generator
        return GeneratorFactory(avatar, size, settings.seed, settings.fps, g.name, g.model_dir, g.neural_options)

    def _llm_planner(self, settings: SessionSettings) -> Any:
        """The session's model planner (None without ``llm``), shown the session's portrait when the configuration
        asks for it and the avatar has one."""
        if self.llm is None:
            return None
        portrait = portrait_image(settings.avatar)
        config = replace(self.llm, portrait=portrait if self.llm.send_portrait else None)
        return LLMPlanner(LLMDirector(config, fallback=RuleDirector(seed=settings.seed)))

    def can_create(self) -> bool:
        return len(self.sessions) + self._creating < self.max_sessions

    async def create(self, settings: SessionSettings, session_id: str | None = None, *,
                     ingest_token: str | None = None, viewer_token: str | None = None) -> Session:
        """Create and start a session; raises ``SessionLimitError`` when the limit is reached."""
        if not self.can_create():
            raise SessionLimitError(self.max_sessions)
        session_id = session_id or secrets.token_hex(6)
        self._creating += 1
        try:
            loop = asyncio.get_running_loop()
            async with self._lock:  # one avatar preparation at a time (it is CPU-bound)
                scheduler = await loop.run_in_executor(None, self._build_scheduler, settings, session_id)
            session = Session(session_id, settings, scheduler, ingest_token=ingest_token,
                              viewer_token=viewer_token, max_buffer_ms=self.max_buffer_ms)
            await scheduler.start()
        finally:
            self._creating -= 1
        self.sessions[session_id] = session
        session.log.info("session %s started: %s %dx%d@%g fps", session_id, settings.avatar or "default avatar",
                         settings.width, settings.height, settings.fps)
        return session

    async def delete(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        await session.close()
        return True

    async def close_all(self) -> None:
        for sid in list(self.sessions):
            await self.delete(sid)

    def describe(self) -> list[dict[str, Any]]:
        return [asdict(s.settings) | {"id": s.id} for s in self.sessions.values()]


class SessionLimitError(AvatarcastError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the server runs at most {limit} sessions; delete one (DELETE /v1/sessions/ID) or start "
                         "the server with a higher `max_sessions`")
        self.limit = limit
