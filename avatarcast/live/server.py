"""The live server: one aiohttp application serving the REST API, the WebSocket ingest, WHEP and the viewer page.

Endpoints (tokens go in ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``):

| method and path | token | what |
| --- | --- | --- |
| ``GET /`` , ``GET /view/{id}`` | viewer (none if public) | the viewer page (also an OBS Browser Source) |
| ``POST /v1/sessions`` | admin | create ``{avatar?, size?, fps?, public?, instruction?}`` -> 201 with tokens and urls |
| ``GET /v1/sessions`` | admin | list sessions |
| ``GET /v1/sessions/{id}`` | admin | one session |
| ``DELETE /v1/sessions/{id}`` | admin | stop and delete |
| ``GET /v1/sessions/{id}/stats`` | any of the session's tokens | live metrics |
| ``GET /v1/sessions/{id}/ingest`` | ingest | WebSocket: speech and control in, events out |
| ``POST /v1/sessions/{id}/whep`` | viewer | SDP offer in, 201 + answer + ``Location`` |
| ``PATCH /v1/sessions/{id}/whep/{viewer}`` | viewer | trickle ICE (``application/trickle-ice-sdpfrag``, ``trickle.py``) |
| ``DELETE /v1/sessions/{id}/whep/{viewer}`` | viewer | end that WebRTC playback |
| ``OPTIONS`` any API path | none | CORS preflight and ``Allow`` (``cors.py``) |
| ``GET /v1/protocol`` | none | protocol version and JSON Schemas of the ingest messages |
| ``GET /healthz`` | none | liveness |

The admin token is accepted wherever a session token is. Errors are JSON ``{"error": {"code", "message"}}``
(plus ``"field"`` when one field of a request body was wrong). A session created with ``whip`` (or the default
session with ``--whip``) also publishes to a WHIP endpoint (``whip.py``).

Hardening (docs/security.md): connections are capped per client address and in total (``connections.py``), idle
and slow connections time out, request bodies are read with a size, time and nesting limit against strict schemas
(``rest.py``), the access log redacts tokens (``logs.py``), the returned URLs come from the configured public URL,
the ingest WebSocket checks ``Origin``, pages carry a CSP (``security.py``), and refused WebSocket upgrades are
closed at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from avatarcast.audio.alignment import Word, phones_from_words
from avatarcast.core.errors import AvatarcastError, RenderFailedError
from avatarcast.core.realtime import WorkerPriority
from avatarcast.live import ingest, studio
from avatarcast.live.connections import IDLE_TIMEOUT_S, ConnectionGuard, GuardedSite, fit_descriptors
from avatarcast.live.cors import CorsPolicy, cors_middleware
from avatarcast.live.demo import run_demo
from avatarcast.live.load import CpuLoad, check_idle_hold_at
from avatarcast.live.logs import RedactingAccessLogger
from avatarcast.live.outputs import trickle, whep
from avatarcast.live.outputs.rtmp import RtmpOutput
from avatarcast.live.outputs.whip import WhipPublisher, WhipTarget, check_whip_token, check_whip_url
from avatarcast.live.protocol import (
    MAX_ALIGNMENT_CHARS,
    MAX_ALIGNMENT_WORDS,
    MAX_JSON_DEPTH,
    MAX_TIME_MS,
    PROTOCOL_VERSION,
    SUPPORTED_SAMPLE_RATES_HZ,
    ClientMessage,
    ErrorCode,
    ServerEvent,
)
from avatarcast.live.rest import CreateSessionRequest, RequestError, parse_model, read_json_body
from avatarcast.live.runtime import freeze_startup_objects
from avatarcast.live.cushion import parse_start_cushion
from avatarcast.live.security import (
    COMMON_HEADERS,
    OriginPolicy,
    check_bind,
    check_public_url,
    page_headers,
    tls_context,
)
from avatarcast.live.session import (
    LiveGenerator,
    Session,
    SessionLimitError,
    SessionManager,
    SessionSettings,
    check_fps,
    parse_size,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_SESSION_ID = "default"
ADMIN_KEY = web.AppKey("avatarcast_server", "LiveServer")
MAX_SDP_BYTES = 64 * 1024
"""Largest WHEP offer accepted (a browser's offer is 3-10 KB)."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = any free port
    avatar: str | None = None
    width: int = 512
    height: int = 512
    fps: float = 25.0
    token: str | None = None  # admin token; generated when None
    public: bool = False  # the default session can be viewed without a token
    max_sessions: int = 4
    max_viewers: int = 50  # per session (serve --max-viewers; every viewer sends the same encoded frames)
    max_message_bytes: int = 256 * 1024
    max_buffer_ms: float = 60000.0  # speech a session holds ahead of playback (scheduler and ingest backlog)
    default_session: bool = True
    instruction: str | None = None
    rtmp_url: str | None = None
    demo: bool = False
    render_processes: bool = True  # each session renders in a child process (False: a thread of this process)
    idle_hold_at: float = 85.0  # machine CPU % from which idle frames are rendered every other frame; 0 = never
    start_cushion_ms: float | None = None  # audio an utterance waits for beyond its first frame; None = adaptive
    # hardening (docs/security.md)
    public_url: str | None = None  # base of the URLs the API returns; None = the bound address
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed on the ingest WebSocket besides same-origin
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_plain_http: bool = False  # serve plain HTTP on a non-loopback address (behind a TLS proxy)
    max_connections: int = 512  # open HTTP/WebSocket connections in total (lowered to fit the descriptor limit)
    max_connections_per_ip: int = 64  # per client address; 0 = no cap (behind a reverse proxy)
    viewer_connect_timeout_s: float = 5.0  # a WHEP viewer whose WebRTC connection is not up by then is removed
    max_pending_viewers_per_ip: int = 2  # WHEP viewers not connected yet, per client address and session
    cors_origins: tuple[str, ...] = ()  # CORS: () = any origin for viewing endpoints, none for the admin API
    whip_url: str | None = None  # the default session also publishes to this WHIP endpoint (whip.py)
    whip_token: str | None = None
    llm: Any = None  # an LLMConfig: every session's live director also asks this model (serve --director llm)
    realtime_priority: int = 0  # sessions' render threads and processes under SCHED_RR at this priority (realtime.py)
    worker_nice: int = 0  # sessions' render processes, render threads and encoders this many nice levels lower
    generator: LiveGenerator = field(default_factory=LiveGenerator)  # what renders the sessions' sub-clips
    extra: dict[str, Any] = field(default_factory=dict)


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers or None)


def _request_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query.get("token")


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


class LiveServer:
    """State shared by the handlers: the configuration, the admin token and the sessions."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.admin_token = config.token or secrets.token_urlsafe(18)
        hold_at = check_idle_hold_at(config.idle_hold_at)
        self.load = CpuLoad(on=hold_at / 100.0) if hold_at > 0 else None
        cushion_ms = parse_start_cushion(config.start_cushion_ms)
        self._viewer_html = (STATIC_DIR / "viewer.html").read_text(encoding="utf-8")
        self._viewer_headers = page_headers(self._viewer_html)
        self.sessions = SessionManager(config.max_sessions, config.max_buffer_ms, config.render_processes,
                                       machine_busy=self.load.busy if self.load is not None else None,
                                       start_cushion_s=None if cushion_ms is None else cushion_ms / 1000.0,
                                       llm=config.llm, generator=config.generator,
                                       priority=WorkerPriority.checked(config.realtime_priority,
                                                                       config.worker_nice))
        self.base_url = check_public_url(config.public_url) if config.public_url else ""
        self.origins = OriginPolicy(self.base_url or None, tuple(config.allowed_origins))
        self.cors = CorsPolicy(tuple(config.cors_origins))
        self._background: set[asyncio.Task] = set()
        self.connections: ConnectionGuard | None = None  # set by run_server

    # ------------------------------------------------------------------------------------------ auth

    def _auth(self, request: web.Request, *allowed: str | None) -> web.Response | None:
        """``None`` when the request carries the admin token or one of ``allowed``; else a 401/403 response."""
        token = _request_token(request)
        if token is None:
            return _error(401, ErrorCode.UNAUTHORIZED,
                          "a token is required: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN",
                          **{"WWW-Authenticate": "Bearer"})
        if _same(token, self.admin_token) or any(_same(token, t) for t in allowed):
            return None
        return _error(403, ErrorCode.FORBIDDEN, "the token is not valid for this resource")

    def _session(self, request: web.Request) -> Session | web.Response:
        sid = request.match_info["id"]
        session = self.sessions.sessions.get(sid)
        if session is None:
            return _error(404, ErrorCode.NOT_FOUND, f"no session {sid!r}; list them with GET /v1/sessions")
        return session

    def _base(self, request: web.Request) -> str:
        """The public base URL (never the request's Host header: a client chooses it)."""
        return self.base_url

    # ------------------------------------------------------------------------------------------ REST

    async def create_session(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            body: CreateSessionRequest = parse_model(CreateSessionRequest, await read_json_body(request))
        except RequestError as exc:
            return exc.response()
        try:
            try:
                w, h = parse_size(body.size if body.size is not None else f"{self.config.width}x{self.config.height}")
            except AvatarcastError as exc:
                return RequestError(400, ErrorCode.INVALID_FIELD, str(exc), "size").response()
            fps = check_fps(body.fps if body.fps is not None else self.config.fps)
            avatar = body.avatar if body.avatar is not None else self.config.avatar
            if avatar is not None and not Path(avatar).exists():
                return RequestError(400, ErrorCode.INVALID_FIELD,
                                    f"avatar {avatar[:200]!r} is not an existing portrait image or prepared avatar "
                                    "folder on the server", "avatar").response()
            settings = SessionSettings(avatar=avatar, width=w, height=h, fps=fps, public=bool(body.public),
                                       seed=body.seed or 0, instruction=body.instruction)
            whip_target = None
            if body.whip is not None:
                try:
                    whip_target = WhipTarget(check_whip_url(body.whip.url), check_whip_token(body.whip.token))
                except AvatarcastError as exc:
                    return RequestError(400, ErrorCode.INVALID_FIELD, str(exc), "whip").response()
            session = await self.sessions.create(settings)
        except SessionLimitError as exc:
            return _error(429, ErrorCode.SESSION_LIMIT, str(exc))
        except RenderFailedError as exc:  # the machine could not start the session's render process
            log.warning("a session could not start: %s", exc)
            return _error(503, ErrorCode.RENDER_FAILED, str(exc))
        except (AvatarcastError, ValueError, TypeError) as exc:
            return _error(400, ErrorCode.INVALID_MESSAGE, str(exc))
        if whip_target is not None:
            _publish(session, whip_target)
        return web.json_response(session.info(self._base(request), with_tokens=True), status=201)

    async def list_sessions(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        base = self._base(request)
        return web.json_response({"sessions": [s.info(base) for s in self.sessions.sessions.values()],
                                  "max_sessions": self.config.max_sessions})

    async def get_session(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        return web.json_response(session.info(self._base(request), with_tokens=True))

    async def delete_session(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        if not await self.sessions.delete(request.match_info["id"]):
            return _error(404, ErrorCode.NOT_FOUND, f"no session {request.match_info['id']!r}")
        return web.json_response({"deleted": request.match_info["id"]})

    async def session_stats(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        if not session.settings.public:
            if (denied := self._auth(request, session.ingest_token, session.viewer_token)) is not None:
                return denied
        return web.json_response({"session_id": session.id, **session.stats()})

    async def interrupt(self, request: web.Request) -> web.Response:
        """Barge-in from outside the ingest connection (a voice-activity detector, a moderator, a client whose
        socket is held by backpressure): the same as an ``interrupt`` message, and the audio sent on the ingest
        before it that the server has not read yet is dropped too, up to the client's next ``start``."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        if (denied := self._auth(request, session.ingest_token)) is not None:
            return denied
        events = session.interrupt(out_of_band=True)
        return web.json_response({
            "session_id": session.id,
            "interrupted": [{"utterance_id": e.utterance_id, "position_ms": e.position_ms} for e in events],
        })

    async def protocol(self, request: web.Request) -> web.Response:
        return web.json_response({
            "protocol_version": PROTOCOL_VERSION,
            "sample_rates": list(SUPPORTED_SAMPLE_RATES_HZ),
            "audio": "binary messages: raw PCM16 little-endian mono at the rate declared in 'start'",
            "max_message_bytes": self.config.max_message_bytes,
            "max_buffer_ms": self.config.max_buffer_ms,
            "limits": {"alignment_words_per_message": MAX_ALIGNMENT_WORDS,
                       "alignment_chars_per_message": MAX_ALIGNMENT_CHARS,
                       "alignment_words_per_utterance": ingest.MAX_WORDS_PER_UTTERANCE,
                       "alignment_time_ms_max": MAX_TIME_MS, "json_depth": MAX_JSON_DEPTH},
            "client_messages": TypeAdapter(ClientMessage).json_schema(),
            "server_events": TypeAdapter(ServerEvent).json_schema(),
        })

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "sessions": len(self.sessions.sessions)})

    # ------------------------------------------------------------------------------------------ ingest

    async def ingest(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        if (denied := self._auth(request, session.ingest_token)) is not None:
            return denied
        origin = request.headers.get("Origin")
        if not self.origins.allows(origin, request.host, request.secure):
            return _error(403, ErrorCode.ORIGIN_NOT_ALLOWED,
                          f"a page from {origin[:200]!r} may not open this WebSocket: serve it from the server's own "
                          "origin or add it to the server's `allowed_origins`")
        if not web.WebSocketResponse(protocols=()).can_prepare(request).ok:
            return _error(400, ErrorCode.INVALID_MESSAGE, "this endpoint is a WebSocket: send a WebSocket upgrade")
        # a new connection with the session's token takes over: the client restarted or reconnected (docs/security.md)
        await ingest.take_over(session)
        return await ingest.serve_ingest(request, session, self.config.max_message_bytes)

    # ------------------------------------------------------------------------------------------ WHEP

    def _viewer_auth(self, request: web.Request, session: Session) -> web.Response | None:
        if session.settings.public:
            return None
        return self._auth(request, session.viewer_token)

    async def whep_offer(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        if (denied := self._viewer_auth(request, session)) is not None:
            return denied
        if request.content_type != "application/sdp":
            return _error(415, "unsupported_media_type", "POST the SDP offer with Content-Type: application/sdp")
        if len(session.viewers) >= self.config.max_viewers:
            return _error(429, ErrorCode.VIEWER_LIMIT,
                          f"this session already has {self.config.max_viewers} viewers, its limit")
        remote = request.remote or "unknown"
        pending = sum(1 for v in session.viewers.values() if not v.connected and v.remote == remote)
        if self.config.max_pending_viewers_per_ip and pending >= self.config.max_pending_viewers_per_ip:
            return _error(429, ErrorCode.VIEWER_LIMIT,
                          f"{pending} WebRTC connections from this address are still being set up; wait for them")
        if request.content_length is not None and request.content_length > MAX_SDP_BYTES:
            return _error(413, ErrorCode.MESSAGE_TOO_LARGE, f"an SDP offer is at most {MAX_SDP_BYTES} bytes")
        try:
            raw = await asyncio.wait_for(request.content.read(MAX_SDP_BYTES + 1), 10.0)
        except asyncio.TimeoutError:
            return _error(408, "body_timeout", "the SDP offer did not arrive in time")
        if len(raw) > MAX_SDP_BYTES:
            return _error(413, ErrorCode.MESSAGE_TOO_LARGE, f"an SDP offer is at most {MAX_SDP_BYTES} bytes")
        offer = raw.decode("utf-8", errors="replace")

        def closed(viewer: whep.WhepViewer) -> None:
            session.viewers.pop(viewer.id, None)

        try:
            viewer = await whep.answer_offer(offer, whep.fanout_for(session.scheduler), closed,
                                             connect_timeout_s=self.config.viewer_connect_timeout_s)
        except whep.WhepError as exc:
            return _error(exc.status, exc.code, exc.message)
        viewer.remote = remote
        session.viewers[viewer.id] = viewer
        # absolute with a configured public URL (that server, even behind a load balancer: docs/scaling.md);
        # otherwise relative to the address the player used
        base = self._base(request) if self.config.public_url else ""
        location = f"{base}/v1/sessions/{session.id}/whep/{viewer.id}"
        return web.Response(status=201, text=viewer.pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": location, **trickle.created_headers(viewer.pc)})

    async def whep_delete(self, request: web.Request) -> web.Response:
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        if (denied := self._viewer_auth(request, session)) is not None:
            return denied
        viewer = session.viewers.pop(request.match_info["viewer"], None)
        if viewer is None:
            return _error(404, ErrorCode.NOT_FOUND, "no such WHEP resource (already ended?)")
        await viewer.close()
        return web.Response(status=200)

    async def whep_patch(self, request: web.Request) -> web.Response:
        """Trickle ICE (candidates from the player); ICE restarts are answered 422 (``trickle.py``)."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        if (denied := self._viewer_auth(request, session)) is not None:
            return denied
        viewer = session.viewers.get(request.match_info["viewer"])
        if viewer is None:
            return _error(404, ErrorCode.NOT_FOUND, "no such WHEP resource (already ended?)")
        return await trickle.patch_response(request, viewer.pc)

    async def whep_get(self, request: web.Request) -> web.Response:
        """WHEP endpoints and resources have no representation: a GET gets 204 (the draft asks for a 2xx)."""
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        if "viewer" in request.match_info and request.match_info["viewer"] not in session.viewers:
            return _error(404, ErrorCode.NOT_FOUND, "no such WHEP resource (already ended?)")
        return web.Response(status=204)

    # ------------------------------------------------------------------------------------------ viewer page

    async def view(self, request: web.Request) -> web.StreamResponse:
        sid = request.match_info.get("id", DEFAULT_SESSION_ID)
        session = self.sessions.sessions.get(sid)
        if session is None:
            return _error(404, ErrorCode.NOT_FOUND, f"no session {sid!r}")
        if (denied := self._viewer_auth(request, session)) is not None:
            return denied
        return web.Response(text=self._viewer_html, content_type="text/html", headers=self._viewer_headers)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def on_startup(self, app: web.Application) -> None:
        whep.use_loopback_candidates(whep.is_loopback_host(self.config.host))
        await asyncio.get_running_loop().run_in_executor(None, _warm_up_pronunciations)
        if self.config.default_session:
            settings = SessionSettings(avatar=self.config.avatar, width=self.config.width,
                                       height=self.config.height, fps=self.config.fps, public=self.config.public,
                                       instruction=self.config.instruction)
            session = await self.sessions.create(settings, DEFAULT_SESSION_ID)
            if self.config.whip_url:
                _publish(session, WhipTarget(self.config.whip_url, self.config.whip_token))
            if self.config.rtmp_url:
                out = RtmpOutput(self.config.rtmp_url, session.settings.width, session.settings.height,
                                 session.settings.fps)
                out.start()
                session.extra_sinks.append(out)
                session.scheduler.add_sink(out)
            if self.config.demo:
                task = asyncio.create_task(run_demo(session))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def on_shutdown(self, app: web.Application) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.sessions.close_all()


def _publish(session: Session, target: WhipTarget) -> None:
    """Start publishing ``session`` to a WHIP endpoint; the session stops it (and DELETEs it) when it ends."""
    publisher = WhipPublisher(target, whep.fanout_for(session.scheduler), name=session.id)
    session.whip = publisher
    publisher.start()


def _warm_up_pronunciations() -> None:
    """Load the pronunciation dictionary off the event loop (the first alignment would otherwise load it there)."""

    phones_from_words([Word("hello", 0.0, 0.3)])


@web.middleware
async def _hardening(request: web.Request, handler: Any) -> web.StreamResponse:
    """Common security headers on every response; a refused WebSocket upgrade (any non-101 answer to one) closes
    its connection at once instead of keeping it open for another request."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
    if not response.prepared:
        for name, value in COMMON_HEADERS.items():
            response.headers.setdefault(name, value)
        if upgrade and response.status != 101:
            response.force_close()
    if isinstance(response, web.HTTPException):
        raise response
    return response


def create_app(config: ServerConfig | None = None) -> web.Application:
    """The aiohttp application (sessions start with the app: use ``run_server`` or an aiohttp runner)."""
    config = config or ServerConfig()
    server = LiveServer(config)
    app = web.Application(client_max_size=max(config.max_message_bytes, 1 << 20),
                          middlewares=[_hardening, cors_middleware(server.cors)])
    app[ADMIN_KEY] = server
    r = app.router
    r.add_get("/", server.view)
    r.add_get("/view/{id}", server.view)
    r.add_static("/static/", STATIC_DIR)
    r.add_get("/healthz", server.health)
    r.add_get("/v1/protocol", server.protocol)
    r.add_post("/v1/sessions", server.create_session)
    r.add_get("/v1/sessions", server.list_sessions)
    r.add_get("/v1/sessions/{id}", server.get_session)
    r.add_delete("/v1/sessions/{id}", server.delete_session)
    r.add_get("/v1/sessions/{id}/stats", server.session_stats)
    r.add_get("/v1/sessions/{id}/ingest", server.ingest)
    r.add_post("/v1/sessions/{id}/interrupt", server.interrupt)
    r.add_post("/v1/sessions/{id}/whep", server.whep_offer)
    r.add_delete("/v1/sessions/{id}/whep/{viewer}", server.whep_delete)
    r.add_patch("/v1/sessions/{id}/whep/{viewer}", server.whep_patch)
    studio.install(app, server)  # /studio: the control page and its API (studio.py)
    r.add_get("/v1/sessions/{id}/whep", server.whep_get)
    r.add_get("/v1/sessions/{id}/whep/{viewer}", server.whep_get)
    app.on_startup.append(server.on_startup)
    app.on_shutdown.append(server.on_shutdown)
    return app


@dataclass
class ServerHandle:
    """A running server: ``port`` is the bound port (useful with ``port=0``); ``close()`` stops it."""

    app: web.Application
    runner: web.AppRunner
    host: str
    port: int

    @property
    def server(self) -> LiveServer:
        return self.app[ADMIN_KEY]

    @property
    def admin_token(self) -> str:
        return self.server.admin_token

    @property
    def base_url(self) -> str:
        """The URL this server was bound to (``https`` with TLS; a wildcard address shown as 127.0.0.1)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        scheme = "https" if self.server.config.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    def session(self, session_id: str = DEFAULT_SESSION_ID) -> Session:
        return self.server.sessions.sessions[session_id]

    async def close(self) -> None:
        await self.runner.cleanup()


async def run_server(config: ServerConfig | None = None) -> ServerHandle:
    """Start the server in the running event loop and return once it accepts connections."""
    config = config or ServerConfig()
    ssl_context = tls_context(config.tls_cert, config.tls_key)
    warning = check_bind(config.host, ssl_context is not None, config.allow_plain_http)
    if warning:
        log.warning("%s", warning)
    connections, viewers = fit_descriptors(config.max_connections, config.max_sessions, config.max_viewers)
    if viewers < config.max_viewers:
        config = replace(config, max_viewers=viewers)
    app = create_app(config)
    # keepalive_timeout closes a connection that has sent no complete request head for that long, trickled
    # headers included (aiohttp arms it at connection start and after each response)
    runner = web.AppRunner(app, handle_signals=False, access_log_class=RedactingAccessLogger,
                           keepalive_timeout=IDLE_TIMEOUT_S)
    await runner.setup()
    guard = ConnectionGuard(connections, config.max_connections_per_ip)
    app[ADMIN_KEY].connections = guard
    site = GuardedSite(runner, config.host, config.port, guard, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AvatarcastError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
                              "choose another --port (or stop the program using it)") from None
    port = runner.addresses[0][1] if runner.addresses else config.port
    freeze_startup_objects()  # before any session: collections then skip the ~100 000 objects of the imports
    handle = ServerHandle(app, runner, config.host, port)
    if not handle.server.base_url:
        handle.server.base_url = handle.base_url
    return handle
