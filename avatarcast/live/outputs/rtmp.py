"""RTMP push of a session (FLV, H.264 + AAC) with PyAV, fed by the same scheduler as the WebRTC viewers.

Encoding runs in its own thread behind a bounded queue: a slow or unreachable RTMP server never blocks the media
clock; if it cannot keep up, whole frames are dropped and counted. Timestamps come from the session's media clock
(audio pts in samples, video pts in 90 kHz units), so the muxed stream keeps the pairing.
"""

from __future__ import annotations

import logging
import queue
import threading
from fractions import Fraction

import av

from avatarcast.live.mediaclock import PLAYOUT_RATE_HZ, VIDEO_CLOCK_RATE_HZ

log = logging.getLogger(__name__)

RTMP_QUEUE_FRAMES = 200
RTMP_VIDEO_BITRATE = 2_000_000
RTMP_AUDIO_BITRATE = 128_000


class RtmpOutput:
    """A scheduler sink that encodes and pushes to ``url`` (``rtmp://host/app/key``)."""

    def __init__(self, url: str, width: int, height: int, fps: float) -> None:
        self.url = url
        self.width, self.height, self.fps = width, height, fps
        self.dropped = 0
        self.error: str | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=RTMP_QUEUE_FRAMES)
        self._thread = threading.Thread(target=self._run, name="rtmp", daemon=True)
        self._first_video_seen = False

    def start(self) -> None:
        self._thread.start()

    def on_audio(self, frame: av.AudioFrame) -> None:
        if self._first_video_seen:
            self._put(("a", frame))

    def on_video(self, frame: av.VideoFrame) -> None:
        self._first_video_seen = True
        self._put(("v", frame))

    def _put(self, item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            self._queue.get_nowait()
            self._queue.put_nowait(None)
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        try:
            container = av.open(self.url, mode="w", format="flv")
        except Exception as exc:  # an unreachable server: log once, keep the session alive
            self.error = f"cannot open {self.url}: {exc}"
            log.error("RTMP output disabled: %s", self.error)
            return
        try:
            vstream = container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            vstream.width, vstream.height = self.width, self.height
            vstream.pix_fmt = "yuv420p"
            vstream.bit_rate = RTMP_VIDEO_BITRATE
            vstream.options = {"preset": "veryfast", "tune": "zerolatency",
                               "g": str(max(1, int(round(self.fps * 2))))}
            vstream.codec_context.time_base = Fraction(1, VIDEO_CLOCK_RATE_HZ)
            astream = container.add_stream("aac", rate=PLAYOUT_RATE_HZ)
            astream.layout = "mono"
            astream.bit_rate = RTMP_AUDIO_BITRATE
            v0 = a0 = None
            while True:
                item = self._queue.get()
                if item is None:
                    break
                kind, frame = item
                if kind == "v":
                    v0 = frame.pts if v0 is None else v0
                    # a frame of its own: the same frame object goes to every sink (WebRTC viewers encode it in
                    # other threads, with its pts), and PyAV's reformat returns the frame itself when nothing changes
                    out = frame.reformat(format="yuv420p")
                    if out is frame:
                        out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
                    out.pts = frame.pts - v0
                    out.time_base = Fraction(1, VIDEO_CLOCK_RATE_HZ)
                    for packet in vstream.encode(out):
                        container.mux(packet)
                elif v0 is not None:
                    # one origin for both streams: the first video frame's media position
                    a0 = round(v0 * PLAYOUT_RATE_HZ / VIDEO_CLOCK_RATE_HZ) if a0 is None else a0
                    out = av.AudioFrame.from_ndarray(frame.to_ndarray(), format="s16", layout="mono")
                    out.sample_rate = PLAYOUT_RATE_HZ
                    out.pts = frame.pts - a0
                    out.time_base = Fraction(1, PLAYOUT_RATE_HZ)
                    for packet in astream.encode(out):
                        container.mux(packet)
            for packet in vstream.encode(None):
                container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
        except Exception as exc:
            self.error = str(exc)
            log.error("RTMP output stopped: %s", exc)
        finally:
            try:
                container.close()
            except Exception:
                pass
