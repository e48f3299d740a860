"""A WHEP playback client on aiortc that records what a viewer receives, for measurements and tests.

It POSTs an SDP offer (receive-only audio and video) to a session's WHEP URL, plays nothing, and logs every decoded
frame with its arrival time (``time.monotonic()``, the same clock the server and the ingest client use on this
machine) and its RTP media timestamp:

- video: ``pts`` on the 90 kHz clock, plus ``motion``: the mean absolute luma change in the lower-centre of the
  picture (where the mouth is in the generator's face-centred framing) against the previous frame. It rises when
  the mouth moves. A small thumbnail of that region is kept too (``crops``).
- audio: ``pts`` on the 48 kHz clock, the frame's RMS level in dBFS, and the indexes of its first and last samples
  above the speech threshold (to place a speech onset, or the end of the sound, within a 20 ms packet).

aiortc's receiver maps the first RTP timestamp of each track to 0. The server starts both tracks of a viewer on the
same frame of its media clock, so the two timelines share that origin; ``latency_bench`` checks the claim against
the content (speech onsets in the audio against mouth onsets in the video).

Receiver costs that are aiortc's, not the server's: the audio jitter buffer releases a packet only once four are
queued (about 80 ms), and a video frame is complete only when the next frame's first packet arrives (one frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import ClientSession, ClientTimeout
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatarcast.live.outputs.whep import use_loopback_candidates

log = logging.getLogger(__name__)

SPEECH_LEVEL_DBFS = -45.0
"""Audio frames above this RMS level count as speech (the server sends digital silence otherwise)."""
ONSET_SAMPLE_LEVEL = 0.01
"""A sample above this magnitude (full scale = 1) marks the onset of speech within a frame."""
MOUTH_REGION = (0.30, 0.70, 0.35, 0.65)
"""x0, x1, y0, y1 as fractions of the picture: the mouth and jaw just below the centre of the generator's
face-centred framing (the bundled portrait's mouth spans x 0.36-0.62, y 0.37-0.53 of a 512x512 frame)."""
RECEIVER_AUDIO_RATE_HZ = 48000
"""aiortc decodes Opus at 48 kHz: ``AudioRecord.pts``, ``samples`` and the sample indexes count at this rate."""
CONNECT_TIMEOUT_S = 15.0
MAX_STORED_CROPS = 30000
"""Mouth-region thumbnails kept per receiver (about 2 KB each at 512x512: 20 minutes at 25 fps); later frames keep
only their motion figure."""


@dataclass
class VideoRecord:
    t: float  # monotonic arrival (decoded) time
    pts: int  # 90 kHz, relative to the first frame received
    motion: float  # mean |luma change| in the mouth region versus the previous frame (0-255 scale)
    width: int
    height: int


@dataclass
class AudioRecord:
    t: float
    pts: int  # 48 kHz samples, relative to the first packet received
    samples: int
    rms_dbfs: float
    onset_index: int  # first sample above ONSET_SAMPLE_LEVEL, -1 when none
    end_index: int = -1  # one past the last sample above ONSET_SAMPLE_LEVEL, -1 when none


@dataclass
class ReceiverLog:
    video: list[VideoRecord] = field(default_factory=list)
    crops: list[np.ndarray | None] = field(default_factory=list)  # per video record: mouth region, 4x smaller
    audio: list[AudioRecord] = field(default_factory=list)
    connected_at: float | None = None
    kind: str = "aiortc"


def _luma(frame: Any) -> np.ndarray:
    """The Y plane of a decoded frame as (H, W) uint8 without a colour conversion."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12"):
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
        return y[:, :frame.width]
    return frame.to_ndarray(format="gray")


def mouth_crop(luma: np.ndarray, region: tuple[float, float, float, float] = MOUTH_REGION) -> np.ndarray:
    """The lower-face region, downsampled 2x (float32)."""
    h, w = luma.shape
    x0, x1, y0, y1 = region
    crop = luma[int(y0 * h):int(y1 * h):2, int(x0 * w):int(x1 * w):2]
    return crop.astype(np.float32)


class WhepReceiver:
    """Receive one session's stream over WebRTC (WHEP) and log every decoded audio and video frame."""

    def __init__(self, whep_url: str, token: str | None = None) -> None:
        self.whep_url = whep_url
        self.token = token
        self.log = ReceiverLog(kind="aiortc")
        self.pc: RTCPeerConnection | None = None
        self.resource_url: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._prev_crop: np.ndarray | None = None
        self._connected = asyncio.Event()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def connect(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Negotiate and wait until the first video frame is decoded."""
        use_loopback_candidates(True)
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def _on_track(track: Any) -> None:
            consume = self._video if track.kind == "video" else self._audio
            self._tasks.append(asyncio.create_task(consume(track)))

        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers all candidates here
        async with ClientSession(timeout=ClientTimeout(total=timeout_s)) as http:
            async with http.post(self.whep_url, data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp", **self._headers()}) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise ConnectionError(f"WHEP offer refused: HTTP {resp.status}: {body[:300]}")
                location = resp.headers.get("Location")
        if location:
            base = self.whep_url.split("/v1/", 1)[0]
            self.resource_url = location if location.startswith("http") else base + location
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await asyncio.wait_for(self._connected.wait(), timeout_s)
        self.log.connected_at = time.monotonic()

    async def _video(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                t = time.monotonic()
                crop = mouth_crop(_luma(frame))
                prev = self._prev_crop
                motion = float(np.mean(np.abs(crop - prev))) if prev is not None and prev.shape == crop.shape else 0.0
                self._prev_crop = crop
                self.log.video.append(VideoRecord(t, int(frame.pts or 0), motion, frame.width, frame.height))
                keep = len(self.log.crops) < MAX_STORED_CROPS
                self.log.crops.append(crop[::2, ::2].astype(np.uint8) if keep else None)
                self._connected.set()

    async def _audio(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                t = time.monotonic()
                a = frame.to_ndarray()
                channels = len(frame.layout.channels)
                mono = a.reshape(-1)[::channels].astype(np.float32) / 32768.0
                rms = float(np.sqrt(np.mean(mono * mono))) if mono.size else 0.0
                loud = np.flatnonzero(np.abs(mono) > ONSET_SAMPLE_LEVEL)
                self.log.audio.append(AudioRecord(
                    t, int(frame.pts or 0), int(mono.size),
                    20.0 * math.log10(rms) if rms > 1e-9 else -180.0,
                    int(loud[0]) if loud.size else -1, int(loud[-1]) + 1 if loud.size else -1))

    async def close(self) -> None:
        if self.resource_url:
            with contextlib.suppress(Exception):
                async with ClientSession(timeout=ClientTimeout(total=5)) as http:
                    async with http.delete(self.resource_url, headers=self._headers()):
                        pass
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
