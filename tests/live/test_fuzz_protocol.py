"""Fuzzing (hypothesis, a bounded number of examples) of what clients send: the ingest protocol's parser never
raises anything but ``ProtocolError`` and accepts only finite, bounded values; ``POST /v1/sessions`` answers every
body with 400 (or, for a valid one, the session limit's 429), never 500, and quickly."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from avatarcast.live.protocol import (
    CLIENT_MESSAGE_TYPES,
    MAX_ALIGNMENT_WORDS,
    MAX_TIME_MS,
    AlignmentMessage,
    ErrorCode,
    ProtocolError,
    parse_client_message,
)
from avatarcast.live.rest import CreateSessionRequest, RequestError, parse_model

EXAMPLES = 300
CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}

scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
numbers = st.integers(min_value=-5, max_value=10**12) | st.floats(allow_nan=True, allow_infinity=True) | st.text(
    max_size=4) | st.booleans()
word = st.fixed_dictionaries({"word": st.text(max_size=12) | st.integers(), "start_ms": numbers, "end_ms": numbers})
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(CLIENT_MESSAGE_TYPES + ("dance", ""))},
    optional={"sample_rate": st.sampled_from([16000, 44100, "16000", 16000.0, True, None]),
              "version": st.sampled_from([1, 2, "1", 1.0]),
              "words": st.lists(word, max_size=6) | json_values,
              "chars": st.lists(st.text(max_size=2), max_size=6),
              "char_start_times_ms": st.lists(numbers, max_size=6),
              "char_durations_ms": st.lists(numbers, max_size=6),
              "offset_ms": numbers, "text": st.text(max_size=20) | st.integers(), "id": json_values,
              "extra": json_values})


def _check(text) -> None:
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code in CODES and exc.message
        return
    if isinstance(message, AlignmentMessage):
        timings = message.word_timings_s()
        assert len(timings) <= MAX_ALIGNMENT_WORDS * 8
        for _, start, end in timings:
            assert math.isfinite(start) and math.isfinite(end)
            assert 0 <= start <= 2 * MAX_TIME_MS / 1000 and 0 <= end <= 2 * MAX_TIME_MS / 1000


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_ingest_parser_on_message_shaped_input(data):
    _check(json.dumps(data, allow_nan=True))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values.map(lambda v: json.dumps(v, allow_nan=True)) | st.text(max_size=200) | st.binary(max_size=200)
       | st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n))
def test_ingest_parser_on_any_text(text):
    _check(text)


rest_bodies = st.fixed_dictionaries(
    {}, optional={"avatar": scalars, "size": st.sampled_from(["512x512", "64x64", "99x100", "1x1", "", "axb"])
                  | scalars, "fps": numbers, "public": scalars, "instruction": scalars, "seed": numbers,
                  "extra": scalars})


@settings(max_examples=EXAMPLES, deadline=None)
@given(rest_bodies | json_values)
def test_create_session_schema_names_the_field_or_accepts(body):
    try:
        parsed = parse_model(CreateSessionRequest, body)
    except RequestError as exc:
        assert exc.status == 400 and exc.message
        if isinstance(body, dict) and body:
            assert exc.field is not None
        return
    assert isinstance(body, dict)
    assert parsed.public in (None, True, False) and (parsed.public is None or isinstance(body["public"], bool))
    assert parsed.seed is None or (isinstance(body["seed"], int) and not isinstance(body["seed"], bool))
    assert parsed.fps is None or math.isfinite(parsed.fps)


class _ThreadServer:
    """The real server in a thread of its own (no sessions: a valid body reaches the session limit, 429)."""

    def __init__(self) -> None:
        from avatarcast.live.server import ServerConfig, run_server

        self.port = None
        self._stop = None
        ready = threading.Event()

        async def main():
            handle = await run_server(ServerConfig(port=0, default_session=False, max_sessions=0, token="fuzz"))
            self.port = handle.port
            self._stop = asyncio.Event()
            self.loop = asyncio.get_running_loop()
            ready.set()
            await self._stop.wait()
            await handle.close()

        self.thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self.thread.start()
        assert ready.wait(60)

    def post(self, body: bytes) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/v1/sessions", body=body,
                         headers={"Authorization": "Bearer fuzz", "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def server():
    s = _ThreadServer()
    yield s
    s.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rest_bodies.map(lambda b: json.dumps(b, allow_nan=True).encode())
       | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()) | st.binary(max_size=300)
       | st.integers(min_value=1, max_value=20000).map(lambda n: b"[" * n))
def test_post_sessions_never_fails_with_500(server, body):
    t0 = time.monotonic()
    status, answer = server.post(body)
    assert status in (400, 429), (status, answer)
    assert "error" in answer and answer["error"]["message"]
    if status == 400 and answer["error"]["code"] == ErrorCode.INVALID_FIELD:
        assert answer["error"]["field"]
    assert time.monotonic() - t0 < 5.0
