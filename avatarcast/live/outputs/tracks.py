"""aiortc media tracks fed by a session's scheduler (the scheduler owns pacing and timestamps; tracks only queue).

A ``TrackPairSink`` is a pair of raw-frame tracks for one peer connection that encodes for itself (the WHIP
publisher); attached to the scheduler, both start on the same frame, with audio and video timestamps from the one
media clock. WHEP viewers do not use it: they send the frames their session encoded once for all of them
(``fanout.py``).
"""

from __future__ import annotations

import asyncio

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

TRACK_QUEUE_FRAMES = 50
"""Frames a slow consumer may fall behind (1 s of audio ticks) before the oldest are dropped."""


class _QueuedTrack(MediaStreamTrack):
    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.frame.Frame | None] = asyncio.Queue(maxsize=TRACK_QUEUE_FRAMES)
        self.dropped = 0

    def put(self, frame: av.frame.Frame) -> None:
        if self.readyState != "live":
            return
        if self._queue.full():  # a viewer that cannot keep up loses its oldest frames, never the session's clock
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)

    async def recv(self) -> av.frame.Frame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            if self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
        super().stop()


class SessionAudioTrack(_QueuedTrack):
    """48 kHz mono PCM16 in 20 ms frames, ``pts`` in samples of the session's media clock."""

    kind = "audio"


class SessionVideoTrack(_QueuedTrack):
    """RGB frames, ``pts`` on the 90 kHz clock derived from the same sample counter as the audio."""

    kind = "video"


class TrackPairSink:
    """A scheduler sink that feeds one viewer's audio and video tracks."""

    def __init__(self) -> None:
        self.audio = SessionAudioTrack()
        self.video = SessionVideoTrack()

    def on_audio(self, frame: av.AudioFrame) -> None:
        self.audio.put(frame)

    def on_video(self, frame: av.VideoFrame) -> None:
        self.video.put(frame)

    def stop(self) -> None:
        self.audio.stop()
        self.video.stop()
