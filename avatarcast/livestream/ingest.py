"""The WebSocket ingest: speech and control in, playback events out, for one session.

Backpressure: after each audio message the handler waits until the session's buffered audio is back within
``max_buffer_ms`` before it reads the next message. While it waits, aiohttp stops reading the socket once its own
small queue is full, so TCP pushes back on the sender and nothing is dropped: a client that pushes faster than real
time (as TTS does) simply finds its ``send`` blocking.

Errors never end the session: malformed JSON, an unknown type, an invalid field, an unsupported sample rate,
odd-length PCM, an oversized message or audio before ``start`` each produce an ``error`` event and the message is
discarded. The connection is closed only for a message over the hard size limit (``ABUSE_FACTOR`` times the
limit: aiohttp closes with 1009) or a failed authentication (refused before the upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from avatarcast.livestream.protocol import (
    PROTOCOL_VERSION,
    AlignmentMessage,
    ErrorCode,
    ErrorEvent,
    InstructionMessage,
    InterruptMessage,
    PingMessage,
    PongEvent,
    ProtocolError,
    ReadyEvent,
    SpeechEndMessage,
    StartMessage,
    check_pcm_chunk,
    encode_event,
    parse_client_message,
)
from avatarcast.livestream.session import Session

log = logging.getLogger(__name__)

ABUSE_FACTOR = 4
"""Messages larger than this many times ``max_message_bytes`` close the connection (1009) instead of an error."""
STATS_INTERVAL_S = 1.0
HEARTBEAT_S = 15.0


async def serve_ingest(request: web.Request, session: Session, max_message_bytes: int) -> web.WebSocketResponse:
    # no permessage-deflate: PCM speech hardly compresses, and inflating every 20 ms message costs both sides CPU
    ws = web.WebSocketResponse(max_msg_size=max_message_bytes * ABUSE_FACTOR, heartbeat=HEARTBEAT_S, compress=False)
    await ws.prepare(request)
    session.ingest_active = True
    scheduler = session.scheduler
    events = session.subscribe()
    slog = logging.LoggerAdapter(log, {"session": session.id})

    async def send(event: Any) -> None:
        if not ws.closed:
            await ws.send_str(encode_event(event))

    async def pump_events() -> None:
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not ws.closed:
            timeout = max(0.0, next_stats - time.monotonic())
            try:
                event = await asyncio.wait_for(events.get(), timeout)
            except asyncio.TimeoutError:
                event = session.stats_event()
                next_stats = time.monotonic() + STATS_INTERVAL_S
            with contextlib.suppress(ConnectionError, RuntimeError):
                await send(event)

    pump = asyncio.create_task(pump_events())
    rate_hz: int | None = None
    try:
        await send(ReadyEvent(session_id=session.id, protocol_version=PROTOCOL_VERSION, fps=session.settings.fps,
                              width=session.settings.width, height=session.settings.height,
                              max_message_bytes=max_message_bytes, max_buffer_ms=int(scheduler.max_buffer_ms)))
        async for msg in ws:
            try:
                if msg.type == WSMsgType.BINARY:
                    received_at = time.monotonic()
                    check_pcm_chunk(msg.data, max_message_bytes, rate_hz is not None)
                    assert rate_hz is not None
                    scheduler.push_audio(msg.data, rate_hz, received_at)
                    await scheduler.wait_for_space()
                elif msg.type == WSMsgType.TEXT:
                    if len(msg.data) > max_message_bytes:
                        raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                                            f"text message of {len(msg.data)} bytes exceeds the limit of "
                                            f"{max_message_bytes} bytes")
                    message = parse_client_message(msg.data)
                    rate_hz = await _handle_control(message, session, rate_hz, send)
                elif msg.type == WSMsgType.ERROR:
                    slog.info("ingest connection error: %s", ws.exception())
                    break
            except ProtocolError as exc:
                await send(ErrorEvent(code=exc.code, message=exc.message))
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        # A client that vanishes mid-utterance: what it sent is played to the end, then the avatar idles.
        scheduler.end_utterance()
        session.unsubscribe(events)
        session.ingest_active = False
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        if ws.close_code == 1009 or (ws.exception() and "too big" in str(ws.exception()).lower()):
            slog.warning("ingest closed: a message exceeded the hard limit of %d bytes",
                         max_message_bytes * ABUSE_FACTOR)
        slog.info("ingest disconnected")
    return ws


async def _handle_control(message: Any, session: Session, rate_hz: int | None, send) -> int | None:
    scheduler = session.scheduler
    if isinstance(message, StartMessage):
        if rate_hz is not None:
            scheduler.end_utterance()  # a new start closes the utterance in progress
        return message.sample_rate
    if isinstance(message, AlignmentMessage):
        from avatarcast.pipeline.alignment import Word, phones_from_words

        words = [Word(text, start, end) for text, start, end in message.word_timings_s()]
        scheduler.add_words(words, phones_from_words(words))
    elif isinstance(message, InstructionMessage):
        scheduler.set_instruction(message.text)
    elif isinstance(message, SpeechEndMessage):
        scheduler.end_utterance()
    elif isinstance(message, InterruptMessage):
        for event in scheduler.interrupt():
            session.emit(event)
    elif isinstance(message, PingMessage):
        await send(PongEvent(id=message.id))
    return rate_hz
