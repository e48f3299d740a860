"""The RTMP sink (FLV, H.264 + AAC), written to a local FLV file instead of an RTMP server: the same muxer and
encoders, no network."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from avatarcast.live.outputs.rtmp import RtmpOutput
from avatarcast.live.scheduler import VideoFramePool, video_frame


def test_rtmp_output_muxes_both_streams_and_leaves_the_shared_frames_alone(tmp_path) -> None:
    path = tmp_path / "out.flv"
    out = RtmpOutput(str(path), 64, 64, 25.0)
    out.start()

    pool = VideoFramePool()
    rng = np.random.default_rng(0)
    shared = []
    for k in range(50):  # 2 s: frame k starts at sample 1920 k, 1000 frames into the session
        pts90 = (1000 + k) * 3600
        frame = video_frame(rng.integers(0, 256, (96, 64), dtype=np.uint8), pool)
        frame.pts, frame.time_base = pts90, Fraction(1, 90000)
        out.on_video(frame)
        shared.append((frame, pts90))
        for tick in range(2):
            pcm = (rng.normal(0, 3000, (1, 960))).astype(np.int16)
            a = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            a.sample_rate, a.pts, a.time_base = 48000, (1000 + k) * 1920 + tick * 960, Fraction(1, 48000)
            out.on_audio(a)
    out.close()
    assert out.error is None and out.dropped == 0
    # the frames given to the sink keep their media timestamps (other sinks encode the same objects)
    assert all(f.pts == pts for f, pts in shared)
    with av.open(str(path)) as container:
        kinds = [s.type for s in container.streams]
        assert sorted(kinds) == ["audio", "video"]
        video = [f for f in container.decode(video=0)]
    assert len(video) == 50
    assert video[0].time < 0.05 and abs((video[-1].time - video[0].time) - 49 / 25) < 0.01  # 25 fps from the pts
