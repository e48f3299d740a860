"""The REST API's request bodies: strict schemas, read with bounded size, time and nesting.

Every field has the JSON type it is documented with: ``"public": "false"`` is refused, not read as true; ``1`` is not
a boolean and ``true`` is not a number; numbers are finite and in range. A refused body is a 400 whose error names
the field (``{"error": {"code": "invalid_field", "field": "public", "message": "public: ..."}}``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from avatarcast.core.errors import AvatarcastError
from avatarcast.live.outputs.whip import MAX_TOKEN_CHARS as MAX_WHIP_TOKEN_CHARS, MAX_URL_CHARS as MAX_WHIP_URL_CHARS
from avatarcast.live.protocol import ErrorCode, load_json
from avatarcast.live.session import MAX_FPS, MIN_FPS

BODY_TIMEOUT_S = 10.0
"""A request body must arrive within this time (a client trickling its body holds nothing longer)."""
MAX_SEED = 2**31 - 1
MAX_INSTRUCTION_CHARS = 2000


class RequestError(AvatarcastError):
    """A request body that cannot be used; ``response()`` is the 4xx to send."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return web.json_response({"error": error}, status=self.status)


class WhipRequest(BaseModel):
    """``POST /v1/sessions`` ``whip``: publish the session to this WHIP endpoint (RFC 9725); see whip.py."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: Annotated[str, Field(min_length=1, max_length=MAX_WHIP_URL_CHARS)] = Field(
        description="the WHIP endpoint, an absolute http:// or https:// URL")
    token: Annotated[str, Field(min_length=1, max_length=MAX_WHIP_TOKEN_CHARS)] | None = Field(
        default=None, description="sent as 'Authorization: Bearer TOKEN'")


class CreateSessionRequest(BaseModel):
    """``POST /v1/sessions``: every field optional; the server's settings fill the rest."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    avatar: Annotated[str, Field(min_length=1, max_length=4096)] | None = Field(
        default=None, description="portrait image or prepared avatar folder on the server")
    size: Annotated[str, Field(max_length=16)] | None = Field(default=None, description="WIDTHxHEIGHT, e.g. 512x512")
    fps: Annotated[float, Field(ge=MIN_FPS, le=MAX_FPS)] | None = None
    public: bool | None = Field(default=None, description="the session can be viewed without a token")
    instruction: Annotated[str, Field(max_length=MAX_INSTRUCTION_CHARS)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    whip: WhipRequest | None = Field(default=None, description="publish the session to a WHIP endpoint")


async def read_json_body(request: web.Request, timeout_s: float = BODY_TIMEOUT_S) -> Any:
    """The request's JSON body (``{}`` when there is none), read within ``timeout_s``; ``RequestError`` otherwise.
    The size is bounded by the application's ``client_max_size``."""
    if not request.can_read_body:
        return {}
    try:
        raw = await asyncio.wait_for(request.read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, "body_timeout", f"the request body did not arrive within {timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestError(413, ErrorCode.MESSAGE_TOO_LARGE, exc.text or "the request body is too large") from None
    if not raw.strip():
        return {}
    try:
        return load_json(raw)
    except ValueError as exc:
        raise RequestError(400, ErrorCode.INVALID_JSON, f"the request body must be a JSON object: {exc}") from None


def parse_model(model: type[BaseModel], body: Any) -> Any:
    """Validate ``body`` against ``model``; ``RequestError`` (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise RequestError(400, ErrorCode.INVALID_JSON, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            unknown = sorted(".".join(str(p) for p in e["loc"]) for e in errors if e["type"] == "extra_forbidden")
            known = ", ".join(model.model_fields)
            raise RequestError(400, ErrorCode.INVALID_MESSAGE,
                               f"unknown fields: {', '.join(u[:40] for u in unknown)} (known: {known})",
                               unknown[0][:40]) from None
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        raise RequestError(400, ErrorCode.INVALID_FIELD, problems, field) from None
