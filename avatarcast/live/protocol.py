"""The WebSocket ingest protocol: versioned, validated message models for both directions.

Binary WebSocket messages carry raw PCM16 little-endian mono audio at the rate declared in ``start``. Text messages
carry one JSON object each with a ``type``:

client -> server: ``start``, ``alignment``, ``instruction``, ``speech.end``, ``interrupt``, ``ping``
server -> client: ``ready``, ``playback.started``, ``playback.finished``, ``error``, ``pong``, ``stats``

Every message is validated here; a bad message becomes a ``ProtocolError`` with a stable ``code`` that the server
sends back as an ``error`` event (the session survives it).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from avatarcast.core.errors import AvatarcastError, InvalidValueError

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change. Clients send it in ``start``; the server announces it in ``ready``."""

SUPPORTED_SAMPLE_RATES_HZ = (16000, 22050, 24000, 48000)

MAX_JSON_DEPTH = 8
"""Deepest nesting of arrays and objects accepted in any JSON the server reads (the ingest's messages need 3)."""
MAX_ALIGNMENT_WORDS = 500
"""Words in one ``alignment`` message (about 3 minutes of speech; TTS services send one per audio chunk)."""
MAX_ALIGNMENT_CHARS = 4000
"""Characters in one character ``alignment`` message."""
MAX_WORD_CHARS = 100
MAX_TIME_MS = 3_600_000.0
"""Largest time (start, end, duration, offset) in an alignment: one hour."""


class ErrorCode:
    """Stable ``error.code`` values (clients may branch on them)."""

    INVALID_JSON = "invalid_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    ODD_LENGTH_PCM = "odd_length_pcm"
    MESSAGE_TOO_LARGE = "message_too_large"
    ALIGNMENT_TOO_LARGE = "alignment_too_large"
    QUOTA_EXCEEDED = "quota_exceeded"
    AUDIO_BEFORE_START = "audio_before_start"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    SESSION_LIMIT = "session_limit"
    VIEWER_LIMIT = "viewer_limit"
    INGEST_BUSY = "ingest_busy"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    INVALID_FIELD = "invalid_field"
    INTERNAL = "internal_error"
    RENDER_FAILED = "render_failed"  # the session's render process died; the video holds its last frame


class ProtocolError(AvatarcastError):
    """A message that cannot be used; carries the ``error`` event's code and a message that says what to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ClientMessage(_Message):
    """What a client sends: JSON types as declared (no "16000" for 16000, no 1 for true), finite numbers only."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


TimeMs = Annotated[float, Field(ge=0, le=MAX_TIME_MS)]


# ---------------------------------------------------------------------------------------------- client -> server


class StartMessage(_ClientMessage):
    """Declares the audio format of the binary messages that follow. May be sent again between utterances."""

    type: Literal["start"] = "start"
    version: int = PROTOCOL_VERSION
    sample_rate: int = Field(description="PCM sample rate in Hz: 16000, 22050, 24000 or 48000")
    encoding: Literal["pcm_s16le"] = "pcm_s16le"
    channels: Literal[1] = 1


class WordTiming(_ClientMessage):
    word: str = Field(max_length=MAX_WORD_CHARS)
    start_ms: TimeMs
    end_ms: TimeMs

    @model_validator(mode="after")
    def _ordered(self) -> "WordTiming":
        if self.end_ms < self.start_ms:
            raise ValueError(f"word {self.word!r} ends ({self.end_ms} ms) before it starts ({self.start_ms} ms)")
        return self


class AlignmentMessage(_ClientMessage):
    """Timing side information for the current utterance, in one of two shapes.

    - ``{"words": [{"word", "start_ms", "end_ms"}]}``
    - ElevenLabs-style ``{"chars": [...], "char_start_times_ms": [...], "char_durations_ms": [...]}``

    Times are relative to the start of the current utterance's audio plus ``offset_ms`` (for TTS services that
    send one alignment per audio chunk, ``offset_ms`` is the chunk's position in the utterance).
    """

    type: Literal["alignment"] = "alignment"
    words: list[WordTiming] | None = Field(default=None, max_length=MAX_ALIGNMENT_WORDS)
    chars: list[Annotated[str, Field(max_length=MAX_WORD_CHARS)]] | None = Field(default=None,
                                                                                max_length=MAX_ALIGNMENT_CHARS)
    char_start_times_ms: list[TimeMs] | None = Field(default=None, max_length=MAX_ALIGNMENT_CHARS)
    char_durations_ms: list[TimeMs] | None = Field(default=None, max_length=MAX_ALIGNMENT_CHARS)
    offset_ms: TimeMs = 0.0

    @model_validator(mode="after")
    def _one_shape(self) -> "AlignmentMessage":
        has_chars = self.chars is not None or self.char_start_times_ms is not None
        if self.words is None and not has_chars:
            raise ValueError("alignment needs either 'words' or 'chars' with 'char_start_times_ms'")
        if self.words is not None and has_chars:
            raise ValueError("alignment takes either 'words' or 'chars', not both")
        if has_chars:
            if self.chars is None or self.char_start_times_ms is None:
                raise ValueError("character alignment needs both 'chars' and 'char_start_times_ms'")
            if len(self.chars) != len(self.char_start_times_ms):
                raise ValueError(
                    f"'chars' has {len(self.chars)} entries but 'char_start_times_ms' has "
                    f"{len(self.char_start_times_ms)}; they must match"
                )
            if self.char_durations_ms is not None and len(self.char_durations_ms) != len(self.chars):
                raise ValueError("'char_durations_ms' must have one entry per character")
        return self

    def word_timings_s(self) -> list[tuple[str, float, float]]:
        """``(word, start_s, end_s)`` relative to the utterance start (characters are grouped at whitespace)."""
        offset_s = self.offset_ms / 1000.0
        if self.words is not None:
            return [(w.word, offset_s + w.start_ms / 1000.0, offset_s + w.end_ms / 1000.0)
                    for w in self.words if w.word.strip()]
        assert self.chars is not None and self.char_start_times_ms is not None
        durations = self.char_durations_ms
        words: list[tuple[str, float, float]] = []
        text, start_ms, end_ms = "", 0.0, 0.0
        for i, ch in enumerate(self.chars):
            t0 = float(self.char_start_times_ms[i])
            t1 = t0 + float(durations[i]) if durations is not None else t0
            if not ch.strip():
                if text:
                    words.append((text, offset_s + start_ms / 1000.0, offset_s + end_ms / 1000.0))
                text = ""
                continue
            if not text:
                start_ms = t0
            text += ch
            end_ms = max(t1, t0)
        if text:
            words.append((text, offset_s + start_ms / 1000.0, offset_s + end_ms / 1000.0))
        if durations is None:  # without durations a word ends where the next one starts
            for i in range(len(words) - 1):
                words[i] = (words[i][0], words[i][1], max(words[i][2], words[i + 1][1]))
        return words


class InstructionMessage(_ClientMessage):
    """Free-text direction for the avatar ("speak warmly, nod at the start")."""

    type: Literal["instruction"] = "instruction"
    text: str = Field(max_length=2000)


class SpeechEndMessage(_ClientMessage):
    """The current utterance is complete: play what is buffered, then report ``playback.finished``."""

    type: Literal["speech.end"] = "speech.end"


class InterruptMessage(_ClientMessage):
    """Barge-in: drop all queued speech at once and move to the listening pose."""

    type: Literal["interrupt"] = "interrupt"


class PingMessage(_ClientMessage):
    type: Literal["ping"] = "ping"
    id: Annotated[str, Field(max_length=128)] | int | None = None


ClientMessage = Annotated[
    Union[StartMessage, AlignmentMessage, InstructionMessage, SpeechEndMessage, InterruptMessage, PingMessage],
    Field(discriminator="type"),
]
_CLIENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientMessage)
CLIENT_MESSAGE_TYPES = ("start", "alignment", "instruction", "speech.end", "interrupt", "ping")


# ---------------------------------------------------------------------------------------------- server -> client


class ReadyEvent(_Message):
    type: Literal["ready"] = "ready"
    session_id: str
    protocol_version: int = PROTOCOL_VERSION
    sample_rates: tuple[int, ...] = SUPPORTED_SAMPLE_RATES_HZ
    fps: float
    width: int
    height: int
    max_message_bytes: int
    max_buffer_ms: int


class PlaybackStartedEvent(_Message):
    type: Literal["playback.started"] = "playback.started"
    utterance_id: str


class PlaybackFinishedEvent(_Message):
    type: Literal["playback.finished"] = "playback.finished"
    utterance_id: str
    position_ms: float
    interrupted: bool


class ErrorEvent(_Message):
    type: Literal["error"] = "error"
    code: str
    message: str


class PongEvent(_Message):
    type: Literal["pong"] = "pong"
    id: str | int | None = None


class StatsEvent(_Message):
    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["stats"] = "stats"
    session_id: str


ServerEvent = Annotated[
    Union[ReadyEvent, PlaybackStartedEvent, PlaybackFinishedEvent, ErrorEvent, PongEvent, StatsEvent],
    Field(discriminator="type"),
]
_SERVER_ADAPTER: TypeAdapter[Any] = TypeAdapter(ServerEvent)


# ---------------------------------------------------------------------------------------------- parsing


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidValueError(f"number {text[:40]} is out of range (numbers must be finite)")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidValueError(f"{name} is not a JSON number (numbers must be finite)")


def _depth(data: Any, limit: int) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), counted without recursion, stopping past ``limit``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            depth += 1
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
            stack.extend((v, depth) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _loads(text: str | bytes) -> Any:
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidValueError(f"JSON nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"not UTF-8 text: {exc}") from None


def _check_depth(data: Any, max_depth: int) -> None:
    if _depth(data, max_depth) > max_depth:
        raise InvalidValueError(f"JSON nested too deeply (at most {max_depth} levels)")


def load_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for anything a client sends: finite numbers only (no ``NaN``, ``Infinity`` or ``1e400``) and
    at most ``max_depth`` levels of nesting; ``ValueError`` saying what is wrong otherwise (never
    ``RecursionError``)."""
    data = _loads(text)
    _check_depth(data, max_depth)
    return data


def _check_alignment_size(data: dict) -> None:
    """Refuse an oversized alignment before validating it (validation costs time per word)."""
    for key, limit, unit in (("words", MAX_ALIGNMENT_WORDS, "words"), ("chars", MAX_ALIGNMENT_CHARS, "characters"),
                             ("char_start_times_ms", MAX_ALIGNMENT_CHARS, "times"),
                             ("char_durations_ms", MAX_ALIGNMENT_CHARS, "durations")):
        value = data.get(key)
        if isinstance(value, list) and len(value) > limit:
            raise ProtocolError(
                ErrorCode.ALIGNMENT_TOO_LARGE,
                f"alignment with {len(value)} {unit} exceeds the limit of {limit} per message; send one alignment "
                "per audio chunk",
            )


def parse_client_message(text: str | bytes) -> Any:
    """Parse and validate one JSON text message from a client; raise ``ProtocolError`` saying what is wrong."""
    try:
        data = _loads(text)
        if isinstance(data, dict) and data.get("type") == "alignment":
            _check_alignment_size(data)  # before any work per word
        _check_depth(data, MAX_JSON_DEPTH)
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"text messages must be JSON objects: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "text messages must be JSON objects with a 'type' field")
    kind = data.get("type")
    if kind not in CLIENT_MESSAGE_TYPES:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {str(kind)[:40]!r}; expected one of {', '.join(CLIENT_MESSAGE_TYPES)}",
        )
    try:
        message = _CLIENT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or kind}: {err['msg']}" for err in exc.errors()
        )
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"invalid {kind!r} message: {problems}") from None
    if isinstance(message, StartMessage):
        if message.version != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {message.version} is not supported; this server speaks version {PROTOCOL_VERSION}",
            )
        if message.sample_rate not in SUPPORTED_SAMPLE_RATES_HZ:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_SAMPLE_RATE,
                f"sample_rate {message.sample_rate} Hz is not supported; use one of "
                f"{', '.join(str(r) for r in SUPPORTED_SAMPLE_RATES_HZ)}",
            )
    return message


def check_pcm_chunk(data: bytes, max_bytes: int, started: bool) -> None:
    """Validate one binary audio message; raise ``ProtocolError`` when it cannot be played."""
    if len(data) > max_bytes:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_LARGE,
            f"audio message of {len(data)} bytes exceeds the limit of {max_bytes} bytes; send smaller chunks "
            "(20-100 ms each is typical)",
        )
    if not started:
        raise ProtocolError(
            ErrorCode.AUDIO_BEFORE_START,
            "audio received before 'start'; send {\"type\": \"start\", \"sample_rate\": ...} first",
        )
    if len(data) % 2:
        raise ProtocolError(
            ErrorCode.ODD_LENGTH_PCM,
            f"audio message of {len(data)} bytes is not whole PCM16 samples (2 bytes each); the chunk was dropped",
        )


def parse_server_event(text: str | bytes) -> Any:
    """Parse a server event (used by the Python client and the tests)."""
    return _SERVER_ADAPTER.validate_json(text)


def encode_event(event: BaseModel) -> str:
    return event.model_dump_json()
