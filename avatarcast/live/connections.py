"""Connection limits: a cap per client address and in total, so no client runs the server out of descriptors.

``ConnectionGuard`` wraps the HTTP server's protocol factory: a connection over a cap is answered with a bare
``503`` and closed at once, before any request is read, and counted (a rate-limited warning says so). The total cap
is kept below the process's descriptor limit, with room left for the sessions' own descriptors (render processes,
WebRTC sockets), so accepting connections never fails with "Too many open files".

Timeouts are the HTTP server's (see ``server.py``): a connection must send a complete request head within
``IDLE_TIMEOUT_S`` of opening (or of its previous response), and a body within ``rest.BODY_TIMEOUT_S``.

Behind a reverse proxy every connection comes from the proxy's address: raise ``max_per_ip`` (or set it to 0, no
per-address cap) and let the proxy limit its clients.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from collections import Counter
from typing import Any, Callable

from aiohttp import web

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 10.0
"""A connection that sends no complete request head for this long (after opening or after its last response) is
closed. Slowly trickled headers count as idle."""
TLS_HANDSHAKE_TIMEOUT_S = 10.0
DESCRIPTORS_PER_SESSION = 24
"""Descriptors a session may use besides HTTP connections (render process pipes, event fds)."""
DESCRIPTORS_PER_VIEWER = 6
"""Descriptors one WebRTC viewer uses (UDP sockets of its ICE candidates, DTLS)."""
RESERVED_DESCRIPTORS = 128
"""Descriptors kept free for the process itself (log files, imports, the listening sockets, executors)."""
REFUSAL_LOG_INTERVAL_S = 10.0
_BUSY_BODY = b'{"error": {"code": "too_many_connections", "message": "too many open connections; retry later"}}'
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


def descriptor_limit() -> int:
    """The process's soft limit on open file descriptors (raised to the hard limit, up to 65536, when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else 65536, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return 65536 if soft == resource.RLIM_INFINITY else int(soft)


def fit_descriptors(connections: int, max_sessions: int, max_viewers: int,
                    limit: int | None = None) -> tuple[int, int]:
    """``(connection cap, viewers per session)`` that fit the open-file limit: ``connections`` and ``max_viewers``
    when the limit holds every session at its viewer limit besides them, else both lowered (half the room left to
    HTTP connections, at least 16; at least one viewer a session), with a warning naming what to raise."""
    limit = descriptor_limit() if limit is None else limit
    room = limit - RESERVED_DESCRIPTORS - max_sessions * DESCRIPTORS_PER_SESSION
    per_viewer = max(max_sessions, 1) * DESCRIPTORS_PER_VIEWER
    if room >= connections + max_viewers * per_viewer:
        return connections, max_viewers
    cap = max(16, min(connections, room // 2))
    viewers = max(1, min(max_viewers, (room - cap) // per_viewer))
    log.warning("the open-file limit (%d) does not hold %d HTTP connections and %d sessions with %d viewers each: "
                "at most %d connections and %d viewers a session; raise the limit (ulimit -n) or lower the sessions "
                "or viewers", limit, connections, max_sessions, max_viewers, cap, viewers)
    return cap, viewers


class ConnectionGuard:
    """Counts open connections per client address and in total; ``wrap`` a protocol factory to enforce the caps.
    A cap of 0 means no cap."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.refused = 0
        self._refused_since_log = 0
        self._last_log = 0.0

    def admit(self, ip: str) -> bool:
        if (self.max_total and self.total >= self.max_total) or (self.max_per_ip and self.per_ip[ip] >= self.max_per_ip):
            self._refuse(ip)
            return False
        self.total += 1
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def _refuse(self, ip: str) -> None:
        self.refused += 1
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= REFUSAL_LOG_INTERVAL_S:
            which = "in total" if self.max_total and self.total >= self.max_total else f"from {ip}"
            log.warning("refused %d connection(s): too many open connections %s (%d open; caps: %d in total, "
                        "%d per address; 0 = none)", self._refused_since_log, which, self.total, self.max_total,
                        self.max_per_ip)
            self._refused_since_log = 0
            self._last_log = now

    def wrap(self, factory: Callable[[], asyncio.Protocol],
             ssl_context: ssl.SSLContext | None = None) -> Callable[[], asyncio.Protocol]:
        """A protocol factory that enforces the caps; with ``ssl_context`` it also runs the TLS handshake, after
        admitting the connection."""
        return lambda: _GuardedProtocol(self, factory, ssl_context)


class _GuardedProtocol(asyncio.Protocol):
    """Admits the connection (or answers 503 and closes it), then hands everything to the real protocol.

    With TLS the connection is admitted on its TCP accept, before the handshake (``loop.start_tls``), so connections
    still handshaking count against the caps like any other; a handshake that fails or times out gives its place
    back."""

    __slots__ = ("_guard", "_factory", "_inner", "_ip", "_admitted", "_ssl", "_handshake", "_early")

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: Any = None
        self._ip = ""
        self._admitted = False
        self._ssl = ssl_context
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # decrypted bytes that arrive between the handshake's end and _start

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "unknown"
        if not self._guard.admit(ip):
            try:
                if self._ssl is None:  # a TLS client could not read a plain answer
                    transport.write(_BUSY_RESPONSE)
            finally:
                transport.close()
            return
        self._ip = ip
        self._admitted = True
        if self._ssl is None:
            self._start(transport)
        else:
            self._handshake = asyncio.get_running_loop().create_task(self._start_tls(transport))

    async def _start_tls(self, transport: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(transport, self, self._ssl, server_side=True,
                                       ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError):
            self._give_back()  # start_tls closed the transport; this protocol never saw the connection
            return
        finally:
            self._handshake = None
        if tls is None or tls.is_closing():
            self._give_back()
            return
        self._start(tls)

    def _start(self, transport: Any) -> None:
        self._inner = self._factory()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            if self._inner is None:
                break
            self._inner.data_received(data)

    def _give_back(self) -> None:
        if self._admitted:
            self._admitted = False
            self._guard.release(self._ip)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._give_back()
        if self._inner is None:
            return
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        elif self._admitted and self._ssl is not None:  # the TLS layer reads on as soon as its handshake ends
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass through a ``ConnectionGuard`` (and whose TLS handshakes time out)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, **kw: Any) -> None:
        super().__init__(runner, host, port, **kw)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # plain TCP: the guard admits each connection on accept and runs the TLS handshake itself
        self._server = await loop.create_server(self.guard.wrap(server, self._ssl_context), self._host, self._port,
                                                backlog=self._backlog, reuse_address=self._reuse_address,
                                                reuse_port=self._reuse_port)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port
