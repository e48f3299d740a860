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
replacing the one name ``aiortc.rtcrtpsender.get_encoder``. It also replaces ``aiortc.rtp.compute_audio_level_dbov``
(the RFC 6465 level the sender puts in every audio packet's header extension), which adds up the squares of an audio
frame's samples in a Python loop on the event loop, with the same sum in numpy (``audio_level_dbov``, the same
result: 0.22 -> 0.01 ms a 20 ms packet, 50 packets a second per viewer). Both are installed once, confined to this
module and reversible (``restore_encoders``).

WHEP viewers do not go through aiortc's per-sender encoders at all: a session encodes each frame once per codec
(``fanout.py``) with ``LiveVp8Encoder``, ``LiveH264Encoder`` and ``LiveOpusEncoder``, whose ``encode_frame`` also
says whether the frame is a keyframe (a viewer starts on one).
"""

from __future__ import annotations

import fractions
import math
import multiprocessing
import time
from typing import Any

import av
import aiortc.rtcrtpsender
import aiortc.rtp
import numpy as np
from aiortc.codecs import get_encoder as _aiortc_get_encoder
from aiortc.codecs import h264 as _h264
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import MAX_BITRATE, MIN_BITRATE, Vp8Encoder, number_of_threads
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase

LIVE_VP8_OPTIONS = {"noise-sensitivity": "0", "cpu-used": "-16"}
"""libvpx options that differ from aiortc's."""
BITRATE_STEP = 1.5
"""The encoder follows the receiver's bitrate estimate (REMB) only when it moves by this factor or more."""
BITRATE_HOLD_DOWN_S = 2.0
BITRATE_HOLD_UP_S = 10.0
"""And at most this often (seconds since the encoder was started), down and up."""
MAX_BITRATE_PER_MEGAPIXEL = 2_300_000
"""The most a viewer's VP8 stream gets, in bits per second per million pixels of the frame (about 600 kbps at
512x512), below aiortc's own bound (1.5 Mbps). On loopback or a fast network the receiver's estimate climbs to that
bound, but a rendered avatar does not need it: on 250 live-like 512x512 frames of the default avatar, 600 kbps gives
PSNR-Y 46.1 dB and 1.5 Mbps 47.4 dB (the encoder used only ~900 kbps of it), while the encode costs ~2.2 against
~3 ms a frame and 3.3 against 4.0 RTP packets, which every receiver then also decrypts and decodes."""


def max_bitrate(width: int, height: int) -> int:
    """The bitrate cap for a ``width`` x ``height`` stream (``MAX_BITRATE_PER_MEGAPIXEL``), at least aiortc's
    lower bound."""
    return max(MIN_BITRATE, min(MAX_BITRATE, int(MAX_BITRATE_PER_MEGAPIXEL * width * height / 1e6)))


class _LiveRestarts:
    """What the live VP8 and H.264 encoders share: ``encode`` through ``encode_frame``, yuv420p input, and a new
    codec only for a new frame size or a bitrate change of ``BITRATE_STEP`` or more (see ``LiveVp8Encoder``). A
    subclass gives ``_bitrate_for(frame)`` and ``encode_frame(frame, force_keyframe)``."""

    _started_at = -1e9
    codec: Any

    def _bitrate_restart_due(self, current: int, target: int) -> bool:
        since = time.monotonic() - self._started_at
        if target <= current / BITRATE_STEP:
            return since >= BITRATE_HOLD_DOWN_S
        if target >= current * BITRATE_STEP:
            return since >= BITRATE_HOLD_UP_S
        return False

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        payloads, timestamp, _ = self.encode_frame(frame, force_keyframe)  # type: ignore[attr-defined]
        return payloads, timestamp

    def _prepare(self, frame: Any) -> tuple[Any, Any]:
        """The frame as yuv420p, and the codec to encode it with (None: start a new one)."""
        assert isinstance(frame, av.VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        codec = self.codec
        if codec is not None and (frame.width != codec.width or frame.height != codec.height
                                  or self._bitrate_restart_due(codec.bit_rate,
                                                               self._bitrate_for(frame))):  # type: ignore[attr-defined]
            self.codec = codec = None  # a new size, or a large enough bitrate change: start afresh
        return frame, codec


class LiveVp8Encoder(_LiveRestarts, Vp8Encoder):
    """aiortc's ``Vp8Encoder`` with ``LIVE_VP8_OPTIONS`` (its ``encode``, with the options merged in), and fewer
    restarts for bitrate changes.

    aiortc restarts libvpx (a new encoder, so a keyframe) whenever the receiver's estimate moves by more than 10 %.
    A receiver's estimate wanders between aiortc's bounds (250 kbps - 1.5 Mbps) even on loopback: measured with 4
    sessions on 2 cores, about one restart every 1.5 s per viewer. Each keyframe costs the encoder, the network
    and the decoder several frames' worth, and on a busy machine that delays the receivers, which lowers their
    estimate again. This encoder restarts only for a change of ``BITRATE_STEP`` or more, and not sooner than
    ``BITRATE_HOLD_DOWN_S`` (to go down: congestion) or ``BITRATE_HOLD_UP_S`` (to go up) after the last start. And
    it never asks libvpx for more than ``max_bitrate`` of the frame's size.
    """

    def _bitrate_for(self, frame: Any) -> int:
        """The receiver's estimate, capped for the frame's size (``max_bitrate``)."""
        return min(self.target_bitrate, max_bitrate(frame.width, frame.height))

    def encode_frame(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int, bool]:
        """``encode``, and whether the frame came out as a keyframe."""
        frame, codec = self._prepare(frame)
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        if codec is None:
            rate = self._bitrate_for(frame)
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
        packets = codec.encode(frame)
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.NONE  # the frame may be encoded again (another codec)
        data = b"".join(bytes(p) for p in packets)
        payloads = self._packetize(data, self.picture_id)
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        return payloads, timestamp, any(p.is_keyframe for p in packets)


H264_PRESET = "superfast"
"""libx264's speed preset. aiortc uses x264's default (``medium``); on 100 live-like 512x512 frames of the bundled
portrait at 600 kbps, one thread: ultrafast 1.2 ms a frame, superfast 1.4, veryfast 2.0 (the bitrate each reached:
434, 438, 429 kbps). Superfast keeps most of the quality tools (it is what streaming software offers for live CPU
encoding) at about the cost of the live VP8 encoder."""
H264_MAX_BITRATE_PER_MEGAPIXEL = 3_000_000
"""The most an H.264 stream gets, per million pixels (about 790 kbps at 512x512), within aiortc's H.264 bounds
(500 kbps - 3 Mbps): baseline profile needs a little more than VP8 for the same picture."""


def max_h264_bitrate(width: int, height: int) -> int:
    return max(_h264.MIN_BITRATE, min(_h264.MAX_BITRATE, int(H264_MAX_BITRATE_PER_MEGAPIXEL * width * height / 1e6)))


class LiveH264Encoder(_LiveRestarts, H264Encoder):
    """aiortc's ``H264Encoder`` (its packetization: single NAL units, STAP-A, FU-A; packetization-mode 1) with a
    live preset (``H264_PRESET``), one thread, and ``LiveVp8Encoder``'s rule for restarts on bitrate changes.
    Constrained baseline at level 3.1, as aiortc offers it (profile-level-id 42e01f / 42001f): every WebRTC
    browser and hardware decoder plays it. x264 repeats SPS and PPS before every IDR frame, so a viewer that
    starts on a keyframe has all it needs."""

    def _bitrate_for(self, frame: Any) -> int:
        return min(self.target_bitrate, max_h264_bitrate(frame.width, frame.height))

    def encode_frame(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int, bool]:
        frame, codec = self._prepare(frame)
        frame.pict_type = av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        if codec is None:
            codec = self.codec = av.CodecContext.create("libx264", "w")
            codec.width = frame.width
            codec.height = frame.height
            codec.bit_rate = self._bitrate_for(frame)
            codec.pix_fmt = "yuv420p"
            codec.framerate = fractions.Fraction(_h264.MAX_FRAME_RATE, 1)
            codec.time_base = fractions.Fraction(1, _h264.MAX_FRAME_RATE)
            codec.options = {"preset": H264_PRESET, "tune": "zerolatency", "level": "31"}
            codec.profile = "Baseline"
            codec.thread_count = 1
            self._started_at = time.monotonic()
        packets = codec.encode(frame)
        frame.pict_type = av.video.frame.PictureType.NONE
        data = b"".join(bytes(p) for p in packets)
        payloads = self._packetize(self._split_bitstream(data)) if data else []
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        return payloads, timestamp, any(p.is_keyframe for p in packets)


OPUS_BITRATE = 64_000
"""Opus bitrate of the shared audio encoder (mono speech; aiortc's per-viewer encoder used 96 kbps stereo)."""


class LiveOpusEncoder:
    """Opus for the session's 48 kHz mono 20 ms ticks: one packet per tick, its RTP timestamp the tick's position
    on the session's media clock (48 kHz, the same counter the video timestamps come from).

    The stream is mono: the session's audio is mono, and an Opus decoder set up for the SDP's two channels
    (``opus/48000/2``) plays a mono stream on both; it costs about half of aiortc's stereo encoder."""

    def __init__(self) -> None:
        codec = self.codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = OPUS_BITRATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = 48000
        codec.time_base = fractions.Fraction(1, 48000)
        codec.options = {"application": "voip"}

    def encode_frame(self, frame: Any) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.AudioFrame) and frame.sample_rate == 48000 and frame.format.name == "s16"
        if frame.layout.name != "mono":
            frame = av.AudioFrame.from_ndarray(frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                                               .mean(axis=1).astype(np.int16).reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = 48000
        frame.time_base = fractions.Fraction(1, 48000)
        pts = frame.pts
        payloads = [bytes(p) for p in self.codec.encode(frame)]
        return payloads, int(pts or 0)


_aiortc_audio_level = aiortc.rtp.compute_audio_level_dbov


def audio_level_dbov(frame: Any) -> int:
    """``aiortc.rtp.compute_audio_level_dbov`` (RFC 6465, Appendix A) with the sum of squares in numpy: the same
    bytes of the frame's first plane and the same arithmetic (the sum is exact in both)."""
    samples = np.frombuffer(frame.planes[0], np.int16)
    energy = float(np.dot(samples.astype(np.int64), samples.astype(np.int64)))
    rms = math.sqrt(energy / (frame.samples * 32767 * 32767))
    if rms > 0:
        return round(min(max(20 * math.log10(rms), -127), 0))
    return -127


def _get_encoder(codec: Any) -> Any:
    if codec.mimeType.lower() == "video/vp8":
        return LiveVp8Encoder()
    return _aiortc_get_encoder(codec)


def use_live_encoders() -> None:
    """New aiortc senders encode VP8 with ``LiveVp8Encoder``; audio levels come from ``audio_level_dbov``."""
    aiortc.rtcrtpsender.get_encoder = _get_encoder
    aiortc.rtp.compute_audio_level_dbov = audio_level_dbov


def restore_encoders() -> None:
    aiortc.rtcrtpsender.get_encoder = _aiortc_get_encoder
    aiortc.rtp.compute_audio_level_dbov = _aiortc_audio_level
