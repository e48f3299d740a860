"""WHIP publishing (RFC 9725): a session's audio and video pushed to a WHIP endpoint (an SFU or media server such as
LiveKit's WHIP ingress, MediaMTX, Janus or Cloudflare Stream), which fans it out to any number of viewers.

The publisher is one more viewer of the session's fanout (``fanout.py``): its send-only peer connection sends the
frames the session's shared encoders made for its WHEP viewers, so publishing costs no encoder of its own (the
SFU's keyframe requests and bitrate estimate count like a viewer's). One attempt:

1. build a send-only offer (audio, then video: VP8 preferred, H.264 offered; one BUNDLE transport, as RFC 9725 asks)
   and gather ICE on this side with no STUN or TURN server (``RTCConfiguration(iceServers=[])``): the offer carries
   every host candidate. The candidates follow the endpoint, not the server's bind address: a loopback endpoint
   gets the loopback address, any other the machine's addresses (a server bound to 127.0.0.1 behind a proxy still
   publishes to a remote SFU). ``whep.use_loopback_candidates`` sets the process-wide choice for viewers; the
   publisher's own choice holds only inside its task (a context variable, see ``_install_scoped_host_addresses``);
2. ``POST`` it to the endpoint with ``Content-Type: application/sdp`` and ``Authorization: Bearer TOKEN``;
   redirects (307/308, which RFC 9725 allows for load balancing) are followed;
3. expect ``201 Created`` with the SDP answer and a ``Location`` (the WHIP session, resolved against the URL that
   answered); apply the answer and wait for the connection.

The publisher keeps the stream up: when the endpoint cannot be reached, refuses the offer, or the connection
fails or closes (the endpoint restarted, DTLS closed), or the endpoint sends no RTCP receiver report for
``RTCP_TIMEOUT_S`` (it vanished without closing), the attempt ends, its resource is deleted (best effort) and a new
attempt follows after an exponential backoff (``BACKOFF_INITIAL_S`` doubling up to ``BACKOFF_MAX_S``; a
``Retry-After`` from the endpoint is honoured, each wait varies by up to 20 % so that many publishers do not
return at the same instant; the backoff starts again after a connection that lasted
``BACKOFF_RESET_AFTER_S``). ``close()`` (session end, server shutdown) sends ``DELETE`` to the WHIP session.

The endpoint URL and the token are secrets (many services put the stream key in the URL's path): logs and the
state shown in the session's JSON name the endpoint's origin only (``scheme://host:port``), never the path, the
query or the token.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy

from avatarcast.core.errors import AvatarcastError, InputError
from avatarcast.live.outputs.fanout import FanoutViewer, SessionFanout
from avatarcast.live.outputs.whep import VIDEO_CODECS, is_loopback_host

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 30.0
"""A connection that stayed up this long starts the backoff again from ``BACKOFF_INITIAL_S``."""
HTTP_TIMEOUT_S = 10.0
"""The endpoint's answer to the POST (and to the DELETE at the end) must arrive within this time."""
CONNECT_TIMEOUT_S = 10.0
"""ICE and DTLS must be up this long after the answer, or the attempt is abandoned."""
RTCP_TIMEOUT_S = 10.0
"""No RTCP receiver report from the endpoint for this long (it vanished without closing): the attempt ends. ICE
consent freshness would notice too, but only after about 30 s."""
CHECK_INTERVAL_S = 0.5
MAX_URL_CHARS = 2048
MAX_TOKEN_CHARS = 4096


def check_whip_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL without user info or fragment; ``InputError`` otherwise."""
    text = str(url).strip()
    if len(text) > MAX_URL_CHARS:
        raise InputError(f"the WHIP URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise InputError("the WHIP URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError("the WHIP URL must be an absolute http:// or https:// URL (for example "
                         "https://sfu.example.com/whip/avatar)")
    if parts.username or parts.password or parts.fragment:
        raise InputError("the WHIP URL must not carry user info or a fragment: give the token separately")
    return text


def check_whip_token(token: str | None) -> str | None:
    """``token`` if it is usable in an ``Authorization: Bearer`` header (printable, no spaces); else ``InputError``."""
    if token is None or token == "":
        return None
    if len(token) > MAX_TOKEN_CHARS or any(not (0x21 <= ord(c) <= 0x7E) for c in token):
        raise InputError(f"the WHIP token must be 1 to {MAX_TOKEN_CHARS} printable ASCII characters without spaces")
    return token


def endpoint_origin(url: str) -> str:
    """The part of a URL that is safe to show: ``scheme://host[:port]`` (no path, query, user info)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


_candidate_scope: contextvars.ContextVar[str | None] = contextvars.ContextVar("whip_candidate_scope", default=None)
_aioice_get_host_addresses = aioice.ice.get_host_addresses


def _install_scoped_host_addresses() -> None:
    """Wrap whatever ``aioice.ice.get_host_addresses`` is now (aiortc's, or whep's loopback choice) so that inside a
    publisher's task the publisher's scope decides; everywhere else the wrapped function does. Installed again
    before each offer, in case ``whep.use_loopback_candidates`` replaced it since."""
    current = aioice.ice.get_host_addresses
    if getattr(current, "_whip_scoped", False):
        return

    def scoped(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        scope = _candidate_scope.get()
        if scope == "loopback":
            return (["127.0.0.1"] if use_ipv4 else []) + (["::1"] if use_ipv6 else [])
        if scope == "network":
            return _aioice_get_host_addresses(use_ipv4, use_ipv6)
        return current(use_ipv4, use_ipv6)

    scoped._whip_scoped = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = scoped


class WhipRefused(AvatarcastError):
    """The endpoint answered the offer with something other than 201 + an SDP answer + Location."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class WhipTarget:
    url: str
    token: str | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), BACKOFF_MAX_S * 4)
    except ValueError:
        return None  # an HTTP-date: use our own backoff


class WhipPublisher:
    """Publishes a session's media to one WHIP endpoint and keeps it published until ``close()``.

    ``fanout`` is the session's (``fanout.fanout_for(scheduler)``); each attempt is a new viewer of it."""

    def __init__(self, target: WhipTarget, fanout: SessionFanout,
                 *, name: str = "") -> None:
        self.url = check_whip_url(target.url)
        self._token = check_whip_token(target.token)
        self._fanout = fanout
        self.name = name
        self.endpoint = endpoint_origin(self.url)
        self.state = "idle"  # idle, connecting, connected, retrying, closed
        self.attempts = 0
        self.publishes = 0  # attempts that reached "connected"
        self.last_error: str | None = None
        self.connected_at: float | None = None  # wall clock (epoch s) of the current connection
        self.next_retry_at: float | None = None
        self.deletes_sent = 0
        self._resource: str | None = None
        self._pc: Any = None
        self._sink: FanoutViewer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._closing = False

    # ------------------------------------------------------------------------------------------ public

    def start(self) -> None:
        parts = urlsplit(self.url)
        if self._token and parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            log.warning("the WHIP token for %s goes over plain http: use https unless the network is trusted",
                        self.endpoint, extra={"session": self.name})
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"whip-{self.name}")

    def info(self) -> dict[str, Any]:
        """The publisher's state for the session's JSON and stats (no URL path, no token)."""
        now = time.time()
        return {
            "state": self.state,
            "endpoint": self.endpoint,
            "attempts": self.attempts,
            "publishes": self.publishes,
            "connected_for_s": round(now - self.connected_at, 1) if self.connected_at is not None else None,
            "retry_in_s": (round(max(0.0, self.next_retry_at - now), 1)
                           if self.state == "retrying" and self.next_retry_at is not None else None),
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        """Stop publishing: cancel a pending attempt or retry, DELETE the WHIP session, close the connection."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._teardown()
        if self._http is not None:
            await self._http.close()
            self._http = None
        self.state = "closed"
        log.info("WHIP publishing to %s stopped", self.endpoint, extra={"session": self.name})

    # ------------------------------------------------------------------------------------------ internals

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _run(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        delay = BACKOFF_INITIAL_S
        while not self._closing:
            self.attempts += 1
            self.state = "connecting"
            wait: float | None = None
            try:
                await self._publish_once()
                self.last_error = self.last_error or "the connection ended"
            except WhipRefused as exc:
                self.last_error = str(exc)
                wait = exc.retry_after_s
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                self.last_error = f"endpoint unreachable ({type(exc).__name__})"
            except Exception as exc:  # a broken answer (aiortc refuses it): keep the session alive, retry
                self.last_error = f"negotiation failed ({type(exc).__name__}: {str(exc)[:200]})"
            lasted = time.time() - self.connected_at if self.connected_at is not None else 0.0
            await self._teardown()
            if self._closing:
                break
            if lasted >= BACKOFF_RESET_AFTER_S:
                delay = BACKOFF_INITIAL_S
            # +-20 %: servers that lost the same endpoint do not all come back at the same instant
            wait = delay * random.uniform(0.8, 1.2) if wait is None else max(wait, delay)
            self.state = "retrying"
            self.next_retry_at = time.time() + wait
            log.warning("WHIP publishing to %s: %s; retrying in %.1f s", self.endpoint, self.last_error, wait,
                        extra={"session": self.name})
            await asyncio.sleep(wait)
            delay = min(delay * 2.0, BACKOFF_MAX_S)

    async def _publish_once(self) -> None:
        """One attempt: offer, answer, connect, then watch the connection until it ends."""
        _install_scoped_host_addresses()
        _candidate_scope.set("loopback" if is_loopback_host(urlsplit(self.url).hostname or "") else "network")
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        sink = self._sink = self._fanout.new_viewer(has_video=True, name=f"whip-{self.name}")
        changed = asyncio.Event()

        @pc.on("connectionstatechange")
        def _changed() -> None:
            changed.set()

        audio = pc.addTransceiver(sink.audio, direction="sendonly")
        sink.attach(audio.sender)
        video = pc.addTransceiver(sink.video, direction="sendonly")
        sink.attach(video.sender)
        codecs = RTCRtpSender.getCapabilities("video").codecs
        preferred = [c for name in VIDEO_CODECS for c in codecs if c.mimeType == name]
        video.setCodecPreferences(preferred + [c for c in codecs if c.mimeType == "video/rtx"])
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here

        assert self._http is not None
        async with self._http.post(self.url, data=pc.localDescription.sdp.encode(),
                                   headers=self._headers("application/sdp")) as r:
            answer = await r.text()
            if r.status != 201:
                raise WhipRefused(f"the endpoint answered the offer with HTTP {r.status}",
                                  _retry_after(r.headers.get("Retry-After")))
            location = r.headers.get("Location")
            if not location:
                raise WhipRefused("the endpoint's 201 has no Location header")
            if r.content_type != "application/sdp" or "m=" not in answer:
                raise WhipRefused(f"the endpoint's 201 is not an SDP answer (Content-Type {r.content_type!r})")
            self._resource = urljoin(str(r.url), location)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise WhipRefused(f"the WebRTC connection {pc.connectionState} before it was up")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WhipRefused(f"the WebRTC connection was not up within {CONNECT_TIMEOUT_S:g} s")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        self.state = "connected"
        self.publishes += 1
        self.connected_at = time.time()
        self.next_retry_at = None
        self.last_error = None
        log.info("WHIP publishing to %s (attempt %d)", self.endpoint, self.attempts, extra={"session": self.name})

        last_report = time.monotonic()
        last_seen: Any = None
        while True:
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), CHECK_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
            if pc.connectionState in ("failed", "closed"):
                self.last_error = f"the WebRTC connection {pc.connectionState}"
                return
            seen = await _last_receiver_report(pc)
            if seen is not None and seen != last_seen:
                last_seen, last_report = seen, time.monotonic()
            elif time.monotonic() - last_report > RTCP_TIMEOUT_S:
                self.last_error = f"no RTCP receiver report from the endpoint for {RTCP_TIMEOUT_S:g} s"
                return

    async def _teardown(self) -> None:
        """End the current attempt: detach the tracks, DELETE the WHIP session (best effort), close the pc."""
        sink, pc, resource = self._sink, self._pc, self._resource
        self._sink = self._pc = self._resource = None
        self.connected_at = None
        if sink is not None:
            sink.stop()  # unsubscribes from the shared encoders
        if resource is not None and self._http is not None and not self._http.closed:
            try:
                async with self._http.delete(resource, headers=self._headers(),
                                             timeout=aiohttp.ClientTimeout(total=min(HTTP_TIMEOUT_S, 3.0))) as r:
                    await r.read()
                    self.deletes_sent += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass  # the endpoint is gone: its session went with it
        if pc is not None:
            await pc.close()


async def _last_receiver_report(pc: Any) -> Any:
    """The timestamp of the latest RTCP receiver report the endpoint sent for any of our streams (None: none yet)."""
    latest = None
    for sender in pc.getSenders():
        try:
            report = await sender.getStats()
        except Exception:
            continue
        for stats in report.values():
            if getattr(stats, "type", "") == "remote-inbound-rtp":
                latest = stats.timestamp if latest is None else max(latest, stats.timestamp)
    return latest
