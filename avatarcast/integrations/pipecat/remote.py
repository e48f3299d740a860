"""The avatar engine on an avatarcast server: speech over the ingest WebSocket, the avatar back over WebRTC (WHEP).

The server's session does the work (scheduler, director, render process); this process sends the TTS audio, the
word timings, instructions and interrupts over ``/v1/sessions/{id}/ingest`` (``IngestClient``), and plays the
session's WebRTC stream (negotiated over ``/v1/sessions/{id}/whep``, received with aiortc) into the pipeline.

Pairing: the server starts a viewer's audio and video tracks on the same frame of its media clock, and aiortc maps
each track's first RTP timestamp to 0, so both decoded streams count from the same origin (``receiver.py``). A
decoded video frame is handed over just before the audio that starts at its position (aiortc's audio jitter buffer
holds about 80 ms, so video waits for its audio), which is the order the in-process engine hands them over in.

Events: the server's ``playback.started`` and ``playback.finished`` come over the WebSocket ahead of the media they
describe. They are placed in the media: an utterance starts where the speech it was sent with starts in the
received audio (its first non-silent sample, less the silence it was sent with before it; the server sends digital
silence between utterances), and finishes ``position_ms`` later.

Barge-in: the interrupt goes to the server at once; the media already on its way (jitter buffers, about 100 ms) is
speech from before it, so the received audio is muted and the last frame held until the stream reaches the point
where the server cut the speech (``playback.finished`` says where).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from aiohttp import ClientSession, ClientTimeout
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatarcast.core.errors import ConnectionLostError, StateError
from avatarcast.audio.io import StreamResampler, float_to_pcm16, pcm16_to_float
from avatarcast.integrations.pipecat.media import (
    MEDIA_RATE_HZ,
    AudioOut,
    MediaHandler,
    SpeechFinished,
    SpeechStarted,
    UtteranceLedger,
    VideoOut,
)
from avatarcast.live.client import IngestClient
from avatarcast.live.mediaclock import VIDEO_CLOCK_RATE_HZ
from avatarcast.live.outputs.whep import is_loopback_host, use_loopback_candidates
from avatarcast.live.protocol import SUPPORTED_SAMPLE_RATES_HZ

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
SILENT_LEVEL = 8
"""A PCM16 sample at or below this magnitude counts as silence (digital silence decodes to about zero)."""
VIDEO_WAIT_S = 0.3
"""A decoded frame waits for its audio at most this long (if the audio stalls, video goes on alone)."""
MUTE_MAX_S = 0.6
"""After an interrupt, the received media is muted until the server's cut point, at most this long."""
CODEC_DELAY_SAMPLES = 960
"""The mute lasts this far past the cut point: Opus decodes with a delay (6.5 ms) and its windows overlap, so the
20 ms frame that starts at the cut still carries the end of the speech before it (measured: peaks of 2600-6500)."""
MUTE_SILENT_TICKS = 5
"""Where the cut point is not known, this many silent 20 ms audio frames in a row end the mute."""
FINISH_WAIT_S = 1.0
"""A ``playback.finished`` whose end the received audio has not reached after this long is handed over anyway."""


def _first_loud(pcm: np.ndarray) -> int:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > SILENT_LEVEL)
    return int(loud[0]) if loud.size else -1


class RemoteAvatar:
    """A session on an avatarcast server. ``url``: the server (``http://127.0.0.1:8080``); ``session``: its id;
    ``token``: the admin token, or ``ingest_token`` and ``viewer_token`` (a public session needs no viewer token).
    ``loopback_candidates``: offer only 127.0.0.1 as ICE candidate (default: when the server is on loopback). It is
    process-wide (``avatarcast.live.outputs.whep``): leave it off where other WebRTC peers of this process need the
    machine's other addresses."""

    def __init__(self, url: str = "http://127.0.0.1:8080", session: str = "default", *, token: str | None = None,
                 ingest_token: str | None = None, viewer_token: str | None = None,
                 loopback_candidates: bool | None = None) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.ingest_token = ingest_token or token
        self.viewer_token = viewer_token or token
        host = urlsplit(self.url).hostname or ""
        self.loopback_candidates = is_loopback_host(host) if loopback_candidates is None else loopback_candidates
        self.fps = 0.0
        self.width = self.height = 0
        self._client: IngestClient | None = None
        self._pc: RTCPeerConnection | None = None
        self._resource_url: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._on_media: MediaHandler | None = None
        self._ledger = UtteranceLedger()
        self._rate_hz: int | None = None
        self._resampler: StreamResampler | None = None
        self._sent_samples = 0  # of the open utterance, at its sent rate
        self._onsets: dict[int, float] = {}  # utterance -> seconds of silence it was sent with before its speech
        # media pairing (event-loop only)
        self._video_wait: deque[tuple[float, VideoOut]] = deque()
        self._audio_end = 0
        self._last_video: VideoOut | None = None
        self._got_video = asyncio.Event()
        # events placed in the media
        self._starts_due = 0  # playback.started events not yet placed in the received media
        self._playing: tuple[int, int] | None = None  # (utterance, media sample of its first frame)
        self._finish_pending: deque[tuple[float, float]] = deque()  # playback.finished: (position_ms, received)
        self._video_samples: deque[int] = deque(maxlen=64)
        self._mute_until: int | None = None  # media sample where the server cut the speech
        self._muted_since: float | None = None
        self._silent_run = 0
        self.stats = {"late_video": 0, "video_without_audio": 0, "muted_audio_ms": 0.0}

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self, on_media: MediaHandler) -> None:
        """Connect the ingest WebSocket and the WebRTC playback; return once the first frame is decoded."""
        self._on_media = on_media
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        client = IngestClient(f"{ws_url}/v1/sessions/{self.session}/ingest", self.ingest_token)
        ready = await client.connect()
        self._client = client
        self.fps, self.width, self.height = float(ready.fps), int(ready.width), int(ready.height)
        self._tasks.append(asyncio.create_task(self._read_events(), name="avatarcast-events"))
        try:
            await self._connect_whep()
        except BaseException:
            await self.stop()
            raise

    async def _connect_whep(self) -> None:
        if self.loopback_candidates:
            use_loopback_candidates(True)
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def _on_track(track: Any) -> None:
            consume = self._video if track.kind == "video" else self._audio
            self._tasks.append(asyncio.create_task(consume(track), name=f"avatarcast-{track.kind}"))

        await pc.setLocalDescription(await pc.createOffer())
        whep_url = f"{self.url}/v1/sessions/{self.session}/whep"
        headers = {"Content-Type": "application/sdp"}
        if self.viewer_token:
            headers["Authorization"] = f"Bearer {self.viewer_token}"
        async with ClientSession(timeout=ClientTimeout(total=CONNECT_TIMEOUT_S)) as http:
            async with http.post(whep_url, data=pc.localDescription.sdp, headers=headers) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise ConnectionLostError(f"the server refused the WebRTC offer at {whep_url}: HTTP {resp.status}: "
                                              f"{body[:300]} (check the session id and the viewer token)")
                location = resp.headers.get("Location")
        if location:
            self._resource_url = location if location.startswith("http") else self.url + location
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await asyncio.wait_for(self._got_video.wait(), CONNECT_TIMEOUT_S)

    async def stop(self) -> None:
        if self._resource_url:
            headers = {"Authorization": f"Bearer {self.viewer_token}"} if self.viewer_token else {}
            with contextlib.suppress(Exception):
                async with ClientSession(timeout=ClientTimeout(total=5)) as http:
                    async with http.delete(self._resource_url, headers=headers):
                        pass
            self._resource_url = None
        if self._pc is not None:
            await self._pc.close()
            self._pc = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------------------ speech in

    def _require(self) -> IngestClient:
        if self._client is None:
            raise StateError("the avatar is not connected: call start() first (the service does at pipeline start)")
        return self._client

    async def push_audio(self, pcm: bytes, rate_hz: int) -> int:
        client = self._require()
        if self._ledger.open is not None and rate_hz != self._rate_hz:
            await self.end_speech()
        opening = self._ledger.open is None
        n = self._ledger.audio()
        if opening:
            self._rate_hz = rate_hz
            self._sent_samples = 0
            self._resampler = None if rate_hz in SUPPORTED_SAMPLE_RATES_HZ else StreamResampler(rate_hz, MEDIA_RATE_HZ)
            await client.start(rate_hz if self._resampler is None else MEDIA_RATE_HZ)
        if n not in self._onsets:
            i = _first_loud(np.frombuffer(pcm, np.int16))
            if i >= 0:
                self._onsets[n] = (self._sent_samples + i) / rate_hz
        self._sent_samples += len(pcm) // 2
        if self._resampler is not None:
            pcm = float_to_pcm16(self._resampler.push(pcm16_to_float(pcm)))
        if pcm:
            await client.send_audio(pcm)
        return n

    async def add_words(self, words: list) -> None:
        client = self._require()
        if words:
            await client.alignment(words=[{"word": w.text, "start_ms": round(w.start_s * 1000.0, 1),
                                           "end_ms": round(w.end_s * 1000.0, 1)} for w in words])

    async def end_speech(self) -> None:
        client = self._require()
        if self._ledger.open is None:
            return
        self._ledger.end()
        if self._resampler is not None:
            tail = float_to_pcm16(self._resampler.flush())
            if tail:
                await client.send_audio(tail)
        await client.speech_end()

    async def interrupt(self) -> None:
        client = self._require()
        if self._ledger.pending or self._playing is not None or self._starts_due:
            # muted before anything else can run: media still on its way is speech from before the interrupt
            self._mute_until = -1  # until the server says where it cut (playback.finished), see _hand_audio
            self._muted_since = time.monotonic()
            self._silent_run = 0
        self._starts_due = 0
        self._finish_pending.clear()
        for n in self._ledger.cut_all():
            self._emit(SpeechFinished(n, 0.0, True))
        await client.interrupt()

    async def set_instruction(self, text: str | None) -> None:
        await self._require().instruction(text or "")

    # ------------------------------------------------------------------------------------------ events

    async def _read_events(self) -> None:
        assert self._client is not None
        async for event in self._client.events():
            if event.type == "playback.started":
                self._starts_due += 1  # placed where its speech shows up in the received audio
            elif event.type == "playback.finished":
                if event.interrupted:
                    # the one that was playing is cut where the server had got to (the others, queued behind it,
                    # report 0 ms); one left fully assigned reports its full length
                    if self._playing is not None and self._mute_until == -1 and event.position_ms > 0:
                        self._mute_until = self._playing[1] + round(event.position_ms * MEDIA_RATE_HZ / 1000.0)
                        log.debug("the server cut the speech at media sample %d (its start %d + %.0f ms); audio "
                                  "received up to %d", self._mute_until, self._playing[1], event.position_ms,
                                  self._audio_end)
                        self._playing = None
                else:
                    self._finish_pending.append((event.position_ms, time.monotonic()))
            elif event.type == "error":
                log.error("avatarcast server: %s: %s", event.code, event.message)

    # ------------------------------------------------------------------------------------------ media in

    def _emit(self, message: object) -> None:
        if self._on_media is not None:
            self._on_media(message)

    async def _video(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if frame.format.name != "yuv420p":
                    frame = frame.reformat(format="yuv420p")
                sample = round((frame.pts or 0) * MEDIA_RATE_HZ / VIDEO_CLOCK_RATE_HZ)
                v = VideoOut(frame.to_ndarray(), frame.width, frame.height, sample)
                self._got_video.set()
                now = time.monotonic()
                if sample < self._audio_end:  # its audio was handed over already
                    self.stats["late_video"] += 1
                    self._hand_video(v)
                else:
                    self._video_wait.append((now, v))
                while self._video_wait and now - self._video_wait[0][0] > VIDEO_WAIT_S:
                    self.stats["video_without_audio"] += 1
                    self._hand_video(self._video_wait.popleft()[1])

    async def _audio(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                channels = len(frame.layout.channels)
                pcm = frame.to_ndarray().reshape(-1)[::channels].astype(np.int16)
                self._hand_audio(AudioOut(pcm, int(frame.pts or 0)))

    def _hand_video(self, v: VideoOut) -> None:
        if self._mute_until is not None and self._last_video is not None:
            v = VideoOut(self._last_video.yuv, v.width, v.height, v.sample)  # hold the picture from before
        self._last_video = v
        self._video_samples.append(v.sample)
        self._emit(v)

    def _hand_audio(self, a: AudioOut) -> None:
        end = a.sample + len(a.pcm)
        while self._video_wait and self._video_wait[0][1].sample < end:
            self._hand_video(self._video_wait.popleft()[1])
        self._audio_end = max(self._audio_end, end)
        pcm = a.pcm
        if self._mute_until is not None:
            cut = self._mute_until
            self._silent_run = self._silent_run + 1 if _first_loud(pcm) < 0 else 0
            waited = time.monotonic() - (self._muted_since or 0.0)
            # the cut point reached; or, where it is not known (the speech had not shown up in the received audio
            # yet), 100 ms of the digital silence the server sends after a cut; or MUTE_MAX_S at most
            past_cut = cut >= 0 and a.sample >= cut + CODEC_DELAY_SAMPLES
            if past_cut or (cut < 0 and self._silent_run >= MUTE_SILENT_TICKS) or waited > MUTE_MAX_S:
                log.debug("unmuted at media sample %d (cut at %d, %.0f ms after the interrupt)", a.sample, cut,
                          waited * 1000.0)
                self._mute_until = self._muted_since = None
                self._playing = None  # the utterance that was cut (a new one starts only once unmuted)
            else:
                self.stats["muted_audio_ms"] += len(pcm) * 1000.0 / MEDIA_RATE_HZ
                pcm = np.zeros_like(pcm)
        self._emit(AudioOut(pcm, a.sample))
        self._place_events(a.sample, pcm)

    def _place_events(self, sample: int, pcm: np.ndarray) -> None:
        if self._starts_due and self._playing is None and self._mute_until is None:
            i = _first_loud(pcm)
            if i >= 0:
                self._starts_due -= 1
                n = self._ledger.started()
                if n is not None:
                    first = sample + i - round(self._onsets.pop(n, 0.0) * MEDIA_RATE_HZ)
                    # the frame the utterance starts on: the last one handed over that starts at or before it
                    shown = [s for s in self._video_samples if s <= first + 1]
                    start = shown[-1] if shown else (self._video_samples[-1] if self._video_samples else first)
                    self._playing = (n, start)
                    log.debug("utterance %d starts at media sample %d (speech found at %d)", n, start, sample + i)
                    self._emit(SpeechStarted(n, start))
        now = time.monotonic()
        while self._finish_pending:
            position_ms, since = self._finish_pending[0]
            timed_out = now - since > FINISH_WAIT_S
            if self._playing is None and self._starts_due and not timed_out:
                break  # its start has not shown up in the received audio yet
            if self._playing is not None and not timed_out:
                end = self._playing[1] + round(position_ms * MEDIA_RATE_HZ / 1000.0)
                if self._audio_end < end:
                    break
            self._finish_pending.popleft()
            if self._playing is None and self._starts_due:
                self._starts_due -= 1  # its speech never showed up (silence only)
            self._playing = None
            n = self._ledger.finished()
            if n is not None:
                self._emit(SpeechFinished(n, position_ms, False))
