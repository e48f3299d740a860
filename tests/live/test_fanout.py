"""Encode once per session (fanout.py): real aiortc viewers of one live session on loopback.

Every viewer decodes video and audio; each frame is encoded once per codec whatever the number of viewers (the
encoder's calls are counted by media timestamp); a viewer whose sending path stalls, or that vanishes, does not
hold the others or the session's clock; a PLI makes a keyframe (and many PLIs make few); H.264 is negotiated from
the offer, next to VP8 viewers of the same session.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import aiohttp
import numpy as np
import pytest
from aiortc import RTCRtpReceiver, RTCSessionDescription

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.live.client import IngestClient
from avatarcast.live.outputs import encoders, fanout
from avatarcast.live.outputs.whep import fanout_for, new_peer_connection, use_loopback_candidates
from avatarcast.live.server import ServerConfig, run_server
from avatarcast_bench.receiver import WhepReceiver

SIZE = 192
FPS = 25.0


def _config(**kw) -> ServerConfig:
    return ServerConfig(port=0, width=SIZE, height=SIZE, fps=FPS, token="admin", public=True,
                        max_pending_viewers_per_ip=0, **kw)


class EncodeCounter:
    """Counts the live encoders' calls per media timestamp (the real encoder still runs)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()
        for name, cls in (("vp8", encoders.LiveVp8Encoder), ("h264", encoders.LiveH264Encoder)):
            original = cls.encode_frame

            def counted(enc, frame, force_keyframe=False, _original=original, _name=name):
                with self._lock:
                    self.calls[(_name, int(frame.pts))] += 1
                return _original(enc, frame, force_keyframe)

            monkeypatch.setattr(cls, "encode_frame", counted)

    def frames(self, codec: str) -> dict[int, int]:
        with self._lock:
            return {pts: n for (c, pts), n in self.calls.items() if c == codec}


async def _speak(h, seconds: float, speech_dir) -> None:
    audio = load_audio(speech_dir / "ljspeech" / "LJ001-0002.wav")
    pcm = float_to_pcm16(resample(audio.samples[: int(seconds * audio.rate_hz)], audio.rate_hz, 24000))
    s = h.session()
    async with IngestClient(f"ws://127.0.0.1:{h.port}/v1/sessions/default/ingest", s.ingest_token) as c:
        await c.start(24000)
        await c.send_audio(pcm, realtime=True)
        await c.speech_end()
        await c.wait_for("playback.finished", timeout=15)


def _fps(rx: WhepReceiver, t0: float, t1: float) -> float:
    return sum(1 for v in rx.log.video if t0 <= v.t < t1) / (t1 - t0)


def test_every_viewer_decodes_audio_and_video_and_each_frame_is_encoded_once(speech, monkeypatch):
    counter = EncodeCounter(monkeypatch)

    async def body():
        h = await run_server(_config())
        receivers: list[WhepReceiver] = []
        try:
            s = h.session()
            url = f"{h.base_url}/v1/sessions/default/whep"
            receivers.append(WhepReceiver(url))
            await receivers[0].connect()
            await asyncio.sleep(1.0)
            one_viewer = counter.frames("vp8")
            for _ in range(4):  # viewers join while others watch
                rx = WhepReceiver(url)
                await rx.connect()
                receivers.append(rx)
            t0 = time.monotonic()
            await _speak(h, 1.6, speech)
            await asyncio.sleep(0.5)
            t1 = time.monotonic()
            info = fanout_for(s.scheduler).info()
            sooner = s.scheduler.stats.sooner_starts
            assert info["viewers"] == 5 and info["video"]["video/vp8"]["viewers"] == 5
            assert info["audio"]["audio/opus"]["viewers"] == 5
            for rx in receivers:
                assert _fps(rx, t0, t1) > 20, [_fps(r, t0, t1) for r in receivers]
                levels = [a.rms_dbfs for a in rx.log.audio if a.t >= t0]
                assert len(levels) > 40 * (t1 - t0) and max(levels) > -30, (len(levels), max(levels))
        finally:
            for rx in receivers:
                await rx.close()
            await h.close()
        frames = counter.frames("vp8")
        # once per frame with one viewer and with five; every frame the session emitted while watched was encoded
        assert set(one_viewer.values()) == {1} and set(frames.values()) == {1}, Counter(frames.values())
        pts = sorted(frames)
        # 40 ms apart (or a whole number of frames, one not sent), except before an utterance that started sooner
        # than the frame grid: its idle frame before lasted 20 ms
        steps = np.diff(pts)
        assert (steps % 1800 == 0).all() and (steps >= 1800).all()
        assert int(np.sum(steps % 3600 == 1800)) <= sooner
        assert len(pts) >= (t1 - t0) * FPS * 0.9
        assert info["skipped_frames"] <= 2
        assert not counter.frames("h264")

    asyncio.run(body())


def test_a_stalled_or_vanished_viewer_holds_neither_the_others_nor_the_clock():
    async def body():
        h = await run_server(_config())
        receivers: list[WhepReceiver] = []
        try:
            s = h.session()
            url = f"{h.base_url}/v1/sessions/default/whep"
            for _ in range(3):
                rx = WhepReceiver(url)
                await rx.connect()
                receivers.append(rx)
            await asyncio.sleep(0.5)
            # viewer 0's sending path stops (as a socket that blocks for ever would): its RTP sends never return
            stalled = s.viewers[receivers[0].resource_url.rsplit("/", 1)[1]]
            never = asyncio.Event()

            async def blocked(data: bytes) -> None:
                await never.wait()

            for sender in stalled.pc.getSenders():
                sender.transport._send_rtp = blocked
            slips0 = s.scheduler.stats.clock_slips
            t0 = time.monotonic()
            await asyncio.sleep(3.0)
            t1 = time.monotonic()
            fps = [_fps(rx, t0, t1) for rx in receivers]
            assert fps[0] < 2 and min(fps[1:]) > 20, fps  # the stalled viewer gets nothing, the others everything
            stuck = stalled.sink
            # the stalled viewer's queue stays bounded (emptied, then it waits for a keyframe)
            assert len(stuck.video._queue) <= fanout.VIEWER_VIDEO_QUEUE_FRAMES
            assert len(stuck.audio._queue) <= fanout.VIEWER_AUDIO_QUEUE_FRAMES
            assert stuck.video.dropped > 0 and stuck.resyncs >= 1
            assert s.scheduler.stats.clock_slips == slips0
            # forced keyframes for the stalled viewer's resyncs stay rate-limited
            enc = fanout_for(s.scheduler).video["video/vp8"]
            assert enc.keyframes <= 2 + (t1 - t0) / fanout.KEYFRAME_MIN_INTERVAL_S + 1

            # another viewer vanishes without a DELETE: the server notices, the last one plays on
            healthy = receivers[1:]
            await healthy[0].pc.close()
            deadline = time.monotonic() + 10
            while len(s.viewers) > 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert len(s.viewers) == 2
            t2 = time.monotonic()
            await asyncio.sleep(1.5)
            assert _fps(healthy[1], t2, time.monotonic()) > 20
            never.set()
        finally:
            for rx in receivers:
                await rx.close()
            await h.close()

    asyncio.run(body())


def test_a_pli_makes_one_keyframe_and_a_burst_of_plis_few():
    async def body():
        h = await run_server(_config())
        rx = WhepReceiver(f"{h.base_url}/v1/sessions/default/whep")
        try:
            s = h.session()
            await rx.connect()
            await asyncio.sleep(fanout.KEYFRAME_MIN_INTERVAL_S + 0.5)
            enc = fanout_for(s.scheduler).video["video/vp8"]
            video_rx: RTCRtpReceiver = next(t.receiver for t in rx.pc.getTransceivers() if t.kind == "video")
            ssrc = video_rx.getSynchronizationSources()[0].source
            before, forced_before = enc.keyframes, enc.forced_keyframes
            await video_rx._send_rtcp_pli(ssrc)  # a real RTCP PLI over the connection
            deadline = time.monotonic() + 1.0
            while enc.forced_keyframes == forced_before and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert enc.forced_keyframes == forced_before + 1 and enc.keyframes == before + 1
            # a burst of PLIs (a viewer on a lossy link) within a second: at most one keyframe per interval
            kf0 = enc.keyframes
            t0 = time.monotonic()
            for _ in range(20):
                await video_rx._send_rtcp_pli(ssrc)
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - t0
            await asyncio.sleep(0.1)
            assert 1 <= enc.keyframes - kf0 <= elapsed / fanout.KEYFRAME_MIN_INTERVAL_S + 1
            viewer = next(iter(s.viewers.values()))
            assert viewer.sink.keyframe_requests >= 21
            n = len(rx.log.video)
            await asyncio.sleep(0.5)
            assert len(rx.log.video) > n + 8  # still decoding
            # the receiver's REMB estimate reaches the shared encoder (the slowest viewer's, within bounds)
            deadline = time.monotonic() + 5.0
            while viewer.sink.bitrate_estimate is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert viewer.sink.bitrate_estimate is not None
            await asyncio.sleep(0.1)
            assert enc.encoder.target_bitrate == enc.target_bitrate(SIZE, SIZE)
        finally:
            await rx.close()
            await h.close()

    asyncio.run(body())


async def _codec_viewer(url: str, codecs: list[str]):
    """A receive-only aiortc viewer whose offer lists only ``codecs`` (MIME types, in that order) for video;
    returns the pc, the answer and the list its decoded video frames go to."""
    use_loopback_candidates(True)
    pc = new_peer_connection()
    video = pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    caps = RTCRtpReceiver.getCapabilities("video").codecs
    video.setCodecPreferences([c for name in codecs for c in caps if c.mimeType == name])
    frames: list = []
    audio: list = []

    @pc.on("track")
    def on_track(track):
        async def consume():
            try:
                while True:
                    f = await track.recv()
                    (frames if track.kind == "video" else audio).append((time.monotonic(), f.width if
                                                                          track.kind == "video" else 0))
            except Exception:
                return
        asyncio.ensure_future(consume())

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        r = await http.post(url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
        assert r.status == 201, await r.text()
        answer = await r.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return pc, answer, frames, audio


def _video_codecs(sdp: str) -> list[str]:
    section = sdp.split("m=video", 1)[1].split("m=", 1)[0]
    return [line.split(" ", 1)[1].split("/")[0] for line in section.splitlines() if line.startswith("a=rtpmap:")]


def test_h264_is_negotiated_from_the_offer_and_each_codec_is_encoded_once(monkeypatch):
    counter = EncodeCounter(monkeypatch)

    async def body():
        h = await run_server(_config())
        pcs = []
        try:
            s = h.session()
            url = f"{h.base_url}/v1/sessions/default/whep"
            pc1, answer1, h264_frames, h264_audio = await _codec_viewer(url, ["video/H264"])
            pcs.append(pc1)
            assert _video_codecs(answer1)[0] == "H264" and "VP8" not in _video_codecs(answer1)
            pc2, answer2, h264_first, _ = await _codec_viewer(url, ["video/H264", "video/VP8"])
            pcs.append(pc2)
            assert _video_codecs(answer2)[0] == "H264"  # the viewer's order decides
            pc3, answer3, vp8_frames, _ = await _codec_viewer(url, ["video/VP8", "video/H264"])
            pcs.append(pc3)
            assert _video_codecs(answer3)[0] == "VP8"
            await asyncio.sleep(3.0)
            t = time.monotonic()
            for got in (h264_frames, h264_first, vp8_frames):
                recent = [w for ts, w in got if ts > t - 1.5]
                assert len(recent) > 25 and set(recent) == {SIZE}, len(recent)
            assert len(h264_audio) > 50
            info = fanout_for(s.scheduler).info()
            assert info["video"]["video/h264"]["viewers"] == 2 and info["video"]["video/vp8"]["viewers"] == 1
        finally:
            for pc in pcs:
                await pc.close()
            await h.close()
        for codec in ("h264", "vp8"):
            frames = counter.frames(codec)
            assert len(frames) > 50 and set(frames.values()) == {1}, (codec, Counter(frames.values()))

    asyncio.run(body())


def test_an_offer_without_a_usable_video_codec_is_refused_and_the_session_plays_on():
    async def body():
        h = await run_server(_config())
        try:
            use_loopback_candidates(True)
            pc = new_peer_connection()
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            await pc.close()
            # the same offer with its video codecs renamed to one nobody here encodes
            sdp = pc.localDescription.sdp.replace("VP8/90000", "AV1X/90000").replace("H264/90000", "AV1X/90000")
            async with aiohttp.ClientSession() as http:
                r = await http.post(f"{h.base_url}/v1/sessions/default/whep", data=sdp,
                                    headers={"Content-Type": "application/sdp"})
                assert r.status == 400 and (await r.json())["error"]["code"] == "negotiation_failed"
            rx = WhepReceiver(f"{h.base_url}/v1/sessions/default/whep")
            await rx.connect()
            await rx.close()
        finally:
            await h.close()

    asyncio.run(body())


@pytest.mark.parametrize("value", ["0", "-3", "100001"])
def test_serve_checks_max_viewers(value, capsys):
    from avatarcast.cli.main import main

    assert main(["serve", "--max-viewers", value, "--port", "0"]) != 0
    assert "--max-viewers" in capsys.readouterr().err


def test_the_bitrate_follows_the_slowest_fresh_estimate_within_bounds(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(fanout.time, "monotonic", lambda: clock[0])
    f = fanout.SessionFanout(lambda sink: None, lambda sink: None)
    enc = fanout.SharedVideoEncoder("video/vp8")
    a, b, c = (f.new_viewer(True) for _ in range(3))
    enc.viewers += [a, b, c]
    cap = encoders.max_bitrate(512, 512)
    assert enc.target_bitrate(512, 512) == fanout.START_BITRATE  # nobody has reported yet
    a.bitrate_estimate = (2_000_000, clock[0])
    assert enc.target_bitrate(512, 512) == cap  # a fast viewer: the size cap
    b.bitrate_estimate = (400_000, clock[0])
    assert enc.target_bitrate(512, 512) == 400_000  # the slowest viewer
    c.bitrate_estimate = (60_000, clock[0])
    assert enc.target_bitrate(512, 512) == fanout.BITRATE_FLOOR["video/vp8"]  # never below the floor
    clock[0] += fanout.REMB_FRESH_S + 1
    a.bitrate_estimate = (900_000, clock[0])
    assert enc.target_bitrate(512, 512) == cap  # old estimates no longer count
    h264 = fanout.SharedVideoEncoder("video/h264")
    h264.viewers.append(c)
    c.bitrate_estimate = (60_000, clock[0])
    assert h264.target_bitrate(512, 512) == fanout.BITRATE_FLOOR["video/h264"]
