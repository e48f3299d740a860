"""The WebRTC video encoder settings for rendered avatars (aiortc's VP8 encoder with two options changed).

aiortc creates one encoder per viewer through ``aiortc.codecs.get_encoder`` and sets libvpx's options inside
``Vp8Encoder.encode`` with no hook to change them. Its defaults suit camera pictures: ``noise-sensitivity 4``
(temporal denoising) and ``cpu-used -6``. Rendered frames have no sensor noise to remove, and most of each frame
is exactly the previous one, so ``LiveVp8Encoder`` turns denoising off and uses libvpx's fastest real-time speed
(``cpu-used -16``). Measured on 200 live-like 512x512 frames of the default avatar at aiortc's 500 kbps, one
thread: 4.5 ms -> 1.7 ms a frame (the decoder's work halves too, 1.0 -> 0.5 ms), PSNR-Y 45.2 -> 45.1 dB, the same
bitrate. It also restarts libvpx less often for bitrate changes (see ``LiveVp8Encoder``). Everything else (rate
control, keyframe requests, packetization) is aiortc's.

``use_live_encoders()`` makes aiortc's sender build this encoder for VP8 (every other codec is aiortc's own) by
replacing the one name ``aiortc.rtcrtpsender.get_encoder``; it is installed once, confined to this module and
reversible (``restore_encoders``).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import av
import aiortc.rtcrtpsender
from aiortc.codecs import get_encoder as _aiortc_get_encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase

LIVE_VP8_OPTIONS = {"noise-sensitivity": "0", "cpu-used": "-16"}
"""libvpx options that differ from aiortc's."""
BITRATE_STEP = 1.5
"""The encoder follows the receiver's bitrate estimate (REMB) only when it moves by this factor or more."""
BITRATE_HOLD_DOWN_S = 2.0
BITRATE_HOLD_UP_S = 10.0
"""And at most this often (seconds since the encoder was started), down and up."""


class LiveVp8Encoder(Vp8Encoder):
    """aiortc's ``Vp8Encoder`` with ``LIVE_VP8_OPTIONS`` (its ``encode``, with the options merged in), and fewer
    restarts for bitrate changes.

    aiortc restarts libvpx (a new encoder, so a keyframe) whenever the receiver's estimate moves by more than 10 %.
    A receiver's estimate wanders between aiortc's bounds (250 kbps - 1.5 Mbps) even on loopback: measured with 4
    sessions on 2 cores, about one restart every 1.5 s per viewer. Each keyframe costs the encoder, the network
    and the decoder several frames' worth, and on a busy machine that delays the receivers, which lowers their
    estimate again. This encoder restarts only for a change of ``BITRATE_STEP`` or more, and not sooner than
    ``BITRATE_HOLD_DOWN_S`` (to go down: congestion) or ``BITRATE_HOLD_UP_S`` (to go up) after the last start.
    """

    _started_at = -1e9

    def _bitrate_restart_due(self, current: int) -> bool:
        target = self.target_bitrate
        since = time.monotonic() - self._started_at
        if target <= current / BITRATE_STEP:
            return since >= BITRATE_HOLD_DOWN_S
        if target >= current * BITRATE_STEP:
            return since >= BITRATE_HOLD_UP_S
        return False

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        codec = self.codec
        if codec is not None and (frame.width != codec.width or frame.height != codec.height
                                  or self._bitrate_restart_due(codec.bit_rate)):
            self.codec = codec = None  # a new size, or a large enough bitrate change: start afresh
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        if codec is None:
            rate = self.target_bitrate
            codec = self.codec = av.CodecContext.create("libvpx", "w")
            codec.width = frame.width
            codec.height = frame.height
            codec.bit_rate = rate
            codec.pix_fmt = "yuv420p"
            codec.gop_size = 3000
            codec.qmin = 2
            codec.qmax = 56
            codec.options = {
                "bufsize": str(rate),
                "cpu-used": "-6",
                "deadline": "realtime",
                "lag-in-frames": "0",
                "minrate": str(rate),
                "maxrate": str(rate),
                "noise-sensitivity": "4",
                "overshoot-pct": "15",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
            } | LIVE_VP8_OPTIONS
            codec.thread_count = number_of_threads(frame.width * frame.height, multiprocessing.cpu_count())
            self._started_at = time.monotonic()
        data = b"".join(bytes(p) for p in codec.encode(frame))
        payloads = self._packetize(data, self.picture_id)
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        return payloads, timestamp


def _get_encoder(codec: Any) -> Any:
    if codec.mimeType.lower() == "video/vp8":
        return LiveVp8Encoder()
    return _aiortc_get_encoder(codec)


def use_live_encoders() -> None:
    """New aiortc senders encode VP8 with ``LiveVp8Encoder``."""
    aiortc.rtcrtpsender.get_encoder = _get_encoder


def restore_encoders() -> None:
    aiortc.rtcrtpsender.get_encoder = _aiortc_get_encoder
