"""Live latency benchmark: a real server, real WebRTC receivers, real speech, figures named as in the design.

The server runs in a child process on 127.0.0.1 and a free port, so that its CPU use (with its own render
processes) is measured alone, with psutil.
For each of ``sessions`` concurrent sessions the benchmark creates a session over REST, connects an aiortc WHEP
receiver (``receiver.WhepReceiver``) and an ingest client (``client.IngestClient``), and pushes utterances cut from
a speech recording at real-time pace (20 ms messages), with pauses between them; every fourth utterance is
interrupted part-way (``interrupt_every``). After the run it opens one more session on the running server to
measure a warm start. With ``receiver_nice`` the receivers run in a child process of their own at that much lower
priority (``ReceiversApart``), apart from the ingest clients: their decoding then delays neither the clients' sends
nor the server.

How each figure is measured (``cold`` = first utterance after the server started, ``warm`` = first utterance of a
session opened on a running server, ``steady`` = every later utterance):

- ``avatar_first_frame_ms``: the server's own figure for each utterance (first audio byte received -> its first
  video frame leaves the scheduler), read from the session's stats right after ``playback.started``.
- ``webrtc_first_frame_ms``: first audio byte *sent* -> the receiver has decoded the video frame that carries the
  utterance's first audio. That frame is found by media timestamps: the speech onset is located in the decoded
  audio (first sample above the threshold after the utterance was sent; its RTP position, 48 kHz), and the frame is
  the one whose 90 kHz RTP timestamp covers that position. Both tracks start on the same media-clock frame, so
  their RTP timelines share one origin.
- ``av_drift_ms``: audio timestamp minus video timestamp of paired media at the receiver: for each utterance, the
  speech onset's position in the audio timeline minus the position of the first video frame whose mouth region
  leaves its resting appearance (``_first_departure``). It checks the shared-origin claim by content, so it has
  one-frame resolution: a correct stream reads about +8 ms (Opus's algorithmic delay plus the onset's place in the
  first packet), and single utterances read one frame off when the content hides the start (a first phoneme with
  a closed mouth: -32 ms; expression moving a frame before the sound: +48 ms). A timestamp slip or a mis-paired
  start shows up in every utterance, as whole frames or more.
- ``underrun_ms``: the server's count (speech frames shown late); ``steady`` excludes the first utterance.
- ``render_fps`` (server) and ``output_fps`` (decoded frames per second at the receiver; the server's figure too).
- ``interrupt_to_silence_ms``: interrupt sent -> the moment the receiver's audio falls silent for good: the last
  speech sample of the last packet with sound in it, placed within that 20 ms packet from the packet's decode time
  (the aiortc receiver), or the first level reading below the speech level (Chromium, read every 5 ms). With the
  aiortc receiver it includes aiortc's fixed 80 ms audio jitter buffer; the server's own figure is reported beside
  it.
- ``interrupt_to_listening_ms``: the server's figure (interrupt -> the listening pose is on screen).
- ``cpu``: the server's CPU time over the run (its process and its render processes; 100 % = one core) and the
  machine's total use.

With ``receiver="chromium"`` (``--browser``) the viewer page in headless Chromium is the receiver
(``browser.ChromiumReceiver``). The page gives presentation times and RTP timestamps of the frames it shows, and
the level of the audio it receives (Web Audio), but no audio timestamps; so ``webrtc_first_frame_ms`` ends at the
first presented frame whose mouth moves, and ``av_drift_ms`` is the time the speech is heard (level onset) minus
the time the mouth is seen to move, which includes the Web Audio tap's own buffering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import os
import platform
import secrets
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import avatarcast
from avatarcast.audio.io import float_to_pcm16, load_audio
from avatarcast.audio.vad import speech_regions
from avatarcast.core.errors import InputError
from avatarcast.core.types import AUDIO_RATE_HZ
from avatarcast.live.client import IngestClient
from avatarcast.live.load import cpu_model
from avatarcast.live.runtime import freeze_startup_objects
from avatarcast.live.server import ServerConfig, run_server
from avatarcast_bench.browser import ChromiumHost, ChromiumReceiver, browser_unavailable, in_loopback_namespace
from avatarcast_bench.receiver import (CONNECT_TIMEOUT_S, RECEIVER_AUDIO_RATE_HZ, SPEECH_LEVEL_DBFS, ReceiverLog,
                                       WhepReceiver)

log = logging.getLogger(__name__)

DEFAULT_SPEECH = Path(avatarcast.__file__).resolve().parent / "assets" / "demo_speech.flac"
CHUNK_S = 0.020
"""Length of each audio message (a TTS stream's usual packet)."""
PAUSE_S = 1.0
"""Silence between utterances (after the previous one finished playing)."""
INTERRUPT_EVERY = 4
"""Every Nth utterance is interrupted."""
INTERRUPT_AFTER_S = 1.0
"""How much of an interrupted utterance is sent before the interrupt."""
UTTERANCE_MIN_S, UTTERANCE_MAX_S = 1.2, 3.2
"""Utterances are cut from the recording at pauses into pieces of about this length."""
SETTLE_S = 1.0
"""Idle time after a receiver connects before the first utterance (the idle baseline for the mouth detector)."""
SERVER_START_TIMEOUT_S = 120.0
MOTION_FLOOR = 0.3
"""Smallest mouth-region luma change (0-255 scale, mean over the region) that counts as the mouth moving."""
SILENCE_HOLD_S = 0.1
"""After an interrupt, audio counts as silent once it stays below the speech level this long."""
FIRST_FRAME_TOLERANCE_90K = 900
"""10 ms: a speech onset this close after a frame boundary may be the codec smearing the onset of that frame."""


# ---------------------------------------------------------------------------------------------- configuration


@dataclass
class BenchConfig:
    audio: str | None = None
    portrait: str | None = None
    sessions: int = 1
    duration_s: float = 20.0
    width: int = 512
    height: int = 512
    fps: float = 25.0
    receiver: str = "aiortc"  # or "chromium"
    warm_probe: bool = True
    interrupt_every: int = INTERRUPT_EVERY  # 0 = never
    seed: int = 0
    idle_hold_at: float = 85.0  # the server's setting (machine CPU %; 0 = idle frames always rendered)
    client_nice: int = 0  # run the receivers and ingest clients at this much lower CPU priority than the server
    receiver_nice: int | None = None  # None: the receivers run with the clients; N: in a process of their own at +N
    start_cushion_ms: float | None = None  # the server's --start-cushion-ms (None: adaptive)
    realtime_priority: int = 0  # the server's --realtime-priority (0: the normal scheduling policy)
    worker_nice: int = 0  # the server's --worker-nice


@dataclass
class UtteranceRecord:
    session: int
    index: int
    label: str  # cold | warm | steady
    duration_s: float
    interrupted: bool = False
    t_first_byte: float = math.nan
    t_last_byte: float = math.nan
    send_late_ms: float = 0.0  # the benchmark's own client: its latest audio message against real-time pace
    t_interrupt: float = math.nan
    t_started_event: float = math.nan
    t_finished_event: float = math.nan
    avatar_first_frame_ms: float = math.nan
    webrtc_first_frame_ms: float = math.nan
    av_drift_ms: float = math.nan
    interrupt_to_silence_ms: float = math.nan
    server_interrupt_to_silence_ms: float = math.nan
    interrupt_to_listening_ms: float = math.nan


@dataclass
class SessionResult:
    index: int
    label: str
    utterances: list[UtteranceRecord] = field(default_factory=list)
    stats_timeline: list[tuple[float, dict]] = field(default_factory=list)
    final_stats: dict = field(default_factory=dict)
    underrun_after_first_ms: float = 0.0
    receiver: ReceiverLog | None = None
    t_start: float = 0.0
    t_end: float = 0.0


def utterance_pieces(samples: np.ndarray, rate_hz: int = AUDIO_RATE_HZ) -> list[np.ndarray]:
    """Cut a recording into utterances that start at a speech onset and end at a pause."""

    regions = speech_regions(samples, rate_hz) or [(0.0, len(samples) / rate_hz)]
    pieces: list[np.ndarray] = []
    start = end = None
    for r0, r1 in regions:
        if start is None:
            start, end = r0, r1
            continue
        if r1 - start <= UTTERANCE_MAX_S or end - start < UTTERANCE_MIN_S:
            end = r1
        else:
            pieces.append(samples[int(start * rate_hz):int(end * rate_hz)])
            start, end = r0, r1
    if start is not None:
        pieces.append(samples[int(start * rate_hz):int(end * rate_hz)])
    out: list[np.ndarray] = []
    for p in pieces:
        out.extend(_split_long(_from_onset(p, rate_hz), rate_hz))
    out = [p for p in out if len(p) > 0.3 * rate_hz]
    if not out:
        raise InputError("the speech recording has no audible speech to push; use a recording with speech")
    return out


def _from_onset(p: np.ndarray, rate_hz: int) -> np.ndarray:
    """Begin at the first clearly audible sample (2 ms before it): the onset is what the benchmark times."""
    loud = np.flatnonzero(np.abs(p) > 0.02)
    return np.asarray(p[max(0, loud[0] - int(0.002 * rate_hz)):] if loud.size else p[:0], np.float32)


def _split_long(p: np.ndarray, rate_hz: int) -> list[np.ndarray]:
    """Split a piece longer than UTTERANCE_MAX_S at its quietest 30 ms between UTTERANCE_MIN_S and the maximum."""
    out = []
    win = int(0.03 * rate_hz)
    while len(p) > UTTERANCE_MAX_S * rate_hz:
        lo, hi = int(UTTERANCE_MIN_S * rate_hz), int(UTTERANCE_MAX_S * rate_hz)
        energy = np.convolve(p[lo:hi] ** 2, np.ones(win, np.float32), mode="valid")
        cut = lo + int(np.argmin(energy)) + win // 2
        out.append(p[:cut])
        p = _from_onset(p[cut:], rate_hz)
    out.append(p)
    return out


# ---------------------------------------------------------------------------------------------- server process


def serve_until_stdin_closes(config: dict) -> None:
    """Child process: run the live server, print ``{"port", "pid"}`` as one JSON line, stop when stdin closes."""
    logging.basicConfig(level=logging.WARNING)

    async def main() -> None:
        handle = await run_server(ServerConfig(**config))
        print(json.dumps({"port": handle.port, "pid": os.getpid()}), flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(sys.stdin.fileno(), stop.set)  # readable = EOF: the parent has gone or asked to stop
        await stop.wait()
        await handle.close()

    asyncio.run(main())


class ServerProcess:
    """The live server in a child process on 127.0.0.1 and a free port."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.token = secrets.token_urlsafe(18)
        self.config = dict(host="127.0.0.1", port=0, avatar=cfg.portrait, width=cfg.width, height=cfg.height,
                           fps=cfg.fps, token=self.token, default_session=False,
                           max_sessions=cfg.sessions + 1, public=False, idle_hold_at=cfg.idle_hold_at,
                           start_cushion_ms=cfg.start_cushion_ms, realtime_priority=cfg.realtime_priority,
                           worker_nice=cfg.worker_nice)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.pid = 0

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "avatarcast_bench.latency", "--serve", json.dumps(self.config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], SERVER_START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError("the live server did not start (see its log above)")
        msg = json.loads(line)
        self.port, self.pid = int(msg["port"]), int(msg["pid"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(Exception):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.terminate()  # our own child, by its handle
            proc.wait(5)


# ---------------------------------------------------------------------------------------------- receivers apart


RECEIVERS_STOP_TIMEOUT_S = 60.0


def quiet_webrtc_logs(level: int = logging.WARNING) -> None:
    """aioice's and aiortc's per-candidate INFO lines would bury the table: ``level`` and above only."""
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(level)


def _receivers_main(conn: Any, nice: int) -> None:
    """Child process: aiortc receivers at nice +``nice``. Each ``("connect", key, url, token)`` connects one and is
    answered ``("connected", key)`` or ``("failed", key, why)``; ``("stop",)`` (or the parent's end closing) closes
    them all and is answered ``("logs", {key: ReceiverLog})``."""
    if nice:
        os.nice(nice)
    logging.basicConfig(level=logging.WARNING)
    quiet_webrtc_logs()
    freeze_startup_objects(("aiortc", "avatarcast_bench.receiver"))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def readable() -> None:
            try:
                inbox.put_nowait(conn.recv())
            except (EOFError, OSError):
                loop.remove_reader(conn.fileno())
                inbox.put_nowait(("stop",))

        receivers: dict[int, WhepReceiver] = {}

        async def connect(key: int, url: str, token: str) -> None:
            rx = receivers[key] = WhepReceiver(url, token)
            try:
                await rx.connect()
                conn.send(("connected", key))
            except Exception as exc:  # reported to the parent, which fails the run with it
                conn.send(("failed", key, f"{type(exc).__name__}: {exc}"))

        loop.add_reader(conn.fileno(), readable)
        tasks = []
        while True:
            msg = await inbox.get()
            if msg[0] == "connect":
                tasks.append(asyncio.create_task(connect(*msg[1:])))
            elif msg[0] == "stop":
                break
        await asyncio.gather(*tasks, return_exceptions=True)
        for rx in receivers.values():
            with contextlib.suppress(Exception):
                await rx.close()
        with contextlib.suppress(OSError):
            conn.send(("logs", {key: rx.log for key, rx in receivers.items()}))

    asyncio.run(main())


class ReceiversApart:
    """The sessions' aiortc receivers in a child process of their own, at lower CPU priority: the viewers' decoding
    (most of the benchmark's own CPU) then delays neither the ingest clients' sends nor the server, as with viewers
    on other machines. Their logs come back when they stop."""

    def __init__(self, nice: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_receivers_main, args=(child, nice), name="bench-receivers", daemon=True)
        self.proc.start()
        child.close()
        self.pid = self.proc.pid

    async def _recv(self, timeout_s: float) -> tuple:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self.conn.poll, timeout_s):
            raise RuntimeError(f"the receivers' process did not answer within {timeout_s:.0f} s")
        return self.conn.recv()

    async def connect(self, key: int, url: str, token: str) -> None:
        self.conn.send(("connect", key, url, token))
        msg = await self._recv(CONNECT_TIMEOUT_S + 5.0)
        if msg[0] != "connected":
            raise RuntimeError(f"receiver {key} could not connect: {msg[2] if len(msg) > 2 else msg}")

    async def stop(self) -> dict[int, ReceiverLog]:
        """Close the receivers and return their logs (empty if the process has gone)."""
        logs: dict[int, ReceiverLog] = {}
        try:
            self.conn.send(("stop",))
            msg = await self._recv(RECEIVERS_STOP_TIMEOUT_S)
            if msg[0] == "logs":
                logs = msg[1]
        except (OSError, EOFError, RuntimeError) as exc:
            log.warning("the receivers' process: %s", exc)
        self.conn.close()
        await asyncio.get_running_loop().run_in_executor(None, self.proc.join, 10.0)
        if self.proc.is_alive():
            self.proc.terminate()  # our own child, by its handle
        return logs


# ---------------------------------------------------------------------------------------------- one session


class SessionDriver:
    """Creates one session, watches it with a receiver and pushes utterances into it."""

    def __init__(self, index: int, label: str, base_url: str, admin_token: str, cfg: BenchConfig,
                 pieces: list[np.ndarray], browser: Any = None, apart: "ReceiversApart | None" = None) -> None:
        self.browser = browser
        self.apart = apart
        self.index = index
        self.result = SessionResult(index=index, label=label)
        self.base_url = base_url
        self.admin = admin_token
        self.cfg = cfg
        self.pieces = pieces
        self.info: dict = {}
        self.http: Any = None
        self.client: Any = None
        self.receiver: Any = None
        self._started: dict[str, float] = {}
        self._finished: dict[str, tuple[float, Any]] = {}
        self._event_task: asyncio.Task | None = None
        self._stats_waiters: list[asyncio.Task] = []

    async def open(self) -> None:
        from aiohttp import ClientSession

        self.http = ClientSession(headers={"Authorization": f"Bearer {self.admin}"})
        body = {"size": f"{self.cfg.width}x{self.cfg.height}", "fps": self.cfg.fps, "seed": self.cfg.seed + self.index}
        async with self.http.post(f"{self.base_url}/v1/sessions", json=body) as resp:
            if resp.status != 201:
                raise RuntimeError(f"creating a session failed: HTTP {resp.status}: {await resp.text()}")
            self.info = await resp.json()
        urls = self.info["urls"]
        if self.apart is not None:
            await self.apart.connect(self.index, urls["whep"], self.info["viewer_token"])
        else:
            if self.browser is not None:
                self.receiver = ChromiumReceiver(self.browser, urls["view"])
            else:
                self.receiver = WhepReceiver(urls["whep"], self.info["viewer_token"])
            await self.receiver.connect()
        self.client = IngestClient(urls["ingest"], self.info["ingest_token"])
        await self.client.connect()
        self._event_task = asyncio.create_task(self._watch_events())
        await self.client.start(sample_rate=AUDIO_RATE_HZ)
        if self.receiver is not None:
            self.result.receiver = self.receiver.log  # with receivers apart: filled in when they stop

    async def stats(self) -> dict:
        async with self.http.get(self.info["urls"]["stats"]) as resp:
            return await resp.json()

    async def _watch_events(self) -> None:
        async for event in self.client.events():
            now = time.monotonic()
            if event.type == "playback.started":
                self._started[event.utterance_id] = now
                self._stats_waiters.append(asyncio.create_task(self._first_frame_stats(event.utterance_id)))
            elif event.type == "playback.finished":
                self._finished[event.utterance_id] = (now, event)
            elif event.type == "stats":
                self.result.stats_timeline.append((now, event.model_dump()))

    async def _first_frame_stats(self, utterance_id: str) -> None:
        st = await self.stats()
        self._started[utterance_id + ":afm"] = float((st.get("avatar_first_frame_ms") or {}).get("last") or math.nan)

    async def _wait_key(self, table: dict, key: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while key not in table and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return table.get(key)

    async def speak(self, n: int, label: str, interrupt: bool) -> UtteranceRecord:
        """Push utterance ``n`` at real-time pace; interrupt it part-way when asked. Returns its record."""

        piece = self.pieces[n % len(self.pieces)]
        pcm = float_to_pcm16(piece)
        rec = UtteranceRecord(session=self.index, index=n, label=label, duration_s=len(piece) / AUDIO_RATE_HZ,
                              interrupted=interrupt)
        uid = f"utt_{n + 1}"  # the server numbers a session's utterances from 1, in arrival order
        step = int(CHUNK_S * AUDIO_RATE_HZ) * 2
        limit = len(pcm) if not interrupt else min(len(pcm), int(INTERRUPT_AFTER_S * AUDIO_RATE_HZ) * 2)
        before = await self.stats() if interrupt else None
        t0 = time.monotonic()
        for i, pos in enumerate(range(0, limit, step)):
            now = time.monotonic()
            if i == 0:
                rec.t_first_byte = now
            rec.send_late_ms = max(rec.send_late_ms, (now - (t0 + i * CHUNK_S)) * 1000.0)
            await self.client.send_bytes(pcm[pos:pos + step])
            delay = t0 + (i + 1) * CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        rec.t_last_byte = time.monotonic()
        if interrupt:
            await self._wait_key(self._started, uid, 5.0)
            rec.t_interrupt = time.monotonic()
            await self.client.interrupt()
            await asyncio.sleep(0.6)  # the transition to the listening pose (~0.25 s) and the stats
            after = await self.stats()
            for key in ("interrupt_to_silence_ms", "interrupt_to_listening_ms"):
                count_before = (before.get(key) or {}).get("count", 0)
                summary = after.get(key) or {}
                if summary.get("count", 0) > count_before:
                    value = float(summary.get("last"))
                    if key == "interrupt_to_silence_ms":
                        rec.server_interrupt_to_silence_ms = value
                    else:
                        rec.interrupt_to_listening_ms = value
        else:
            await self.client.speech_end()
        await self._wait_key(self._started, uid, 10.0)
        fin = await self._wait_key(self._finished, uid, rec.duration_s + 10.0)
        rec.t_started_event = self._started.get(uid, math.nan)
        rec.t_finished_event = fin[0] if fin else math.nan
        await self._wait_key(self._started, uid + ":afm", 2.0)
        rec.avatar_first_frame_ms = self._started.get(uid + ":afm", math.nan)
        self.result.utterances.append(rec)
        return rec

    async def run(self, until: float, first_label: str) -> None:
        self.result.t_start = time.monotonic()
        await asyncio.sleep(SETTLE_S)
        every = self.cfg.interrupt_every
        n = 0
        while True:
            label = first_label if n == 0 else "steady"
            await self.speak(n, label, interrupt=every > 0 and n % every == every - 1)
            if n == 0:
                self.result.underrun_after_first_ms = float((await self.stats()).get("underrun_ms", 0.0))
            n += 1
            await asyncio.sleep(PAUSE_S)
            if time.monotonic() >= until:
                break
        await asyncio.sleep(0.3)
        self.result.final_stats = await self.stats()
        self.result.t_end = time.monotonic()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self._event_task is not None:
            self._event_task.cancel()
            await asyncio.gather(self._event_task, *self._stats_waiters, return_exceptions=True)
        if self.receiver is not None:
            await self.receiver.close()
        if self.http is not None:
            with contextlib.suppress(Exception):
                async with self.http.delete(f"{self.base_url}/v1/sessions/{self.info['id']}"):
                    pass
            await self.http.close()


# ---------------------------------------------------------------------------------------------- analysis


def _audio_onset(rx: ReceiverLog, after_t: float, before_t: float) -> tuple[int, float] | None:
    """(48 kHz RTP position, arrival time) of the first speech sample that arrived in (after_t, before_t)."""
    for a in rx.audio:
        if a.t <= after_t:
            continue
        if a.t >= before_t:
            return None
        if a.onset_index >= 0:  # between utterances the server sends digital silence: any sound is speech
            return a.pts + a.onset_index, a.t
    return None


def _frame_at(rx: ReceiverLog, pts90: int) -> int | None:
    """Index of the video frame whose timestamp interval covers ``pts90``."""
    best = None
    for i, v in enumerate(rx.video):
        if v.pts <= pts90 and (best is None or v.pts > rx.video[best].pts):
            best = i
    return best


def _first_departure(rx: ReceiverLog, idle: list[int], near: list[int]) -> int | None:
    """Index of the first frame in ``near`` whose mouth region leaves the resting appearance of the ``idle`` frames.

    The rest is the mean mouth-region thumbnail of the idle frames; a frame leaves it when its mean absolute
    difference from the rest exceeds what the idle frames themselves show (breathing, micro-motion) by a clear
    margin. Without thumbnails it falls back to frame-to-frame motion."""
    if len(idle) < 5 or not near:
        return None
    crops = rx.crops if len(rx.crops) == len(rx.video) else []
    if crops and all(crops[i] is not None for i in idle + near):
        rest = np.mean([crops[i].astype(np.float32) for i in idle], axis=0)

        def score(i: int) -> float:
            return float(np.mean(np.abs(crops[i].astype(np.float32) - rest)))
    else:
        def score(i: int) -> float:
            return rx.video[i].motion
    base = np.array([score(i) for i in idle])
    med = float(np.median(base))
    mad = float(np.median(np.abs(base - med)))
    threshold = med + max(6.0 * 1.4826 * mad, MOTION_FLOOR)
    for i in near:
        if score(i) > threshold:
            return i
    return None


def _mouth_onset(rx: ReceiverLog, pts90: int, frame_90k: float) -> int | None:
    """The first frame around media position ``pts90`` (90 kHz) whose mouth moves."""
    idle = [i for i, v in enumerate(rx.video) if pts90 - 15 * frame_90k <= v.pts < pts90 - 1.5 * frame_90k]
    near = [i for i, v in enumerate(rx.video) if pts90 - 1.5 * frame_90k <= v.pts <= pts90 + 8 * frame_90k]
    return _first_departure(rx, idle, near)


def _mouth_onset_after(rx: ReceiverLog, t: float) -> int | None:
    """The first frame presented after wall time ``t`` whose mouth moves (idle reference: the 0.6 s before)."""
    idle = [i for i, v in enumerate(rx.video) if t - 0.6 <= v.t <= t]
    near = [i for i, v in enumerate(rx.video) if t < v.t <= t + 2.0]
    return _first_departure(rx, idle, near)


def _level_onset(rx: ReceiverLog, after_t: float, before_t: float) -> float | None:
    """Wall time at which the heard audio level first rises to speech in (after_t, before_t)."""
    for a in rx.audio:
        if after_t < a.t < before_t and a.rms_dbfs > SPEECH_LEVEL_DBFS:
            return a.t
    return None


def _silence_after(rx: ReceiverLog, t: float) -> float | None:
    """When the audio heard after ``t`` falls silent and stays so for a while: the arrival time of the first silent
    audio record, or earlier, where the record before it (also after ``t``) says where in its packet its sound
    ended (``end_index``; the cut's short fade-out ends inside a packet)."""
    run_start = None
    prev = None
    for a in rx.audio:
        if a.t <= t:
            continue
        if a.rms_dbfs <= SPEECH_LEVEL_DBFS:
            if run_start is None:
                run_start = a.t
                if prev is not None and 0 <= prev.end_index < prev.samples:
                    run_start = min(a.t, max(t, prev.t + prev.end_index / RECEIVER_AUDIO_RATE_HZ))
            if a.t - run_start >= SILENCE_HOLD_S:
                return run_start
        else:
            run_start = None
        prev = a
    return None


def analyse_session(res: SessionResult, fps: float) -> dict[str, Any]:
    """Fill in the receiver-side figures of every utterance and summarise the session."""
    rx = res.receiver
    assert rx is not None
    frame_90k = 90000.0 / fps
    utts = res.utterances
    for i, u in enumerate(utts):
        nxt = utts[i + 1].t_first_byte if i + 1 < len(utts) else math.inf
        if rx.kind == "chromium":  # no audio timestamps in the page: time what the viewer sees and hears
            # no frame of the utterance can be on screen before the server sent its first one (playback.started):
            # a mouth movement seen earlier is the idle animation, not the speech
            since = u.t_first_byte
            if not math.isnan(u.t_started_event):
                since = max(since, u.t_started_event - 1.0 / fps)
            m = _mouth_onset_after(rx, since)
            heard = _level_onset(rx, u.t_first_byte, nxt)
            if m is not None:
                u.webrtc_first_frame_ms = (rx.video[m].t - u.t_first_byte) * 1000.0
                if heard is not None:
                    u.av_drift_ms = (heard - rx.video[m].t) * 1000.0
            onset = None
        else:
            onset = _audio_onset(rx, u.t_first_byte, nxt)
        if onset is not None:
            pos48, _ = onset
            pos90 = pos48 * 90000 // 48000
            k = _frame_at(rx, pos90 + FIRST_FRAME_TOLERANCE_90K)
            if k is not None:
                u.webrtc_first_frame_ms = (rx.video[k].t - u.t_first_byte) * 1000.0
            m = _mouth_onset(rx, pos90, frame_90k)
            if m is not None:
                u.av_drift_ms = (pos48 / 48.0) - (rx.video[m].pts / 90.0)
        if u.interrupted and not math.isnan(u.t_interrupt):
            t_sil = _silence_after(rx, u.t_interrupt)
            if t_sil is not None:
                u.interrupt_to_silence_ms = (t_sil - u.t_interrupt) * 1000.0

    video = [v for v in rx.video if res.t_start <= v.t <= res.t_end]
    out_fps = (len(video) - 1) / (video[-1].t - video[0].t) if len(video) > 1 else 0.0
    missing = 0
    for a, b in zip(rx.video, rx.video[1:]):
        gap = (b.pts - a.pts) / frame_90k
        if gap > 1.5:
            missing += int(round(gap)) - 1
    # arrival skew: how much later a video frame is decoded than the audio of the same media time
    skews = []
    if rx.audio and rx.video and rx.kind == "aiortc":
        a_pts = np.array([a.pts for a in rx.audio], np.float64) / 48000.0
        a_t = np.array([a.t for a in rx.audio], np.float64)
        for v in rx.video[::5]:
            m = v.pts / 90000.0
            if a_pts[0] <= m <= a_pts[-1]:
                skews.append((v.t - float(np.interp(m, a_pts, a_t))) * 1000.0)
    timeline = res.stats_timeline
    render = [s.get("render_fps", 0.0) for _, s in timeline if s.get("render_fps")]
    server_out = [s.get("output_fps", 0.0) for _, s in timeline if s.get("output_fps")]
    final = res.final_stats
    return {
        "session": res.index,
        "label": res.label,
        "utterances": len(utts),
        "underrun_ms": float(final.get("underrun_ms", 0.0)),
        "underrun_steady_ms": float(final.get("underrun_ms", 0.0)) - res.underrun_after_first_ms,
        "starved_ms": float(final.get("starved_ms", 0.0)),
        "late_speech": final.get("late_speech", {}),
        "playout_ticks": final.get("playout_ticks", {}),
        "late_idle_frames": int(final.get("late_idle_frames", 0)),
        "idle_frames_held": int(final.get("idle_frames_held", 0)),
        "frames_rendered": int(final.get("frames_rendered", 0)),
        "clock_slips": int(final.get("clock_slips", 0)),
        "start_cushion_ms": float(final.get("start_cushion_ms", 0.0)),
        "server_av_drift_ms": float(final.get("av_drift_ms", 0.0)),
        "render_fps": float(np.mean(render)) if render else 0.0,
        "server_output_fps": float(np.mean(server_out)) if server_out else 0.0,
        "output_fps": out_fps,
        "frames_received": len(rx.video),
        "frames_missing": missing,
        "audio_packets_received": len(rx.audio),
        "arrival_skew_ms": float(np.median(skews)) if skews else math.nan,
    }


def _nanmean(values: list[float]) -> float | None:
    v = [x for x in values if not math.isnan(x)]
    return round(float(np.mean(v)), 1) if v else None


def _pct(values: list[float]) -> dict[str, Any]:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return {"p50": None, "p95": None, "count": 0}
    a = np.asarray(v, np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "max": round(float(a.max()), 1), "count": int(a.size)}


def _by_label(utts: list[UtteranceRecord], attr: str) -> dict[str, Any]:
    out = _pct([getattr(u, attr) for u in utts])
    for label in ("cold", "warm", "steady"):
        out[label] = _pct([getattr(u, attr) for u in utts if u.label == label])
    return out


def _ticks(per_session: list[dict]) -> dict[str, Any]:
    """The sessions' playout ticks together: how many ran more than 20 ms late (the event loop was busy) and the
    latest one."""
    count = sum(int(t.get("count") or 0) for t in per_session)
    late = sum(int(t.get("late_20ms") or 0) for t in per_session)
    return {"count": count, "late_20ms": late,
            "late_20ms_percent": round(100.0 * late / count, 2) if count else None,
            "max_late_ms": max((float(t.get("max_late_ms") or 0.0) for t in per_session), default=None)}


def _drift_trend(utts: list) -> float | None:
    """Least-squares slope of the per-utterance drift against the time it was sent, in ms per minute: a stream
    whose audio and video slide apart reads a steady slope, however coarse each single reading is."""
    pts = [(u.t_first_byte, u.av_drift_ms) for u in utts
           if not math.isnan(u.av_drift_ms) and not math.isnan(u.t_first_byte)]
    if len(pts) < 3 or max(t for t, _ in pts) - min(t for t, _ in pts) < 10.0:
        return None
    t, d = np.array(pts).T
    return round(float(np.polyfit(t - t.min(), d, 1)[0]) * 60.0, 3)


def summarise(results: list[SessionResult], cfg: BenchConfig, cpu: dict, conditions: dict) -> dict[str, Any]:
    sessions = [analyse_session(r, cfg.fps) for r in results]
    utts = [u for r in results for u in r.utterances]
    main = [s for s in sessions if s["label"] != "warm"] or sessions
    drift = [u.av_drift_ms for u in utts if not math.isnan(u.av_drift_ms)]
    return {
        "conditions": conditions,
        "avatar_first_frame_ms": _by_label(utts, "avatar_first_frame_ms"),
        "webrtc_first_frame_ms": _by_label(utts, "webrtc_first_frame_ms"),
        "av_drift_ms": {
            "mean": round(float(np.mean(drift)), 1) if drift else None,
            "max_abs": round(float(np.max(np.abs(drift))), 1) if drift else None,
            "median": round(float(np.median(drift)), 1) if drift else None,
            "count": len(drift),
            "trend_ms_per_min": _drift_trend(utts),
            "resolution_ms": round(1000.0 / cfg.fps, 1),
            "server_max_abs": max(s["server_av_drift_ms"] for s in sessions),
            "arrival_skew_ms": _nanmean([s["arrival_skew_ms"] for s in main]),
        },
        "underrun_ms": {
            "total": round(sum(s["underrun_ms"] for s in sessions), 1),
            "steady": round(sum(s["underrun_steady_ms"] for s in sessions), 1),
            "per_session": [round(s["underrun_ms"], 1) for s in sessions],
            "start_cushion_ms": [s["start_cushion_ms"] for s in sessions],
            # speech paused with its video because the client's audio came late (not an underrun)
            "starved_ms": [round(s["starved_ms"], 1) for s in sessions],
            # how late the benchmark's own clients sent audio (each utterance's latest message): the cause of
            # starved_ms when the clients share a busy machine with the server
            "client_send_late_ms": _pct([u.send_late_ms for u in utts]),
        },
        "playout_ticks": _ticks([s["playout_ticks"] for s in sessions]),
        "render_fps": {"mean": round(float(np.mean([s["render_fps"] for s in main])), 2),
                       "idle_frames_held": sum(s["idle_frames_held"] for s in sessions)},
        "output_fps": {"mean": round(float(np.mean([s["output_fps"] for s in main])), 2),
                       "server_mean": round(float(np.mean([s["server_output_fps"] for s in main])), 2),
                       "frames_missing": sum(s["frames_missing"] for s in sessions)},
        "interrupt_to_silence_ms": _pct([u.interrupt_to_silence_ms for u in utts])
        | {"server": _pct([u.server_interrupt_to_silence_ms for u in utts])},
        "interrupt_to_listening_ms": _pct([u.interrupt_to_listening_ms for u in utts]),
        "cpu": cpu,
        "sessions": sessions,
        "utterances": [asdict(u) for u in utts],
    }


# ---------------------------------------------------------------------------------------------- the run


class CpuSampler:
    """Samples the server's and the machine's CPU use once a second. The server is its process and its child
    processes (the sessions' render processes): their CPU time is summed, counting children that have ended too."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.psutil = psutil
        self.samples: list[tuple[float, float, float]] = []
        self._task: asyncio.Task | None = None
        self._cpu0 = 0.0
        self._t0 = 0.0
        self._children: dict[int, Any] = {}
        self._child_cpu: dict[int, float] = {}  # last CPU time seen per child (kept after it ends)

    def _cpu_s(self) -> float:
        """CPU seconds of the server and every child process seen so far."""
        t = self.proc.cpu_times()
        with contextlib.suppress(Exception):
            for child in self.proc.children(recursive=True):
                self._children.setdefault(child.pid, child)
        for pid, child in list(self._children.items()):
            try:
                c = child.cpu_times()
                self._child_cpu[pid] = c.user + c.system
            except Exception:  # ended: its last figure stays
                self._children.pop(pid)
        return t.user + t.system + sum(self._child_cpu.values())

    async def _run(self) -> None:
        self.psutil.cpu_percent(None)
        last_cpu, last_t = self._cpu_s(), time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                cpu, now = self._cpu_s(), time.monotonic()
                self.samples.append((now, 100.0 * (cpu - last_cpu) / max(now - last_t, 1e-6),
                                     self.psutil.cpu_percent(None)))
                last_cpu, last_t = cpu, now

    def start(self) -> None:
        self._cpu0, self._t0 = self._cpu_s(), time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        used = self._cpu_s() - self._cpu0
        wall = max(time.monotonic() - self._t0, 1e-6)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        machine = [m for _, _, m in self.samples]
        return {
            "server_percent_mean": round(100.0 * used / wall, 1),
            "server_percent_max": round(max((p for _, p, _ in self.samples), default=0.0), 1),
            "server_processes": 1 + len(self._child_cpu),
            "machine_percent_mean": round(float(np.mean(machine)), 1) if machine else None,
            "cores": self.psutil.cpu_count(),
        }


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run the whole benchmark and return its figures (see the module docstring)."""

    quiet_webrtc_logs()
    browser = None
    if cfg.receiver == "chromium":
        reason = browser_unavailable()
        if reason:
            raise InputError(f"cannot watch with Chromium: {reason}")
        if not in_loopback_namespace():
            raise InputError("the Chromium receiver must run in a loopback-only network namespace; run it through "
                             "'avatarcast bench latency --browser', which sets one up")
        browser = ChromiumHost()
        await browser.start()
    elif cfg.receiver != "aiortc":
        raise InputError(f"unknown receiver {cfg.receiver!r}: use aiortc or chromium")
    if cfg.sessions < 1:
        raise InputError("--sessions must be at least 1")
    audio = load_audio(cfg.audio or DEFAULT_SPEECH)
    pieces = utterance_pieces(audio.samples)
    load_before = os.getloadavg()
    # the receivers' and clients' timing should not include ~100 ms pauses of the garbage collector either
    freeze_startup_objects(("aiortc", "avatarcast_bench.receiver", "avatarcast.live.client"))
    server = ServerProcess(cfg)
    loop = asyncio.get_running_loop()
    t_boot = time.monotonic()
    await loop.run_in_executor(None, server.start)
    boot_s = time.monotonic() - t_boot
    # started before this process lowers its own priority: the receivers' process takes its own from the server's
    apart = ReceiversApart(cfg.receiver_nice) if cfg.receiver_nice is not None and browser is None else None
    if cfg.client_nice > 0:
        # the server (started above) and its render processes keep their priority; this process, with the
        # aiortc receivers and the ingest clients, yields the CPU to them, as receivers elsewhere would
        os.nice(cfg.client_nice)
    server_nice = os.getpriority(os.PRIO_PROCESS, server.pid)
    receivers_nice = None
    drivers: list[SessionDriver] = []
    cpu = CpuSampler(server.pid)
    try:
        drivers = [SessionDriver(i, "cold" if i == 0 else "warm", server.base_url, server.token, cfg, pieces,
                                 browser, apart) for i in range(cfg.sessions)]
        for d in drivers:  # sessions open one after another (the server prepares avatars one at a time)
            await d.open()
        cpu.start()
        if apart is not None:
            receivers_nice = os.getpriority(os.PRIO_PROCESS, apart.pid)
        until = time.monotonic() + cfg.duration_s
        await asyncio.gather(*(d.run(until, d.result.label) for d in drivers))
        cpu_figures = await cpu.stop()
        if cfg.warm_probe:
            probe = SessionDriver(len(drivers), "warm", server.base_url, server.token, cfg, pieces, browser, apart)
            drivers.append(probe)
            await probe.open()
            await probe.run(time.monotonic(), "warm")
    finally:
        if apart is not None:
            logs = await apart.stop()
            for d in drivers:
                d.result.receiver = logs.get(d.index, ReceiverLog())
        for d in drivers:
            with contextlib.suppress(Exception):
                await d.close()
        await loop.run_in_executor(None, server.stop)
        if browser is not None:
            await browser.close()
    conditions = {
        "size": f"{cfg.width}x{cfg.height}",
        "fps": cfg.fps,
        "sessions": cfg.sessions,
        "duration_s": cfg.duration_s,
        "cores": os.cpu_count(),
        "receiver": cfg.receiver,
        "generator": "parametric",
        "idle_hold_at_percent": cfg.idle_hold_at,
        "start_cushion_ms": "auto" if cfg.start_cushion_ms is None else cfg.start_cushion_ms,
        "realtime_priority": cfg.realtime_priority,
        "worker_nice": cfg.worker_nice,
        "cpu_model": cpu_model(),
        "client_nice": cfg.client_nice,
        "receiver_nice": cfg.receiver_nice,  # None: the receivers run in the clients' process
        "priority": {"server": server_nice, "clients": os.getpriority(os.PRIO_PROCESS, 0),  # nice values
                     "receivers": receivers_nice},
        "audio": str(cfg.audio or DEFAULT_SPEECH),
        "portrait": cfg.portrait or "default",
        "server_start_s": round(boot_s, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "command": " ".join(["avatarcast"] + sys.argv[1:]) if sys.argv and "avatarcast" in sys.argv[0] else None,
    }
    figures = summarise([d.result for d in drivers], cfg, cpu_figures, conditions)
    figures["_series"] = _series([d.result for d in drivers], cpu.samples)
    return figures


def _series(results: list[SessionResult], cpu_samples: list) -> dict[str, Any]:
    """Time series for the plot (seconds from the start of the run)."""
    t0 = min((r.t_start for r in results if r.t_start), default=0.0)
    out: dict[str, Any] = {"sessions": []}
    for r in results:
        rx = r.receiver
        if rx is None:
            continue
        ts = np.array([v.t for v in rx.video], np.float64)
        fps_t, fps_v = [], []
        if ts.size > 1:
            for sec in np.arange(math.floor(ts[0]), ts[-1], 1.0):
                fps_t.append(float(sec + 0.5 - t0))
                fps_v.append(int(np.count_nonzero((ts >= sec) & (ts < sec + 1.0))))
        out["sessions"].append({
            "session": r.index, "label": r.label,
            "fps_t": fps_t, "fps": fps_v,
            "utt_t": [u.t_first_byte - t0 for u in r.utterances],
            "utt_label": [u.label for u in r.utterances],
            "avatar_first_frame_ms": [u.avatar_first_frame_ms for u in r.utterances],
            "webrtc_first_frame_ms": [u.webrtc_first_frame_ms for u in r.utterances],
            "av_drift_ms": [u.av_drift_ms for u in r.utterances],
            "underrun_t": [t - t0 for t, _ in r.stats_timeline],
            "underrun_ms": [float(s.get("underrun_ms", 0.0)) for _, s in r.stats_timeline],
        })
    out["cpu_t"] = [t - t0 for t, _, _ in cpu_samples]
    out["cpu_server"] = [p for _, p, _ in cpu_samples]
    return out


# ---------------------------------------------------------------------------------------------- reporting


def write_plot(figures: dict[str, Any], path: str | Path) -> None:
    """A four-panel timeline: first-frame latency per utterance, received fps, drift, underruns (and CPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = figures["_series"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    markers = {"cold": "s", "warm": "^", "steady": "o"}
    for s in series["sessions"]:
        name = f"session {s['session']}"
        for label, marker in markers.items():
            idx = [i for i, lab in enumerate(s["utt_label"]) if lab == label]
            if idx:
                axes[0].scatter([s["utt_t"][i] for i in idx], [s["webrtc_first_frame_ms"][i] for i in idx],
                                marker=marker, s=18, label=f"{name} webrtc ({label})")
                axes[0].scatter([s["utt_t"][i] for i in idx], [s["avatar_first_frame_ms"][i] for i in idx],
                                marker=marker, s=18, facecolors="none", edgecolors="gray")
        axes[1].plot(s["fps_t"], s["fps"], lw=1, label=name)
        axes[2].plot(s["utt_t"], s["av_drift_ms"], "o-", ms=3, lw=1, label=name)
        axes[3].plot(s["underrun_t"], s["underrun_ms"], lw=1, label=name)
    axes[0].set_ylabel("first frame ms\n(filled: webrtc, open: avatar)")
    axes[1].set_ylabel("received fps")
    axes[2].set_ylabel("A/V drift ms")
    axes[2].axhline(0, color="k", lw=0.5)
    axes[3].set_ylabel("underrun ms (cum.)")
    if series.get("cpu_t"):
        ax = axes[3].twinx()
        ax.plot(series["cpu_t"], series["cpu_server"], color="tab:red", lw=0.8, alpha=0.6)
        ax.set_ylabel("server CPU %", color="tab:red")
    axes[3].set_xlabel("seconds")
    c = figures["conditions"]
    fig.suptitle(f"avatarcast live latency: {c['size']}@{c['fps']:g} fps, {c['sessions']} session(s), "
                 f"{c['cores']} cores, receiver {c['receiver']}")
    for ax in axes[:2]:
        ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(d: dict | None, *keys: str) -> str:
    if not d:
        return "-"
    return " / ".join("-" if d.get(k) is None else f"{d[k]:g}" for k in keys)


def format_table(f: dict[str, Any]) -> str:
    c = f["conditions"]
    rows = [
        ("conditions", f"{c['size']}@{c['fps']:g} fps, {c['sessions']} session(s), {c['duration_s']:g} s, "
                       f"{c['cores']} cores, receiver {c['receiver']}, load {c['load_average_before'][0]:g}, "
                       f"idle hold at {c.get('idle_hold_at_percent', 0):g} % CPU, start cushion "
                       f"{c.get('start_cushion_ms', 'auto')}"
                       + (f", render under SCHED_RR {c['realtime_priority']}" if c.get("realtime_priority") else "")
                       + (f", workers at nice +{c['worker_nice']}" if c.get("worker_nice") else "")
                       + (f", clients at nice +{c['client_nice']}" if c.get("client_nice") else "")
                       + (f", receivers in a process of their own at nice +{c['receiver_nice']}"
                          if c.get("receiver_nice") is not None else "")),
    ]
    for name in ("avatar_first_frame_ms", "webrtc_first_frame_ms"):
        d = f[name]
        rows.append((f"{name} p50/p95", " | ".join(f"{lab} {_fmt(d.get(lab), 'p50', 'p95')} (n={d[lab]['count']})"
                                                     for lab in ("cold", "warm", "steady"))))
    rows += [
        ("av_drift_ms mean/max_abs", f"{_fmt(f['av_drift_ms'], 'mean', 'max_abs')} "
                                     f"(n={f['av_drift_ms']['count']}; median {f['av_drift_ms']['median']}, "
                                     f"trend {f['av_drift_ms']['trend_ms_per_min']} ms/min; arrival skew "
                                     f"{f['av_drift_ms']['arrival_skew_ms']} ms)"),
        ("underrun_ms total/steady", f"{f['underrun_ms']['total']:g} / {f['underrun_ms']['steady']:g} "
                                     f"(per session {f['underrun_ms']['per_session']}; start cushion "
                                     f"{f['underrun_ms'].get('start_cushion_ms')} ms; speech paused for "
                                     f"late client audio {f['underrun_ms'].get('starved_ms')} ms; the clients' "
                                     f"latest message an utterance p50/p95/max "
                                     f"{_fmt(f['underrun_ms'].get('client_send_late_ms'), 'p50', 'p95', 'max')} ms late)"),
        ("playout ticks > 20 ms late", f"{f['playout_ticks']['late_20ms_percent']} % of {f['playout_ticks']['count']}"
                                       f" (the latest {f['playout_ticks']['max_late_ms']} ms)"),
        ("render_fps / output_fps", f"{f['render_fps']['mean']:g} / {f['output_fps']['mean']:g} "
                                    f"(server {f['output_fps']['server_mean']:g}, "
                                    f"missing {f['output_fps']['frames_missing']}; idle frames held "
                                    f"{f['render_fps'].get('idle_frames_held', 0)})"),
        ("interrupt_to_silence_ms p50/p95", f"{_fmt(f['interrupt_to_silence_ms'], 'p50', 'p95')} at the receiver; "
                                            f"server {_fmt(f['interrupt_to_silence_ms']['server'], 'p50', 'p95')}"),
        ("interrupt_to_listening_ms p50/p95", _fmt(f["interrupt_to_listening_ms"], "p50", "p95")),
        ("server CPU mean/max %", f"{f['cpu']['server_percent_mean']:g} / {f['cpu']['server_percent_max']:g} "
                                  f"(machine {f['cpu']['machine_percent_mean']} %)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _finite(o: Any) -> Any:
    """NaN (a figure that could not be measured) becomes null, so the file is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(figures: dict[str, Any], path: str | Path) -> None:
    clean = _finite({k: v for k, v in figures.items() if not k.startswith("_")})
    Path(path).write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve_until_stdin_closes(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m avatarcast_bench.latency --serve CONFIG_JSON (used by the benchmark)")
