"""The live VP8 encoder: aiortc's, with real-time settings for rendered frames and fewer restarts (keyframes) when
the receiver's bitrate estimate moves."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from avatarcast.live.outputs import encoders
from avatarcast.live.outputs.encoders import BITRATE_HOLD_DOWN_S, BITRATE_HOLD_UP_S, LiveVp8Encoder
from aiortc.codecs.vpx import Vp8Decoder
from aiortc.jitterbuffer import JitterFrame


def _frames(n: int, size: int = 128):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size * 3 // 2, size), dtype=np.uint8)
    for i in range(n):
        yuv = base.copy()
        yuv[40 + i % 8: 60 + i % 8, 40:80] = 255 - yuv[40 + i % 8: 60 + i % 8, 40:80]  # something moves
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts, frame.time_base = i * 3600, Fraction(1, 90000)
        yield frame


def test_small_bitrate_changes_keep_the_encoder_and_large_ones_restart_it(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(encoders.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(encoders, "MAX_BITRATE_PER_MEGAPIXEL", 1e9)  # no size cap for these small frames
    enc = LiveVp8Encoder()
    frames = _frames(12)

    def step(seconds: float, rate: int):
        clock[0] += seconds
        enc.target_bitrate = rate
        enc.encode(next(frames))
        return enc.codec

    first = step(0.0, 500_000)
    # the estimate wanders by up to 40 %: the same encoder (no keyframe), however long it runs
    for rate in (600_000, 420_000, 650_000, 380_000):
        assert step(30.0, rate) is first
    low = step(1.0, 250_000)  # a large drop, long after the start: at once
    assert low is not first and low.bit_rate == 250_000
    assert step(BITRATE_HOLD_DOWN_S, 1_000_000) is low  # going up waits longer
    high = step(BITRATE_HOLD_UP_S, 1_000_000)
    assert high is not low and high.bit_rate == 1_000_000
    assert step(0.5, 250_000) is high  # going down waits too, if less
    assert step(BITRATE_HOLD_DOWN_S, 250_000).bit_rate == 250_000


def test_the_bitrate_is_capped_for_the_frame_size() -> None:
    assert encoders.max_bitrate(512, 512) == 602_931
    assert encoders.max_bitrate(128, 128) == 250_000  # aiortc's lower bound
    assert encoders.max_bitrate(1920, 1080) == 1_500_000  # aiortc's upper bound
    enc = LiveVp8Encoder()
    enc.target_bitrate = 1_500_000  # what a receiver on loopback ends up asking for
    enc.encode(next(_frames(1, size=512)))
    assert enc.codec.bit_rate == encoders.max_bitrate(512, 512)
    enc.target_bitrate = 300_000  # below the cap the receiver's estimate rules
    enc._started_at = -1e9
    enc.encode(next(_frames(2, size=512)))
    assert enc.codec.bit_rate == 300_000


def test_the_stream_decodes_through_restarts() -> None:
    enc, dec = LiveVp8Encoder(), Vp8Decoder()
    decoded = 0
    for i, frame in enumerate(_frames(10)):
        if i == 5:
            enc._started_at = -1e9  # as if long ago: the next large change restarts at once
            enc.target_bitrate = 250_000
        payloads, timestamp = enc.encode(frame)
        data = b"".join(dec_payload(p) for p in payloads)
        decoded += len(dec.decode(JitterFrame(data=data, timestamp=timestamp)))
    assert decoded == 10


def dec_payload(payload: bytes) -> bytes:
    """The VP8 bitstream part of an RTP payload (aiortc's payload descriptor stripped)."""
    from aiortc.codecs.vpx import VpxPayloadDescriptor

    descriptor, data = VpxPayloadDescriptor.parse(payload)
    return data


def test_audio_levels_are_aiortcs_computed_faster() -> None:
    import aiortc.rtp

    rng = np.random.default_rng(3)
    frames = []
    for amplitude in (0, 1, 3, 100, 3000, 20000, 40000):
        for _ in range(10):
            pcm = np.clip(rng.normal(0, amplitude, (1, 960)), -32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = 48000
            frames.append(frame)
    full = av.AudioFrame.from_ndarray(np.full((1, 960), -32768, np.int16), format="s16", layout="mono")
    full.sample_rate = 48000
    frames.append(full)  # full scale: the level is clamped to 0
    levels = [encoders.audio_level_dbov(f) for f in frames]
    assert levels == [encoders._aiortc_audio_level(f) for f in frames]
    assert min(levels) == -127 and max(levels) == 0
    encoders.use_live_encoders()
    try:
        assert aiortc.rtp.compute_audio_level_dbov is encoders.audio_level_dbov  # what aiortc's sender calls
    finally:
        encoders.restore_encoders()
    assert aiortc.rtp.compute_audio_level_dbov is encoders._aiortc_audio_level
