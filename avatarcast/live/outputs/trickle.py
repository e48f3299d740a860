"""Trickle ICE for WHEP resources: ``PATCH`` with an ``application/trickle-ice-sdpfrag`` body (RFC 8840) adds the
player's ICE candidates to its connection, following the WHEP draft's rules for PATCH:

- the server gathers all of its candidates before answering (aiortc does), so candidates only flow from the player;
- the 201 carries ``ETag`` (a strong entity-tag of the ICE session) and
  ``Accept-Patch: application/trickle-ice-sdpfrag``;
- a PATCH with another content type: 415; a malformed fragment: 400; no ``If-Match``: 428; an ``If-Match`` that is
  not the ICE session's entity-tag: 412; candidates added: 204 with no body and no ``ETag``;
- ICE restarts are not supported (aiortc cannot restart ICE): a PATCH asking for one (``If-Match: *`` or new
  ``ice-ufrag``/``ice-pwd``) gets 422, as the draft asks of a session that supports trickle ICE but not restarts.
  A player whose connection fails makes a new offer (POST) instead;
- candidates of a transport aiortc does not use (TCP) or whose address cannot be resolved are skipped silently.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiortc.sdp import candidate_from_sdp

from avatarcast.core.errors import InvalidValueError
from avatarcast.live.cors import TRICKLE_ICE_SDPFRAG

MAX_SDPFRAG_BYTES = 16 * 1024
MAX_CANDIDATES = 64


@dataclass
class SdpFrag:
    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)  # (mid, "candidate:..." value)
    end_of_candidates: bool = False


def _ice_credentials(sdp: str) -> tuple[str | None, str | None]:
    ufrag = pwd = None
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line[len("a=ice-ufrag:"):].strip()
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = line[len("a=ice-pwd:"):].strip()
    return ufrag, pwd


def ice_etag(local_sdp: str) -> str:
    """The strong entity-tag of a connection's ICE session: a hash of this side's ICE credentials."""
    ufrag, pwd = _ice_credentials(local_sdp)
    return '"' + hashlib.sha256(f"{ufrag}:{pwd}".encode()).hexdigest()[:20] + '"'


def parse_sdpfrag(text: str) -> SdpFrag:
    """An RFC 8840 SDP fragment; ``ValueError`` when it is not one."""
    frag = SdpFrag()
    mid: str | None = None
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines:
        raise InvalidValueError("the SDP fragment is empty")
    for line in lines:
        if len(line) < 2 or line[1] != "=" or line[0] not in "amcbtv":
            raise InvalidValueError(f"not an SDP line: {line[:60]!r}")
        if line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=ice-ufrag:"):
            frag.ufrag = line[12:].strip()
        elif line.startswith("a=ice-pwd:"):
            frag.pwd = line[10:].strip()
        elif line.startswith("a=candidate:"):
            value = line[2:]
            if len(value.split()) < 8:
                raise InvalidValueError(f"malformed candidate: {line[:80]!r}")
            frag.candidates.append((mid, value))
        elif line == "a=end-of-candidates":
            frag.end_of_candidates = True
    if len(frag.candidates) > MAX_CANDIDATES:
        raise InvalidValueError(f"more than {MAX_CANDIDATES} candidates in one fragment")
    return frag


def created_headers(pc: Any) -> dict[str, str]:
    """The headers a WHEP 201 carries besides Location: the ICE session's ETag and Accept-Patch."""
    return {"ETag": ice_etag(pc.localDescription.sdp), "Accept-Patch": TRICKLE_ICE_SDPFRAG}


def _problem(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def patch_response(request: web.Request, pc: Any) -> web.Response:
    """Answer a WHEP PATCH for the connection ``pc`` (see the module's description)."""
    if request.content_type != TRICKLE_ICE_SDPFRAG:
        return _problem(415, "unsupported_media_type",
                        f"PATCH a WHEP resource with Content-Type: {TRICKLE_ICE_SDPFRAG} (trickle ICE)")
    try:
        raw = await asyncio.wait_for(request.content.read(MAX_SDPFRAG_BYTES + 1), 10.0)
    except asyncio.TimeoutError:
        return _problem(408, "body_timeout", "the SDP fragment did not arrive in time")
    if len(raw) > MAX_SDPFRAG_BYTES:
        return _problem(413, "message_too_large", f"an SDP fragment is at most {MAX_SDPFRAG_BYTES} bytes")
    try:
        frag = parse_sdpfrag(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _problem(400, "invalid_sdpfrag", f"the body is not a trickle-ice-sdpfrag: {exc}")
    if_match = request.headers.get("If-Match")
    if if_match is None:
        return _problem(428, "precondition_required",
                        "send If-Match with the ETag of the 201 that created this resource")
    remote_ufrag, remote_pwd = _ice_credentials(pc.remoteDescription.sdp if pc.remoteDescription else "")
    restart = if_match.strip() == "*" or (frag.ufrag is not None and frag.ufrag != remote_ufrag) \
        or (frag.pwd is not None and frag.pwd != remote_pwd)
    if restart:
        return _problem(422, "ice_restart_not_supported",
                        "ICE restarts are not supported: end this resource (DELETE) and POST a new offer")
    tags = [t.strip() for t in if_match.split(",")]
    if ice_etag(pc.localDescription.sdp) not in tags:
        return _problem(412, "precondition_failed", "If-Match does not name this resource's ICE session")
    for mid, value in frag.candidates:
        try:
            candidate = candidate_from_sdp(value.split(":", 1)[1])
        except (AssertionError, ValueError, IndexError):
            continue
        if candidate.protocol.lower() != "udp":
            continue
        candidate.sdpMid = mid
        if mid is None:
            candidate.sdpMLineIndex = 0
        try:
            await pc.addIceCandidate(candidate)
        except Exception:
            continue  # an address that cannot be resolved: skipped, as the draft asks
    if frag.end_of_candidates:
        await pc.addIceCandidate(None)
    return web.Response(status=204)
