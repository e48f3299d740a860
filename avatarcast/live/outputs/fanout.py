"""Encode once per session: one encoder per codec in use, whose output every WebRTC viewer of the session sends.

A session's scheduler hands each audio tick and video frame to one ``SessionFanout`` (a scheduler sink). The fanout
encodes the frame once for each codec that at least one connected viewer negotiated (VP8, H.264, Opus), and gives
the encoded frame (its RTP payloads, already packetized) to every viewer of that codec. Each viewer's aiortc
``RTCRtpSender`` then only builds RTP packets around those payloads, with its own SSRC, sequence numbers, timestamp
origin and SRTP keys, and keeps its own retransmission history (NACK) and RTCP.

How a sender is plugged in: aiortc's sender loop asks ``self._next_encoded_frame(codec)`` for the next encoded frame
(it would read the track and encode it); ``FanoutViewer.attach`` replaces that method on the viewer's sender, and
two others: ``_send_keyframe`` (called on a PLI or FIR) asks the shared encoder for a keyframe, and
``_handle_rtcp_packet`` also passes the viewer's REMB estimate to the fanout. All three are single-underscore
methods of aiortc 1.16's ``RTCRtpSender`` (pinned in setup.py), replaced on the one sender object only;
``attach`` fails loudly if they are missing. The sender learns its negotiated codec only when it starts (the
connection is up), so a viewer subscribes to its codec's encoder then, and an encoder runs only while a connected
viewer needs it.

Joining and losses:

- A new viewer's video starts on a keyframe: it subscribes, the encoder is asked for one, and the viewer skips
  frames until one arrives. Its audio starts on the same media-clock position as that keyframe (from a short
  history of encoded audio), so both of its RTP timelines share one origin, as a receiver that maps each track's
  first timestamp to zero expects (``receiver.py``).
- A viewer that loses packets sends a PLI (or FIR): the encoder makes the next frame a keyframe. Keyframes cost
  every viewer bandwidth and quality, so forced ones are at most one per ``KEYFRAME_MIN_INTERVAL_S`` whatever
  the number of requests: requests in between are merged into the next allowed one.
- A viewer that stops taking frames (its sender stalls) never holds the session: delivery only appends to the
  viewer's bounded queue. When its video queue overflows, the queue is emptied, the viewer waits for a keyframe
  again and asks for one; its audio loses its oldest packets. The other viewers and the scheduler are not affected.

Bitrate policy: the slowest viewer's estimate, within bounds. One encoded stream serves every viewer, so its
bitrate must fit the slowest path, or that viewer's link stays congested (late and lost frames) for as long as it
watches. The encoder follows the lowest REMB estimate among the viewers of its codec that reported one in the last
``REMB_FRESH_S``, but never below ``BITRATE_FLOOR`` (a viewer on a bad link must not make the picture unwatchable
for everyone: below it that viewer loses frames and asks for keyframes, which are rate-limited) and never above the
frame-size cap (``encoders.max_bitrate``; ~600 kbps at 512x512, far below any link that plays video). The live
encoders restart (a keyframe) only for changes of 1.5x or more, at most every 2 s down / 10 s up
(``encoders.LiveVp8Encoder``), so one viewer's wandering estimate does not make keyframes for all. For thousands of
viewers, or viewers on very different links, publish to an SFU over WHIP: it adapts per viewer.

Video is encoded in a thread pool (``ENCODE_THREADS``; libvpx and x264 release the GIL) by one worker per session
at a time, which takes the waiting frames in order and each through every codec in use, one after another (so one
shared frame is never in two encoders at once), and hands the results to the event loop; it does not wait for the
loop between frames, so a busy loop delays delivery but not encoding. If encoding falls behind, the oldest waiting
raw frame is skipped (``ENCODER_QUEUE_FRAMES``, counted), which needs no keyframe. Audio goes through the same
worker, in order with the video (libopus costs 0.3-0.9 ms a 20 ms tick: on the event loop, eight sessions' audio
took a third of its time), and is never skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import av
from aiortc.codecs import get_encoder as aiortc_get_encoder
from aiortc.codecs.vpx import MIN_BITRATE as VP8_MIN_BITRATE
from aiortc.codecs import h264 as aiortc_h264
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCEncodedFrame
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from avatarcast.core.errors import MissingDependencyError
from avatarcast.core.realtime import WorkerPriority, lower
from avatarcast.live.mediaclock import PLAYOUT_RATE_HZ, SAMPLES_PER_TICK
from avatarcast.live.outputs.encoders import (
    LiveH264Encoder,
    LiveOpusEncoder,
    LiveVp8Encoder,
    audio_level_dbov,
    max_bitrate,
    max_h264_bitrate,
)

log = logging.getLogger(__name__)

KEYFRAME_MIN_INTERVAL_S = 0.5
"""Forced keyframes (a viewer joined, lost packets or fell behind) are at least this far apart, whatever the number
of viewers asking: a 512x512 VP8 keyframe is ~10x a delta frame."""
ALIGN_WAIT_S = 1.0
"""A viewer starts on a keyframe whose frame starts on an audio tick (both tracks start at the same media-clock
sample, as ``Scheduler.add_sink`` does); after waiting this long it takes any keyframe (fps that rarely align)."""
VIEWER_VIDEO_QUEUE_FRAMES = 25
"""Encoded video frames a viewer's sender may fall behind (1 s at 25 fps) before its queue is emptied and it waits
for a keyframe."""
VIEWER_AUDIO_QUEUE_FRAMES = 50
"""Encoded 20 ms audio packets a viewer's sender may fall behind before the oldest are dropped."""
AUDIO_HISTORY_FRAMES = 50
"""Encoded audio packets kept (1 s) so a viewer's audio can start at its first keyframe's position."""
ENCODER_QUEUE_FRAMES = 3
"""Raw video frames waiting for the session's encoder; beyond it the oldest is skipped (counted)."""
ENCODE_THREADS = max(2, os.cpu_count() or 2)
"""Threads encoding video for all sessions of the process."""
REMB_FRESH_S = 5.0
"""A viewer's bitrate estimate counts for this long after it was received."""
BITRATE_FLOOR = {"video/vp8": VP8_MIN_BITRATE, "video/h264": aiortc_h264.MIN_BITRATE}
"""The lowest bitrate the slowest viewer can pull a shared stream down to (aiortc's own lower bounds: 250 kbps
VP8, 500 kbps H.264)."""
START_BITRATE = 500_000
"""Before any viewer has reported an estimate (aiortc's default start)."""
VIDEO_CODECS = ("video/vp8", "video/h264")
"""Video codecs encoded once per session (lower case MIME types)."""

_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _encode_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="fanout-encode")
    return _executor


@dataclass(slots=True)
class EncodedMedia:
    """One encoded frame, as every viewer of its codec sends it."""

    payloads: list[bytes]  # RTP payloads (packetized for the codec)
    timestamp: int  # RTP timestamp on the codec's clock, from the session's media clock (each sender adds its origin)
    start_sample: int  # the frame's position on the media clock (48 kHz samples)
    keyframe: bool
    audio_level: int | None = None  # RFC 6465 level (dBov, <= 0) of an audio packet


class ViewerTrack(MediaStreamTrack):
    """One viewer's queue of encoded frames of one kind; its sender reads it (``FanoutViewer.attach``)."""

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__()
        self.kind = kind
        self.limit = limit
        self._queue: deque[EncodedMedia] = deque()
        self._ready = asyncio.Event()
        self.codec: str | None = None  # lower-case MIME type, once subscribed
        self.sent = 0
        self.dropped = 0
        self.on_stop: Callable[[], None] | None = None

    def push(self, media: EncodedMedia) -> bool:
        """Queue ``media``; False when the queue was full (video: emptied, the caller resynchronises)."""
        if self.readyState != "live":
            return True
        ok = True
        if len(self._queue) >= self.limit:
            ok = False
            if self.kind == "video":
                self.dropped += len(self._queue)
                self._queue.clear()
            else:
                self._queue.popleft()
                self.dropped += 1
        if ok or self.kind != "video":
            self._queue.append(media)
        self._ready.set()
        return ok

    async def next_media(self) -> EncodedMedia:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        self.sent += 1
        return self._queue.popleft()

    async def recv(self) -> Any:
        # the sender never calls it (``_next_encoded_frame`` is replaced); a consumer that does gets encoded media
        return await self.next_media()

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
            self._queue.clear()
            self._ready.set()
            if self.on_stop is not None:
                self.on_stop()


class FanoutViewer:
    """One WHEP viewer's handle on its session's fanout: its two tracks and the hooks on its aiortc senders."""

    def __init__(self, fanout: "SessionFanout", has_video: bool, name: str = "") -> None:
        self.fanout = fanout
        self.name = name
        self.has_video = has_video
        self.video = ViewerTrack("video", VIEWER_VIDEO_QUEUE_FRAMES)
        self.audio = ViewerTrack("audio", VIEWER_AUDIO_QUEUE_FRAMES)
        self.video.on_stop = lambda: fanout.unsubscribe(self, "video")
        self.audio.on_stop = lambda: fanout.unsubscribe(self, "audio")
        self.waiting_keyframe = True
        self.waiting_since = time.monotonic()
        self.audio_start: int | None = None  # media-clock sample where this viewer's audio starts
        self.bitrate_estimate: tuple[int, float] | None = None  # (bps, monotonic time received)
        self.keyframe_requests = 0
        self.resyncs = 0

    def attach(self, sender: Any) -> None:
        """Make ``sender`` (this viewer's aiortc ``RTCRtpSender`` of one kind) send the shared encoded frames."""
        for name in ("_next_encoded_frame", "_send_keyframe", "_handle_rtcp_packet", "_ssrc"):
            if not hasattr(sender, name):
                raise MissingDependencyError(f"aiortc's RTCRtpSender has no {name}: this aiortc version is not "
                                             "supported")
        track = self.video if sender.kind == "video" else self.audio
        original_rtcp = sender._handle_rtcp_packet

        async def next_encoded_frame(codec: Any) -> RTCEncodedFrame | None:
            if track.codec is None:
                self.fanout.subscribe(self, track.kind, codec)
            media = await track.next_media()
            return RTCEncodedFrame(media.payloads, media.timestamp, media.audio_level)

        def send_keyframe() -> None:  # a PLI or FIR from this viewer
            self.keyframe_requests += 1
            if track.kind == "video":
                self.fanout.request_keyframe(self)

        async def handle_rtcp_packet(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    pass
                else:
                    if sender._ssrc in ssrcs:
                        self.bitrate_estimate = (int(bitrate), time.monotonic())
            await original_rtcp(packet)

        sender._next_encoded_frame = next_encoded_frame
        sender._send_keyframe = send_keyframe
        sender._handle_rtcp_packet = handle_rtcp_packet

    def stop(self) -> None:
        self.video.stop()
        self.audio.stop()

    # delivery (on the event loop) ---------------------------------------------------------------------------

    def deliver_video(self, media: EncodedMedia) -> None:
        if self.waiting_keyframe:
            if not media.keyframe:
                return
            waited = time.monotonic() - self.waiting_since
            if media.start_sample % SAMPLES_PER_TICK and waited < ALIGN_WAIT_S:
                self.fanout.request_keyframe(self)  # keep asking: the next forced one is aligned
                return
            self.waiting_keyframe = False
            if self.audio_start is None:
                self.audio_start = media.start_sample
                self.fanout.replay_audio(self)
        if not self.video.push(media):  # fell a second behind: start again from a keyframe
            self.resyncs += 1
            self.waiting_keyframe = True
            self.waiting_since = time.monotonic()
            self.fanout.request_keyframe(self)

    def deliver_audio(self, media: EncodedMedia) -> None:
        if self.audio_start is None:
            if self.has_video and self.video.readyState == "live":
                return  # audio starts with the first keyframe
            self.audio_start = media.start_sample
        if media.start_sample >= self.audio_start:
            self.audio.push(media)

    def info(self) -> dict[str, Any]:
        return {"video_codec": self.video.codec, "audio_codec": self.audio.codec,
                "video_sent": self.video.sent, "video_dropped": self.video.dropped,
                "audio_sent": self.audio.sent, "audio_dropped": self.audio.dropped,
                "resyncs": self.resyncs, "keyframe_requests": self.keyframe_requests,
                "bitrate_estimate": self.bitrate_estimate[0] if self.bitrate_estimate else None}


class SharedVideoEncoder:
    """One codec's encoder for a session, with its viewers, keyframe requests and bitrate policy."""

    def __init__(self, mime: str) -> None:
        self.mime = mime
        self.encoder = LiveVp8Encoder() if mime == "video/vp8" else LiveH264Encoder()
        self.viewers: list[FanoutViewer] = []
        self.frames = 0
        self.keyframes = 0
        self.forced_keyframes = 0
        self.encode_s = 0.0
        self._keyframe_wanted_at: float | None = None
        self._last_keyframe_at = -1e9

    def request_keyframe(self) -> None:
        if self._keyframe_wanted_at is None:
            self._keyframe_wanted_at = time.monotonic()

    def target_bitrate(self, width: int, height: int) -> int:
        """The slowest fresh estimate among this codec's viewers, within [floor, size cap] (module docstring)."""
        cap = max_bitrate(width, height) if self.mime == "video/vp8" else max_h264_bitrate(width, height)
        now = time.monotonic()
        estimates = [v.bitrate_estimate for v in list(self.viewers)]  # a copy: the viewers change on the loop
        fresh = [e[0] for e in estimates if e is not None and now - e[1] <= REMB_FRESH_S]
        wanted = min(fresh) if fresh else START_BITRATE
        return max(BITRATE_FLOOR[self.mime], min(cap, wanted))

    def _force_now(self, start_sample: int, now: float) -> bool:
        """Whether this frame is to be a forced keyframe (rate-limited, on an audio tick when possible)."""
        wanted = self._keyframe_wanted_at
        if wanted is None or now - self._last_keyframe_at < KEYFRAME_MIN_INTERVAL_S:
            return False
        return start_sample % SAMPLES_PER_TICK == 0 or now - wanted >= ALIGN_WAIT_S

    def encode(self, frame: av.VideoFrame, start_sample: int) -> EncodedMedia | None:
        """In the session's encode worker (a thread): encode, forcing a keyframe when one is due."""
        now = time.monotonic()
        force = self._force_now(start_sample, now)
        # the encoder restarts (a keyframe) only for a large enough change, not too often (encoders.py)
        self.encoder.target_bitrate = self.target_bitrate(frame.width, frame.height)
        t0 = time.perf_counter()
        payloads, timestamp, keyframe = self.encoder.encode_frame(frame, force)
        self.encode_s += time.perf_counter() - t0
        if not payloads:
            return None
        self.frames += 1
        if keyframe:
            self.keyframes += 1
            self.forced_keyframes += force
            self._last_keyframe_at = now
            self._keyframe_wanted_at = None  # a keyframe answers every request made before it is delivered
        return EncodedMedia(payloads, timestamp, start_sample, keyframe)

    def deliver(self, media: EncodedMedia) -> None:
        """On the event loop."""
        for viewer in list(self.viewers):
            viewer.deliver_video(media)

    def info(self) -> dict[str, Any]:
        codec = self.encoder.codec
        return {"viewers": len(self.viewers), "frames": self.frames, "keyframes": self.keyframes,
                "forced_keyframes": self.forced_keyframes,
                "bitrate": int(codec.bit_rate) if codec is not None else None,
                "encode_ms_mean": round(1000.0 * self.encode_s / self.frames, 2) if self.frames else None}


class SharedAudioEncoder:
    """One audio codec's encoder for a session (Opus: ``LiveOpusEncoder``; any other codec aiortc offers, e.g.
    PCMU, with aiortc's own encoder), with a short history of its output."""

    def __init__(self, codec: Any) -> None:
        self.mime = codec.mimeType.lower()
        self.opus = LiveOpusEncoder() if self.mime == "audio/opus" else None
        self.other = None if self.opus is not None else aiortc_get_encoder(codec)
        self.viewers: list[FanoutViewer] = []
        self.history: deque[EncodedMedia] = deque(maxlen=AUDIO_HISTORY_FRAMES)
        self.frames = 0

    def encode(self, frame: av.AudioFrame, level: int) -> EncodedMedia | None:
        """In the session's encode worker (a thread)."""
        start = int(frame.pts or 0)
        if self.opus is not None:
            payloads, timestamp = self.opus.encode_frame(frame)
        else:
            payloads, timestamp = self.other.encode(frame)
        if not payloads:
            return None
        self.frames += 1
        return EncodedMedia(payloads, timestamp, start, True, level)

    def info(self) -> dict[str, Any]:
        return {"viewers": len(self.viewers), "frames": self.frames}


class SessionFanout:
    """A session's encoders and viewers: a scheduler sink while at least one viewer is subscribed."""

    def __init__(self, add_sink: Callable[[Any], None], remove_sink: Callable[[Any], None], name: str = "",
                 worker_nice: int = 0) -> None:
        self._add_sink = add_sink
        self._remove_sink = remove_sink
        self.name = name
        self.worker_nice = worker_nice  # the encode worker runs this many nice levels below the event loop
        self.viewers: list[FanoutViewer] = []
        self.video: dict[str, SharedVideoEncoder] = {}
        self.audio: dict[str, SharedAudioEncoder] = {}
        self.skipped_frames = 0
        self._attached = False
        self._pending: deque[av.frame.Frame] = deque()  # raw audio and video frames for the encode worker
        self._pending_video = 0
        self._lock = threading.Lock()
        self._worker_running = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # viewers ----------------------------------------------------------------------------------------------

    def new_viewer(self, has_video: bool, name: str = "") -> FanoutViewer:
        viewer = FanoutViewer(self, has_video, name)
        self.viewers.append(viewer)
        return viewer

    def subscribe(self, viewer: FanoutViewer, kind: str, codec: Any) -> None:
        """``viewer``'s sender of ``kind`` started with the negotiated ``codec``: share that codec's encoder."""
        mime = codec.mimeType.lower()
        if kind == "video":
            if mime not in VIDEO_CODECS:
                raise MediaStreamError  # not negotiated by whep.py; ends that sender
            viewer.video.codec = mime
            enc = self.video.get(mime)
            if enc is None:
                enc = self.video[mime] = SharedVideoEncoder(mime)
            enc.viewers.append(viewer)
            viewer.waiting_keyframe = True
            viewer.waiting_since = time.monotonic()
            enc.request_keyframe()
        else:
            viewer.audio.codec = mime
            enc_a = self.audio.get(mime)
            if enc_a is None:
                enc_a = self.audio[mime] = SharedAudioEncoder(codec)
            enc_a.viewers.append(viewer)
            if viewer.audio_start is not None:
                self.replay_audio(viewer)
        self._loop = asyncio.get_running_loop()
        if not self._attached:
            self._attached = True
            self._add_sink(self)

    def unsubscribe(self, viewer: FanoutViewer, kind: str) -> None:
        table: dict = self.video if kind == "video" else self.audio
        for mime, enc in list(table.items()):
            if viewer in enc.viewers:
                enc.viewers.remove(viewer)
                if not enc.viewers:
                    del table[mime]
        if viewer.video.readyState != "live" and viewer.audio.readyState != "live" and viewer in self.viewers:
            self.viewers.remove(viewer)
        if not self.video and not self.audio and self._attached:
            self._attached = False
            self._remove_sink(self)
            with self._lock:
                self._pending.clear()
                self._pending_video = 0

    def request_keyframe(self, viewer: FanoutViewer) -> None:
        enc = self.video.get(viewer.video.codec or "")
        if enc is not None:
            enc.request_keyframe()

    def replay_audio(self, viewer: FanoutViewer) -> None:
        """Queue the encoded audio from ``viewer.audio_start`` on (its video has just started there)."""
        enc = self.audio.get(viewer.audio.codec or "")
        if enc is None or viewer.audio_start is None:
            return
        for media in enc.history:
            if media.start_sample >= viewer.audio_start:
                viewer.audio.push(media)

    # scheduler sink ---------------------------------------------------------------------------------------

    def on_audio(self, frame: av.AudioFrame) -> None:
        if self.audio and self._loop is not None:
            self._submit(frame)

    def on_video(self, frame: av.VideoFrame) -> None:
        if self.video and self._loop is not None:
            self._submit(frame)

    def _submit(self, frame: av.frame.Frame) -> None:
        with self._lock:
            if isinstance(frame, av.VideoFrame):
                if self._pending_video >= ENCODER_QUEUE_FRAMES:  # skip the oldest waiting video frame
                    i = next(i for i, f in enumerate(self._pending) if isinstance(f, av.VideoFrame))
                    del self._pending[i]
                    self._pending_video -= 1
                    self.skipped_frames += 1
                self._pending_video += 1
            self._pending.append(frame)
            if self._worker_running:
                return
            self._worker_running = True
        _encode_executor().submit(self._encode_pending)

    def _stop_worker(self) -> None:
        with self._lock:
            self._pending.clear()
            self._pending_video = 0
            self._worker_running = False

    def _encode_pending(self) -> None:
        """The encode worker (a pool thread): encodes the waiting frames in order (audio and video as the
        scheduler emitted them; each video frame through every codec in use, one after another) and hands each
        result to the event loop. It runs as long as frames wait, so a busy event loop does not slow encoding."""
        loop = self._loop
        lower(self.worker_nice)
        while True:
            with self._lock:
                if not self._pending or loop is None:
                    self._pending.clear()
                    self._pending_video = 0
                    self._worker_running = False
                    return
                frame = self._pending.popleft()
                video = isinstance(frame, av.VideoFrame)
                self._pending_video -= video
            try:
                if video:
                    start = round(frame.pts * frame.time_base * PLAYOUT_RATE_HZ) if frame.pts is not None else 0
                    out: list = [(enc, enc.encode(frame, start)) for enc in list(self.video.values())]
                else:
                    level = audio_level_dbov(frame)
                    out = [(enc, enc.encode(frame, level)) for enc in list(self.audio.values())]
            except Exception:
                log.exception("session %s: %s encoding failed; its viewers get no more %s", self.name,
                              "video" if video else "audio", "video" if video else "audio")
                self._stop_worker()
                loop.call_soon_threadsafe(self._encoding_failed, "video" if video else "audio")
                return
            del frame  # the scheduler's frame pool may use it again
            try:
                loop.call_soon_threadsafe(self._deliver_video if video else self._deliver_audio, out)
            except RuntimeError:  # the loop has closed
                self._stop_worker()
                return

    def _deliver_video(self, out: list[tuple[SharedVideoEncoder, EncodedMedia | None]]) -> None:
        for enc, media in out:
            if media is not None:
                enc.deliver(media)

    def _deliver_audio(self, out: list[tuple[SharedAudioEncoder, EncodedMedia | None]]) -> None:
        for enc, media in out:
            if media is not None:
                enc.history.append(media)
                for viewer in list(enc.viewers):
                    viewer.deliver_audio(media)

    def _encoding_failed(self, kind: str) -> None:
        for viewer in list(self.viewers):
            (viewer.video if kind == "video" else viewer.audio).stop()

    async def close(self) -> None:
        for viewer in list(self.viewers):
            viewer.stop()
        with self._lock:
            self._pending.clear()
            self._pending_video = 0

    def info(self) -> dict[str, Any]:
        """Counters for stats and benchmarks: per codec, how many frames were encoded (once each, whatever the
        number of viewers), and the viewers' totals: frames their senders took, frames dropped from stalled
        viewers' queues, and their restarts on a keyframe (``resyncs``)."""
        return {"viewers": len(self.viewers), "skipped_frames": self.skipped_frames,
                "video": {m: e.info() for m, e in self.video.items()},
                "audio": {m: e.info() for m, e in self.audio.items()},
                "viewers_video_sent": sum(v.video.sent for v in self.viewers),
                "viewers_video_dropped": sum(v.video.dropped for v in self.viewers),
                "viewers_audio_dropped": sum(v.audio.dropped for v in self.viewers),
                "viewers_resyncs": sum(v.resyncs for v in self.viewers)}


_fanouts: "weakref.WeakKeyDictionary[Any, SessionFanout]" = weakref.WeakKeyDictionary()


def fanout_for(scheduler: Any) -> SessionFanout:
    """The session's fanout (one per scheduler, made on first use)."""
    fanout = _fanouts.get(scheduler)
    if fanout is None:
        ref = weakref.ref(scheduler)  # the fanout must not keep its scheduler (the table's key) alive

        def add_sink(sink: Any) -> None:
            if (s := ref()) is not None:
                s.add_sink(sink)

        def remove_sink(sink: Any) -> None:
            if (s := ref()) is not None:
                s.remove_sink(sink)

        fanout = _fanouts[scheduler] = SessionFanout(add_sink, remove_sink, getattr(scheduler, "name", ""),
                                                     getattr(scheduler, "priority", WorkerPriority()).nice)
    return fanout
