"""The WebSocket ingest: speech and control in, playback events out, for one session.

Buffering, in two tiers, so that the socket is read all the time and an ``interrupt`` acts at once however far
ahead the client has pushed:

- the session's scheduler holds up to ``SCHEDULER_AHEAD_MS`` of speech ahead of playback, resampled and analysed;
- beyond that, audio waits in the session's ``IngestBacklog`` as it came (raw PCM, with the control messages that
  follow it in their order) and moves to the scheduler as playback makes room, so a flood costs its analysis CPU
  at playback pace, not in one burst on the event loop.

The socket is read until the two together hold ``max_buffer_ms``. Only beyond that does the handler stop reading
(aiohttp then stops reading the socket, TCP pushes back on the sender and nothing is dropped). ``interrupt`` and
``ping`` are handled as soon as they are read; ``interrupt`` drops the backlog's speech too. While the handler is
held by backpressure it does not expect the client's pongs (they wait in the same TCP stream), so the keep-alive
never closes a client for pushing ahead.

Errors never end the session: malformed JSON, an unknown type, an invalid field, an unsupported sample rate,
odd-length PCM, an oversized message or audio before ``start`` each produce an ``error`` event and the message is
discarded. The connection is closed only for a message over the hard size limit (``ABUSE_FACTOR`` times the
limit: aiohttp closes with 1009), a client that answers no ping while the socket is being read, a new connection
with the session's token (``take_over``: close code 4001), or a failed authentication (refused before the upgrade).

What one connection can make the server do is bounded, so that no client starves the other sessions:

- per message: its size (``max_message_bytes``), an alignment's words and characters (``protocol.py``), JSON
  nesting; an alignment's phones are worked out in slices of ``PHONES_SLICE_WORDS`` words, a turn of the event
  loop between slices;
- per utterance: ``MAX_WORDS_PER_UTTERANCE`` words of alignment (more is refused with ``quota_exceeded``);
- over time: ``LoopBudget``, the event-loop time spent on the connection's messages (plus a fixed cost per message
  for reading the frame) may average at most ``LOOP_SHARE`` of the loop; beyond a burst of ``LOOP_BURST_S`` the
  handler stops reading until its budget refills, so a flood is slowed by TCP backpressure, not dropped.

Reconnecting (``take_over``): a new connection with the session's token replaces the one that is open (the old one
is closed with 4001 and the speech it had buffered is dropped, as by an interrupt). When the previous connection was
lost without a close (a crash, a network cut), its speech plays on while nobody reconnects, and a new connection
drops what is left of it: a restarted client starts afresh. A connection that closed normally hands its speech
over: it plays to the end and the next connection's speech queues behind it. Alignment words sent for an utterance
that has not started are dropped when their connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from avatarcast.audio.alignment import Word, phones_from_words
from avatarcast.live.protocol import (
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

log = logging.getLogger(__name__)

ABUSE_FACTOR = 4
"""Messages larger than this many times ``max_message_bytes`` close the connection (1009) instead of an error."""
STATS_INTERVAL_S = 1.0
HEARTBEAT_S = 15.0
"""With nothing read for this long, the server pings the client; no answer within half of it closes the
connection (only counted while the socket is being read)."""
BURST_GAP_S = 0.002
"""Messages read closer together than this come from a buffer being drained: each then waits one turn of the
event loop (a client at real-time pace, one message every 20 ms, costs no extra turns)."""
SCHEDULER_AHEAD_MS = 1000.0
"""Speech the scheduler holds ahead of playback (resampled and analysed); the rest waits in the backlog."""
MAX_PARKED_CONTROL_BYTES = 1 << 20
"""Control messages (alignment, instruction, ...) waiting behind backlogged audio, in bytes, before the socket is
no longer read."""
MAX_WORDS_PER_UTTERANCE = 5000
"""Alignment words one utterance may collect (about 30 minutes of speech)."""
PHONES_SLICE_WORDS = 100
"""Words whose phones are worked out between two turns of the event loop."""
LOOP_SHARE = 0.1
"""Average share of the event loop's time (CPU time of its thread) one ingest connection's messages may take."""
LOOP_BURST_S = 0.5
"""Event-loop time a connection may take at once before ``LOOP_SHARE`` applies."""
MESSAGE_OVERHEAD_S = 20e-6
"""Loop time charged per message on top of its measured handling (reading and unmasking the frame)."""
COALESCE_MS = 10.0
"""Audio messages shorter than this are gathered until this much audio is in (or another message comes, or
``COALESCE_WAIT_S`` passes) and handed on together: each hand-over costs resampling and a message to the render
process, which a flood of one-sample messages would otherwise pay per sample."""
COALESCE_WAIT_S = 0.01
CLOSE_REPLACED = 4001
"""WebSocket close code for a connection replaced by a new one with the session's token."""
TAKEOVER_TIMEOUT_S = 3.0


def _cpu_s() -> float:
    """CPU time of the calling thread: what handling a message cost the event loop's thread, without the time it
    waited for the GIL or for a core (wall time would charge a client for the machine's load). Only measured over
    stretches with no ``await`` in them."""
    return time.thread_time()


class LoopBudget:
    """A token bucket of event-loop time: ``charge`` what a message cost; ``wait`` until the bucket is no longer in
    debt (it refills at ``share`` seconds per second, up to ``burst_s``)."""

    def __init__(self, share: float = LOOP_SHARE, burst_s: float = LOOP_BURST_S) -> None:
        self.share = share
        self.burst_s = burst_s
        self.level = burst_s
        self.waited_s = 0.0
        self._t = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.burst_s, self.level + (now - self._t) * self.share)
        self._t = now

    def charge(self, seconds: float) -> None:
        self._refill()
        self.level -= seconds

    @property
    def exhausted(self) -> bool:
        return self.level < 0

    async def wait(self) -> None:
        self._refill()
        while self.level < 0:
            pause = -self.level / self.share
            self.waited_s += pause
            await asyncio.sleep(pause)
            self._refill()


class IngestConnection:
    """The open ingest WebSocket of a session (``session.ingest``)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.replaced = False
        self.done = asyncio.Event()
        self.budget = LoopBudget()


async def take_over(session: Any) -> None:
    """Make room for a new ingest connection: close the open one, dropping its buffered speech; or, when the last
    one was lost without a close, drop what is left of its speech."""
    while (old := session.ingest) is not None:
        old.replaced = True
        if session.backlog.buffered_ms() > 0:
            session.interrupt()  # its speech goes at once (and a reader held by backpressure wakes up)
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(old.ws.close(code=CLOSE_REPLACED,
                                                message=b"replaced by a new connection with this session's token"),
                                   1.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(old.done.wait(), TAKEOVER_TIMEOUT_S)
        if session.ingest is old:  # its handler is stuck: forget it
            session.ingest = None
        session.log.info("ingest taken over by a new connection")
    if session.ingest_lost and session.backlog.buffered_ms() > 0:
        session.log.info("dropping %.0f ms of speech from the ingest connection that was lost",
                         session.backlog.buffered_ms())
        session.interrupt()
    session.ingest_lost = False


@dataclass
class _Parked:
    """One backlogged message: audio (``pcm`` at ``rate_hz``) or an ordered control action."""

    pcm: bytes = b""
    rate_hz: int = 0
    action: Callable[[], None] | None = None
    keep_on_interrupt: bool = False  # an instruction still applies after an interrupt; speech does not
    size: int = 0

    @property
    def ms(self) -> float:
        return len(self.pcm) * 500.0 / self.rate_hz if self.rate_hz else 0.0


class IngestBacklog:
    """A session's speech (and the control messages in order with it) received beyond what its scheduler holds.

    ``push_audio`` and ``control`` hand a message straight to the scheduler when nothing waits and the scheduler has
    room (the path of a client sending at real-time pace); otherwise it waits here, raw, and a feeder task moves it
    on in order as playback makes room. ``interrupt`` drops the waiting speech with the scheduler's. The backlog
    outlives an ingest connection: what a vanished client sent still plays, and the next client queues behind it.
    """

    def __init__(self, scheduler: Any, max_buffer_ms: float) -> None:
        self.scheduler = scheduler
        self.max_buffer_ms = float(max_buffer_ms)
        self._items: deque[_Parked] = deque()
        self._audio_ms = 0.0
        self._control_bytes = 0
        self._room = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.peak_ms = 0.0

    # -- state --

    def backlog_ms(self) -> float:
        """Speech waiting here (not yet with the scheduler)."""
        return self._audio_ms

    def buffered_ms(self) -> float:
        """All speech received and not yet played: the scheduler's and the backlog's."""
        return self.scheduler.buffered_ms() + self._audio_ms

    def full(self) -> bool:
        return (self.buffered_ms() > self.max_buffer_ms or self._control_bytes > MAX_PARKED_CONTROL_BYTES) \
            and not self._closed

    async def wait_for_room(self) -> None:
        """Return once the session buffers less than ``max_buffer_ms`` (the socket is not read until then)."""
        while self.full():
            if self._items:
                self._room.clear()
                await self._room.wait()
            else:
                await self.scheduler.wait_for_space()

    # -- input --

    def push_audio(self, pcm: bytes, rate_hz: int, received_at: float | None = None) -> None:
        if not self._items and not self.scheduler.over_budget():
            self.scheduler.push_audio(pcm, rate_hz, received_at)
            return
        self._park(_Parked(pcm=pcm, rate_hz=rate_hz, size=len(pcm)))

    def control(self, action: Callable[[], None], *, size: int = 0, keep_on_interrupt: bool = False) -> None:
        """Run ``action`` (it acts on the scheduler) after the audio received before it."""
        if not self._items:
            action()
            return
        self._control_bytes += size
        self._park(_Parked(action=action, keep_on_interrupt=keep_on_interrupt, size=size))

    def interrupt(self) -> list[Any]:
        """Drop the waiting speech (instructions still apply), then interrupt the scheduler; returns its
        ``playback.finished`` events."""
        dropped_ms = 0.0
        items, self._items = self._items, deque()
        for item in items:
            if item.action is None:
                dropped_ms += item.ms
            elif item.keep_on_interrupt:
                item.action()
        self._audio_ms = 0.0
        self._control_bytes = 0
        self.scheduler.stats.audio_dropped_ms += dropped_ms
        events = self.scheduler.interrupt()
        self._room.set()
        return events

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        self._audio_ms = 0.0
        self._room.set()
        if self._task is not None:
            self._task.cancel()

    # -- feeding --

    def _park(self, item: _Parked) -> None:
        self._items.append(item)
        self._audio_ms += item.ms
        self.peak_ms = max(self.peak_ms, self._audio_ms)
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._feed(), name="ingest-backlog")

    async def _feed(self) -> None:
        try:
            while self._items and not self._closed:
                item = self._items[0]
                if item.action is None:
                    if self.scheduler.over_budget():
                        await self.scheduler.wait_for_space()
                        continue
                    self._items.popleft()
                    self._audio_ms -= item.ms
                    self.scheduler.push_audio(item.pcm, item.rate_hz)
                else:
                    self._items.popleft()
                    self._control_bytes -= item.size
                    try:
                        item.action()
                    except Exception:
                        log.exception("a backlogged control message failed")
                self._room.set()
            if not self._items:
                self._audio_ms = 0.0  # no rounding residue
        finally:
            self._task = None
            self._room.set()


async def serve_ingest(request: web.Request, session: Any, max_message_bytes: int) -> web.WebSocketResponse:
    # no permessage-deflate: PCM speech hardly compresses, and inflating every 20 ms message costs both sides CPU.
    # The keep-alive is ours (aiohttp's would close a client held back by backpressure: its pong waits unread).
    ws = web.WebSocketResponse(max_msg_size=max_message_bytes * ABUSE_FACTOR, heartbeat=None, autoping=False,
                               compress=False)
    await ws.prepare(request)
    conn = IngestConnection(ws)
    session.ingest = conn
    budget = conn.budget
    backlog: IngestBacklog = session.backlog
    events = session.subscribe()
    slog = logging.LoggerAdapter(log, {"session": session.id})
    reading = {"last_rx": time.monotonic(), "held": False, "released_at": 0.0}

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

    async def keepalive() -> None:
        while not ws.closed:
            await asyncio.sleep(HEARTBEAT_S)
            if reading["held"] or time.monotonic() - reading["last_rx"] < HEARTBEAT_S:
                continue
            sent = time.monotonic()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.ping()
            await asyncio.sleep(HEARTBEAT_S / 2)
            if not reading["held"] and reading["released_at"] <= sent and reading["last_rx"] < sent:
                slog.info("ingest client answered no ping for %.1f s: closing", HEARTBEAT_S / 2)
                reading["ping_timeout"] = True
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"keepalive ping timeout")
                return

    pump = asyncio.create_task(pump_events())
    pinger = asyncio.create_task(keepalive())
    rate_hz: int | None = None
    quota = {"words": 0}  # alignment words of the current utterance
    small = {"pcm": bytearray(), "rate": 0, "at": 0.0, "timer": None}  # short audio messages gathered (COALESCE_MS)

    def flush_small() -> None:
        if small["timer"] is not None:
            small["timer"].cancel()
            small["timer"] = None
        if not small["pcm"]:
            return
        pcm, small["pcm"] = bytes(small["pcm"]), bytearray()
        if conn.replaced:
            return
        if session.drop_until_start:  # an interrupt over REST came after it
            session.scheduler.stats.audio_dropped_ms += len(pcm) * 500.0 / small["rate"]
            return
        t0 = _cpu_s()
        backlog.push_audio(pcm, small["rate"], small["at"])
        budget.charge(_cpu_s() - t0)
    try:
        await send(ReadyEvent(session_id=session.id, protocol_version=PROTOCOL_VERSION, fps=session.settings.fps,
                              width=session.settings.width, height=session.settings.height,
                              max_message_bytes=max_message_bytes, max_buffer_ms=int(backlog.max_buffer_ms)))
        async for msg in ws:
            if conn.replaced:
                break
            now = time.monotonic()
            if now - reading["last_rx"] < BURST_GAP_S:
                # aiohttp hands over buffered messages without returning to the event loop: a flood of small
                # ones would hold every session's playout clock until the buffer is empty (1 s for 20000
                # one-sample messages). A turn of the loop per message of a burst keeps the clocks on time.
                await asyncio.sleep(0)
                if conn.replaced:
                    break
            reading["last_rx"] = now
            if budget.exhausted:  # this connection has had its share of the event loop: read on later
                reading["held"] = True
                try:
                    await budget.wait()
                finally:
                    reading["held"] = False
                    reading["released_at"] = reading["last_rx"] = time.monotonic()
                if conn.replaced:
                    break
            t0 = _cpu_s()
            try:
                if msg.type == WSMsgType.BINARY:
                    check_pcm_chunk(msg.data, max_message_bytes, rate_hz is not None)
                    assert rate_hz is not None
                    if session.drop_until_start:  # sent before an interrupt over REST
                        session.scheduler.stats.audio_dropped_ms += len(msg.data) * 500.0 / rate_hz
                        continue
                    small_bytes = int(rate_hz * COALESCE_MS / 1000.0) * 2
                    if small["pcm"] and small["rate"] != rate_hz:
                        flush_small()
                    if len(msg.data) >= small_bytes and not small["pcm"]:
                        backlog.push_audio(msg.data, rate_hz, reading["last_rx"])
                    else:
                        if not small["pcm"]:
                            small["rate"], small["at"] = rate_hz, reading["last_rx"]
                        small["pcm"] += msg.data
                        if len(small["pcm"]) >= small_bytes:
                            flush_small()
                        elif small["timer"] is None:
                            small["timer"] = asyncio.get_running_loop().call_later(COALESCE_WAIT_S, flush_small)
                    budget.charge(_cpu_s() - t0 + MESSAGE_OVERHEAD_S)
                    t0 = None
                    if backlog.full():
                        reading["held"] = True
                        try:
                            await backlog.wait_for_room()
                        finally:
                            reading["held"] = False
                            reading["released_at"] = reading["last_rx"] = time.monotonic()
                elif msg.type == WSMsgType.TEXT:
                    if len(msg.data) > max_message_bytes:
                        raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE,
                                            f"text message of {len(msg.data)} bytes exceeds the limit of "
                                            f"{max_message_bytes} bytes")
                    flush_small()  # the audio before it goes first
                    message = parse_client_message(msg.data)
                    budget.charge(_cpu_s() - t0 + MESSAGE_OVERHEAD_S)
                    t0 = None
                    rate_hz = await _handle_control(message, session, rate_hz, send, len(msg.data), budget, quota)
                elif msg.type == WSMsgType.PING:
                    budget.charge(_cpu_s() - t0 + MESSAGE_OVERHEAD_S)
                    t0 = None
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    slog.info("ingest connection error: %s", ws.exception())
                    break
            except ProtocolError as exc:
                if t0 is not None:
                    budget.charge(_cpu_s() - t0 + MESSAGE_OVERHEAD_S)
                    t0 = None
                await send(ErrorEvent(code=exc.code, message=exc.message))
            finally:
                if t0 is not None:
                    budget.charge(_cpu_s() - t0 + MESSAGE_OVERHEAD_S)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        # A client that vanishes mid-utterance: what it sent is played to the end, then the avatar idles. Words
        # sent for an utterance that has not started go with their connection.
        flush_small()
        backlog.control(session.scheduler.end_utterance)
        backlog.control(session.scheduler.drop_pending_words)
        session.unsubscribe(events)
        if session.ingest is conn:
            session.ingest = None
        # lost: no close frame from the client (a crash, a network cut) or no answer to our pings
        session.ingest_lost = not conn.replaced and (ws.close_code in (None, WSCloseCode.ABNORMAL_CLOSURE)
                                                     or bool(reading.get("ping_timeout")))
        conn.done.set()
        for task in (pump, pinger):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if ws.close_code == 1009 or (ws.exception() and "too big" in str(ws.exception()).lower()):
            slog.warning("ingest closed: a message exceeded the hard limit of %d bytes",
                         max_message_bytes * ABUSE_FACTOR)
        slog.info("ingest disconnected%s", " (taken over)" if conn.replaced else
                  " (lost)" if session.ingest_lost else "")
    return ws


async def _add_words_in_slices(words: list, session: Any, size: int, budget: LoopBudget) -> None:
    """Hand the words and their phones to the scheduler (after the audio before them), ``PHONES_SLICE_WORDS`` words
    at a time with a turn of the event loop in between: both working out the phones and sending them to the render
    process take time per word. The time is charged to ``budget``."""

    scheduler = session.scheduler
    for i in range(0, len(words), PHONES_SLICE_WORDS):
        if i:
            await asyncio.sleep(0)
        t0 = _cpu_s()
        part = words[i:i + PHONES_SLICE_WORDS]
        phones = phones_from_words(part)
        session.backlog.control(lambda part=part, phones=phones: scheduler.add_words(part, phones),
                                size=size if not i else 0)
        budget.charge(_cpu_s() - t0)


async def _handle_control(message: Any, session: Any, rate_hz: int | None, send, size: int,
                          budget: LoopBudget | None = None, quota: dict | None = None) -> int | None:
    """Apply one control message. Those that belong to the speech stream (start, alignment, instruction,
    speech.end) take effect after the audio received before them; interrupt and ping at once."""
    scheduler = session.scheduler
    backlog: IngestBacklog = session.backlog
    budget = budget if budget is not None else LoopBudget()
    quota = quota if quota is not None else {"words": 0}
    if isinstance(message, StartMessage):
        session.drop_until_start = False
        quota["words"] = 0
        if rate_hz is not None:
            backlog.control(scheduler.end_utterance)  # a new start closes the utterance in progress
        return message.sample_rate
    if session.drop_until_start and isinstance(message, (AlignmentMessage, SpeechEndMessage)):
        return rate_hz  # they belong to the speech dropped by an interrupt over REST
    if isinstance(message, AlignmentMessage):
        timings = message.word_timings_s()
        if quota["words"] + len(timings) > MAX_WORDS_PER_UTTERANCE:
            raise ProtocolError(ErrorCode.QUOTA_EXCEEDED,
                                f"this utterance already has {quota['words']} alignment words; at most "
                                f"{MAX_WORDS_PER_UTTERANCE} per utterance (end it with speech.end)")
        quota["words"] += len(timings)
        words = [Word(text, start, end) for text, start, end in timings]
        await _add_words_in_slices(words, session, size, budget)
    elif isinstance(message, InstructionMessage):
        text = message.text
        backlog.control(lambda: scheduler.set_instruction(text), size=size, keep_on_interrupt=True)
    elif isinstance(message, SpeechEndMessage):
        quota["words"] = 0
        backlog.control(scheduler.end_utterance)
    elif isinstance(message, InterruptMessage):
        quota["words"] = 0
        t0 = _cpu_s()
        session.interrupt()
        budget.charge(_cpu_s() - t0)
    elif isinstance(message, PingMessage):
        await send(PongEvent(id=message.id))
    return rate_hz
