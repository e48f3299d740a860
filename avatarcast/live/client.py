"""An async Python client for the ingest WebSocket (what a TTS bridge uses to drive an avatar).

```python
async with IngestClient("ws://127.0.0.1:8080/v1/sessions/default/ingest", token=INGEST_TOKEN) as client:
    await client.start(sample_rate=24000)
    await client.send_audio(pcm16_bytes, realtime=False)   # TTS pace: as fast as the server accepts
    await client.speech_end()
    finished = await client.wait_for("playback.finished")
```
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, AsyncIterator

import aiohttp
import websockets

from avatarcast.core.errors import AvatarcastError, ConnectionLostError, StateError
from avatarcast.live.protocol import PROTOCOL_VERSION, parse_server_event

CHUNK_MS = 20
"""Default audio message length."""


class IngestError(AvatarcastError):
    """The server answered with an ``error`` event where the caller waited for something else."""


class IngestClient:
    """Connects to ``/v1/sessions/{id}/ingest``; events are collected in the background (``events``,
    ``wait_for``) so sending never waits on reading."""

    def __init__(self, url: str, token: str | None = None, *, max_size: int | None = 2 ** 22,
                 ping_interval: float | None = 20.0, ping_timeout: float | None = 20.0) -> None:
        """``ping_interval`` / ``ping_timeout``: the client's keep-alive (the ``websockets`` defaults). The server
        reads the socket until the session buffers ``max_buffer_ms`` (the ``ready`` event), so pings are answered
        while a client pushes ahead within that; beyond it a ping waits behind the audio in TCP."""
        self.url = url
        self.token = token
        self.max_size = max_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.sample_rate: int | None = None
        self.ready: Any = None
        self._ws: Any = None
        self._events: asyncio.Queue = asyncio.Queue()
        self._history: list[Any] = []
        self._reader: asyncio.Task | None = None

    async def connect(self) -> Any:
        """Open the connection and return the server's ``ready`` event."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._ws = await websockets.connect(self.url, additional_headers=headers, max_size=self.max_size,
                                            open_timeout=10, compression=None,
                                            ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)
        self._reader = asyncio.create_task(self._read())
        self.ready = await self.wait_for("ready", timeout=10)
        return self.ready

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                event = parse_server_event(raw)
                self._history.append(event)
                await self._events.put(event)
        except websockets.ConnectionClosed:
            pass
        finally:
            await self._events.put(None)

    async def __aenter__(self) -> "IngestClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    # ------------------------------------------------------------------------------------------ sending

    async def send_json(self, message: dict[str, Any]) -> None:
        await self._ws.send(json.dumps(message))

    async def start(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        await self.send_json({"type": "start", "version": PROTOCOL_VERSION, "sample_rate": sample_rate})

    async def send_audio(self, pcm: bytes, *, realtime: bool = False, speed: float = 1.0,
                         chunk_ms: int = CHUNK_MS) -> None:
        """Send PCM16 LE mono at the declared rate in ``chunk_ms`` messages: at real-time pace (``realtime``,
        optionally ``speed`` times faster) or as fast as the server's backpressure allows."""
        if self.sample_rate is None:
            raise StateError("call start(sample_rate) before sending audio")
        step = max(2, int(self.sample_rate * chunk_ms / 1000) * 2)
        t0 = time.monotonic()
        for i, pos in enumerate(range(0, len(pcm), step)):
            await self._ws.send(pcm[pos:pos + step])
            if realtime:
                delay = t0 + (i + 1) * chunk_ms / 1000.0 / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send(data)

    async def alignment(self, *, words: list[dict] | None = None, chars: list[str] | None = None,
                        char_start_times_ms: list[float] | None = None,
                        char_durations_ms: list[float] | None = None, offset_ms: float = 0.0) -> None:
        msg: dict[str, Any] = {"type": "alignment", "offset_ms": offset_ms}
        if words is not None:
            msg["words"] = words
        else:
            msg.update(chars=chars, char_start_times_ms=char_start_times_ms)
            if char_durations_ms is not None:
                msg["char_durations_ms"] = char_durations_ms
        await self.send_json(msg)

    async def instruction(self, text: str) -> None:
        await self.send_json({"type": "instruction", "text": text})

    async def speech_end(self) -> None:
        await self.send_json({"type": "speech.end"})

    async def interrupt(self, *, out_of_band: bool = False) -> Any:
        """Barge in. ``out_of_band``: over ``POST /v1/sessions/{id}/interrupt`` instead of this socket, so it
        does not wait behind audio the server has not read yet (beyond ``max_buffer_ms``); the server then drops
        the audio still on its way, and the next speech needs a new ``start``. Returns the server's answer then
        (the utterances cut and where)."""
        if not out_of_band:
            await self.send_json({"type": "interrupt"})
            return None
        url = self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        url = url.rsplit("/ingest", 1)[0] + "/interrupt"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.post(url, headers=headers) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise IngestError(f"interrupt refused: HTTP {resp.status}: {body}")
        self.sample_rate = None  # audio sent from here on needs a new start
        return body

    async def ping(self, ping_id: str | int | None = None) -> Any:
        await self.send_json({"type": "ping", "id": ping_id})
        return await self.wait_for("pong")

    # ------------------------------------------------------------------------------------------ receiving

    @property
    def history(self) -> list[Any]:
        """Every event received so far."""
        return list(self._history)

    async def next_event(self, timeout: float | None = None) -> Any:
        """The next event, or ``None`` once the connection is closed."""
        return await asyncio.wait_for(self._events.get(), timeout)

    async def events(self) -> AsyncIterator[Any]:
        while (event := await self._events.get()) is not None:
            yield event

    async def wait_for(self, event_type: str, timeout: float = 30.0, *, raise_on_error: bool = False) -> Any:
        """Skip events until one of ``event_type`` arrives (``TimeoutError`` after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            event = await asyncio.wait_for(self._events.get(), max(0.0, deadline - time.monotonic()))
            if event is None:
                raise ConnectionLostError(f"the connection closed before a {event_type!r} event")
            if event.type == event_type:
                return event
            if raise_on_error and event.type == "error":
                raise IngestError(f"{event.code}: {event.message}")
