"""WebRTC playback negotiated WHEP-style: POST an SDP offer, get 201 + the answer + a Location; DELETE it to end.

aiortc always runs with ``RTCConfiguration(iceServers=[])``: no STUN or TURN server is ever contacted.

Loopback candidates: aioice gathers host candidates from ``aioice.ice.get_host_addresses``, which leaves out
127.0.0.1, and offers no configuration hook for it (``Connection`` only takes ``use_ipv4``/``use_ipv6``). When the
server is bound to a loopback address, a viewer can only be on the same machine, so ``use_loopback_candidates``
replaces that one function with a wrapper that returns the loopback address. The patch is process-wide, installed
once, reversible (``restore_host_candidates``) and confined to this module.

Media: every viewer of a session sends the same encoded frames, encoded once per codec for the session
(``fanout.py``); a viewer's connection only packetizes, encrypts and sends them. The codec is negotiated from the
offer: aiortc answers with the codecs of the offer in the offer's order, and the first one is sent, so a viewer
that lists H.264 first (OBS, a player with a hardware decoder) gets H.264 and a browser that lists VP8 first gets
VP8 (``VIDEO_CODECS`` are the ones answered; audio is Opus, or any codec aiortc offers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from typing import Callable

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from avatarcast.core.errors import AvatarcastError
from avatarcast.live.outputs.fanout import FanoutViewer, SessionFanout, fanout_for  # noqa: F401 (server)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""A viewer whose WebRTC connection is not up this long after its answer is removed (an offer whose ICE never
completes would otherwise hold a viewer slot for ever)."""
VIDEO_CODECS = ("video/VP8", "video/H264")
"""The video codecs a viewer may get, in the order offered when we make the offer (WHIP; VP8 is cheaper to encode
on a CPU). Answering a viewer's offer, the viewer's order decides."""

_original_get_host_addresses = aioice.ice.get_host_addresses
_loopback_only = False


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _loopback_only:
        return ["127.0.0.1"] if use_ipv4 else (["::1"] if use_ipv6 else [])
    return _original_get_host_addresses(use_ipv4, use_ipv6)


def is_loopback_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def use_loopback_candidates(enabled: bool = True) -> None:
    """Offer only the loopback address as ICE host candidate (``enabled``) or the machine's other addresses."""
    global _loopback_only
    _loopback_only = enabled
    aioice.ice.get_host_addresses = _host_addresses


def restore_host_candidates() -> None:
    global _loopback_only
    _loopback_only = False
    aioice.ice.get_host_addresses = _original_get_host_addresses


def new_peer_connection() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class WhepError(AvatarcastError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class WhepViewer:
    """One WHEP resource: a peer connection sending a session's audio and video to one viewer."""

    def __init__(self, pc: RTCPeerConnection, sink: FanoutViewer) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.pc = pc
        self.sink = sink
        self.remote = ""  # the client's address (for the per-address limit on viewers being set up)
        self._watchdog: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.pc.connectionState == "connected"

    async def close(self) -> None:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self.sink.stop()
        await self.pc.close()


async def answer_offer(offer_sdp: str, fanout: SessionFanout, on_closed: Callable[["WhepViewer"], None],
                       connect_timeout_s: float = CONNECT_TIMEOUT_S) -> WhepViewer:
    """Negotiate a send-only connection for ``offer_sdp``; return the viewer (its ``pc.localDescription`` holds the
    answer). Its senders send the session's shared encoded frames (``fanout``, see ``fanout.fanout_for``);
    ``on_closed`` runs once when the connection ends, or when it is not connected within ``connect_timeout_s``."""
    if "m=" not in offer_sdp:
        raise WhepError(400, "invalid_sdp", "the request body is not an SDP offer (no m= lines)")
    pc = new_peer_connection()
    sink: FanoutViewer | None = None
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        kinds = {t.kind for t in pc.getTransceivers()}
        if "video" not in kinds and "audio" not in kinds:
            raise WhepError(400, "invalid_sdp", "the offer has neither an audio nor a video section")
        sink = fanout.new_viewer(has_video="video" in kinds)
        if "audio" in kinds:
            sink.attach(pc.addTrack(sink.audio))
        if "video" in kinds:
            sink.attach(pc.addTrack(sink.video))
        await pc.setLocalDescription(await pc.createAnswer())
    except WhepError:
        if sink is not None:
            sink.stop()
        await pc.close()
        raise
    except Exception as exc:
        if sink is not None:
            sink.stop()
        await pc.close()
        raise WhepError(400, "negotiation_failed", f"could not negotiate the offer: {exc}") from exc
    viewer = WhepViewer(pc, sink)

    closed = False

    def end() -> bool:
        nonlocal closed
        if closed:
            return False
        closed = True
        sink.stop()
        on_closed(viewer)
        return True

    @pc.on("connectionstatechange")
    async def _state() -> None:
        if pc.connectionState in ("failed", "closed") and end() and pc.connectionState == "failed":
            await pc.close()

    async def _watchdog() -> None:
        await asyncio.sleep(connect_timeout_s)
        if pc.connectionState != "connected" and end():
            log.info("WHEP viewer %s not connected after %.1f s: removed", viewer.id, connect_timeout_s)
            await pc.close()

    if connect_timeout_s > 0:
        viewer._watchdog = asyncio.create_task(_watchdog(), name=f"whep-watchdog-{viewer.id}")
    sink.name = viewer.id
    return viewer


async def close_all(viewers: list[WhepViewer]) -> None:
    await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)
