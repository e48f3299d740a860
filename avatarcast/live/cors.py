"""Cross-origin access (CORS) for players and tools on other origins: preflights answered, the headers a player
needs exposed, origins allowed per kind of endpoint.

- **Viewing endpoints** (WHEP ``/v1/sessions/{id}/whep`` and its resources, ``/v1/sessions/{id}/stats``,
  ``/v1/protocol``, ``/healthz``): any origin by default, so a player page on any site can play a session it has
  a viewer token for (or a public one); ``--cors-origin`` restricts them to the origins given.
- **Admin API** (every other ``/v1/`` path: sessions, interrupt): no origin by default; the origins given with
  ``--cors-origin`` (``*``: any) are allowed.

An allowed request gets ``Access-Control-Allow-Origin`` (the request's origin, with ``Vary: Origin``) and
``Access-Control-Expose-Headers: Location, Link, ETag, Content-Type, Accept-Patch, Accept-Post``. A preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin gets 204 with the path's methods and
``Access-Control-Allow-Headers: Authorization, Content-Type, If-Match``; from another origin, 403. A plain
``OPTIONS`` (WHEP asks endpoints to support it) gets 204 with ``Allow`` and, on a WHEP endpoint,
``Accept-Post: application/sdp`` (on a WHEP resource, ``Accept-Patch: application/trickle-ice-sdpfrag``).
No credentials mode: tokens travel in ``Authorization``, never in cookies.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from avatarcast.live.protocol import ErrorCode
from avatarcast.live.security import normalize_origin, parse_origins

ALLOW_HEADERS = "Authorization, Content-Type, If-Match"
EXPOSE_HEADERS = "Location, Link, ETag, Content-Type, Accept-Patch, Accept-Post"
PREFLIGHT_MAX_AGE_S = 600
SDP = "application/sdp"
TRICKLE_ICE_SDPFRAG = "application/trickle-ice-sdpfrag"

WHEP_ENDPOINT = re.compile(r"^/v1/sessions/[^/]+/whep$")
WHEP_RESOURCE = re.compile(r"^/v1/sessions/[^/]+/whep/[^/]+$")
VIEWING = re.compile(r"^/v1/sessions/[^/]+/(whep|whep/[^/]+|stats)$|^/v1/protocol$|^/healthz$")
ADMIN = re.compile(r"^/v1/")


class CorsPolicy:
    """Which origins may call which endpoints (see the module's description)."""

    def __init__(self, origins: tuple[str, ...] = ()) -> None:
        self.any, self.origins = parse_origins(origins, "CORS origin")
        self.configured = bool(origins)

    @staticmethod
    def kind(path: str) -> str | None:
        """``"viewing"``, ``"admin"`` or None (pages and static files: no CORS)."""
        if VIEWING.match(path):
            return "viewing"
        if ADMIN.match(path):
            return "admin"
        return None

    def allows(self, origin: str, kind: str | None) -> bool:
        if kind is None:
            return False
        if kind == "viewing" and not self.configured:
            return True
        if self.any:
            return True
        n = normalize_origin(origin)
        return n is not None and n in self.origins


def _allowed_methods(request: web.Request) -> set[str] | None:
    """The methods routed for the request's path (None: no such path)."""
    exc = request.match_info.http_exception
    if exc is None:
        return {request.method}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return set(exc.allowed_methods)
    return None


def _describe(path: str, response: web.StreamResponse) -> None:
    if WHEP_ENDPOINT.match(path):
        response.headers["Accept-Post"] = SDP
    elif WHEP_RESOURCE.match(path):
        response.headers["Accept-Patch"] = TRICKLE_ICE_SDPFRAG


def cors_middleware(policy: CorsPolicy) -> Any:
    @web.middleware
    async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        kind = policy.kind(request.path)
        if request.method == "OPTIONS" and kind is not None:
            methods = _allowed_methods(request)
            if methods is not None:
                methods = sorted((methods - {"HEAD"}) | {"OPTIONS"})
                preflight = origin is not None and "Access-Control-Request-Method" in request.headers
                if preflight and not policy.allows(origin, kind):
                    return web.json_response(
                        {"error": {"code": ErrorCode.ORIGIN_NOT_ALLOWED,
                                   "message": f"pages from {origin[:200]!r} may not call this endpoint (it is not among "
                                              "the server's CORS origins)"}},
                        status=403, headers={"Vary": "Origin"})
                response = web.Response(status=204, headers={"Allow": ", ".join(methods)})
                _describe(request.path, response)
                if preflight:
                    response.headers.update({
                        "Access-Control-Allow-Origin": origin,
                        "Access-Control-Allow-Methods": ", ".join(methods),
                        "Access-Control-Allow-Headers": ALLOW_HEADERS,
                        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                        "Vary": "Origin",
                    })
                return response
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        if kind is not None and not response.prepared:
            response.headers["Vary"] = "Origin"  # the answer depends on it, allowed or not (shared caches)
            if origin is not None and policy.allows(origin, kind):
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return cors
