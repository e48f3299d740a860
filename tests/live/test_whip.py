"""WHIP publishing, end to end on loopback: a WHIP endpoint started here (aiohttp + an aiortc answering peer, as a
media server would run it) receives the session's audio and video, decodable and in sync; when the endpoint
restarts, the engine publishes again; when the session ends, the endpoint receives the DELETE.

Sync is measured on the content, as in test_webrtc_sync: each decoded frame is matched to the emitted frame it
shows, the decoded audio is cross-correlated with the emitted audio; the difference of the two offsets is the A/V
offset the endpoint would pass on to its viewers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.core.errors import InputError
from avatarcast.live.client import IngestClient
from avatarcast.live.outputs.fanout import fanout_for
from avatarcast.live.outputs.whep import new_peer_connection
from avatarcast.live.outputs.whip import check_whip_token, check_whip_url, endpoint_origin
from avatarcast.live.server import ServerConfig, run_server
from media_sinks import Recorder, thumb

SIZE = 256
FPS = 25.0
WHIP_TOKEN = "whip-secret-5f3a9c"


def _envelope(samples: np.ndarray, hop: int = 240) -> np.ndarray:
    n = len(samples) // hop
    return np.sqrt(np.mean(samples[: n * hop].reshape(n, hop) ** 2, axis=1))


class WhipEndpoint:
    """A WHIP endpoint (RFC 9725) on 127.0.0.1: answers offers with an aiortc peer, decodes what it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.posts: list[dict[str, str]] = []
        self.deletes: list[str] = []
        self.video: list[tuple[int, np.ndarray]] = []
        self.audio: list[tuple[int, np.ndarray]] = []
        self.pcs: dict[str, object] = {}
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/whip/live"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/whip/live", self._post)
        app.router.add_delete("/whip/resource/{id}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Shut down as a restarting server does: its peer connections close, then it stops listening."""
        for pc in list(self.pcs.values()):
            await pc.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        self.posts.append({"content_type": request.headers.get("Content-Type", ""),
                           "authorization": request.headers.get("Authorization", "")})
        if request.headers.get("Authorization") != f"Bearer {WHIP_TOKEN}":
            return web.Response(status=401)
        if request.content_type != "application/sdp":
            return web.Response(status=415)
        pc = new_peer_connection()
        rid = uuid.uuid4().hex[:8]
        self.pcs[rid] = pc

        @pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.create_task(self._receive(track)))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=await request.text(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": f"/whip/resource/{rid}"})  # relative: resolved by the client

    async def _delete(self, request: web.Request) -> web.Response:
        self.deletes.append(request.match_info["id"])
        pc = self.pcs.pop(request.match_info["id"], None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=200)

    async def _receive(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.video.append((frame.pts, thumb(frame.to_ndarray(format="rgb24"))))
            else:
                pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0] if frame.format.is_packed \
                    else frame.to_ndarray()[0]
                self.audio.append((frame.pts, pcm.astype(np.float32) / 32768.0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until(predicate, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def _av_offset_ms(recorder: Recorder, got_video: list, got_audio: list) -> float:
    """Audio offset minus video offset at the receiver, in ms (see the module's description)."""
    sent_pts = np.array([p for p, _ in recorder.video])
    sent = np.stack([t for _, t in recorder.video])
    audio_at = {pts: a for pts, a in recorder.audio}
    loud = np.array([float(np.sqrt(np.mean(audio_at.get(round(p * 48000 / 90000), np.zeros(1)) ** 2))) > 0.02
                     for p in sent_pts])
    assert loud.sum() > 10, "the emitted speech frames were not recorded"
    offsets_v = []
    for pts, thumb in got_video:
        best = int(np.argmin(np.abs(sent - thumb).mean(axis=(1, 2))))
        if loud[best]:
            offsets_v.append(sent_pts[best] / 90000.0 - pts / 90000.0)
    assert len(offsets_v) > 10, len(offsets_v)
    offset_v = float(np.median(offsets_v))
    assert np.mean(np.abs(np.array(offsets_v) - offset_v) < 1.5 / FPS) > 0.8, "decoded frames drift or skip"
    sent_a0 = recorder.audio[0][0]
    sent_audio = np.concatenate([a for _, a in recorder.audio])
    got_a0 = got_audio[0][0]
    got = np.zeros(got_audio[-1][0] - got_a0 + len(got_audio[-1][1]), np.float32)
    for pts, a in got_audio:
        got[pts - got_a0: pts - got_a0 + len(a)] = a
    e_sent, e_got = _envelope(sent_audio), _envelope(got)
    assert e_got.max() > 0.02, "the speech did not come through"
    best_lag, best_score = 0, -1.0
    for lag in range(0, max(1, len(e_sent) - len(e_got) // 2)):
        seg = e_sent[lag: lag + len(e_got)]
        m = min(len(seg), len(e_got))
        score = float(np.dot(seg[:m] - seg[:m].mean(), e_got[:m] - e_got[:m].mean()))
        if score > best_score:
            best_lag, best_score = lag, score
    offset_a = (sent_a0 + best_lag * 240) / 48000.0 - got_a0 / 48000.0
    return (offset_a - offset_v) * 1000.0


def test_whip_urls_and_tokens_are_checked_and_never_shown() -> None:
    assert check_whip_url(" https://sfu.example.com/whip/KEY ") == "https://sfu.example.com/whip/KEY"
    for bad in ("ftp://x/whip", "/whip", "https://user:pw@x/whip", "https://x/whip#f", "http://x:99999/w", "x" * 3000):
        with pytest.raises(InputError):
            check_whip_url(bad)
    assert check_whip_token("") is None
    for bad in ("a b", "tok\n", "é"):
        with pytest.raises(InputError):
            check_whip_token(bad)
    assert endpoint_origin("https://sfu.example.com:8443/live/STREAMKEY?x=1") == "https://sfu.example.com:8443"


def test_whip_publish_in_sync_republish_after_endpoint_restart_and_delete_at_session_end(speech, caplog):
    caplog.set_level(logging.DEBUG)
    audio = load_audio(speech / "ljspeech" / "LJ001-0002.wav")
    pcm = float_to_pcm16(resample(audio.samples[: int(1.8 * audio.rate_hz)], audio.rate_hz, 24000))
    port = _free_port()

    async def body():
        endpoint = WhipEndpoint(port)
        await endpoint.start()
        h = await run_server(ServerConfig(port=0, width=SIZE, height=SIZE, fps=FPS, token="admin",
                                          default_session=False))
        auth = {"Authorization": "Bearer admin"}
        try:
            async with aiohttp.ClientSession() as http:
                # the per-session WHIP target is validated like every other field
                r = await http.post(f"{h.base_url}/v1/sessions", headers=auth,
                                    json={"whip": {"url": "ftp://127.0.0.1/whip"}})
                assert r.status == 400 and (await r.json())["error"]["field"] == "whip"
                r = await http.post(f"{h.base_url}/v1/sessions", headers=auth,
                                    json={"whip": {"url": endpoint.url, "token": 5}})
                assert r.status == 400 and (await r.json())["error"]["field"] == "whip.token"

                r = await http.post(f"{h.base_url}/v1/sessions", headers=auth, json={
                    "size": f"{SIZE}x{SIZE}", "whip": {"url": endpoint.url, "token": WHIP_TOKEN}})
                assert r.status == 201, await r.text()
                created = await r.json()
                sid = created["id"]
                session = h.session(sid)
                assert created["whip"]["endpoint"] == f"http://127.0.0.1:{port}"

                # published: the endpoint got a proper WHIP POST and decodes frames
                await _until(lambda: len(endpoint.video) >= 25 and len(endpoint.audio) >= 50, 20,
                             "the endpoint to decode 1 s of video and audio")
                assert endpoint.posts[0] == {"content_type": "application/sdp",
                                             "authorization": f"Bearer {WHIP_TOKEN}"}
                r = await http.get(f"{h.base_url}/v1/sessions/{sid}", headers=auth)
                text = await r.text()
                info = (await r.json())["whip"]
                assert info["state"] == "connected" and info["publishes"] == 1, info
                assert WHIP_TOKEN not in text and "/whip/live" not in text  # neither token nor path shown
                r = await http.get(f"{h.base_url}/v1/sessions/{sid}/stats", headers=auth)
                assert (await r.json())["whip"]["state"] == "connected"

                # speech: audio and video arrive in sync at the endpoint
                recorder = Recorder()
                session.scheduler.add_sink(recorder)
                await asyncio.sleep(0.3)
                first_video = len(endpoint.video)
                first_audio = len(endpoint.audio)
                async with IngestClient(f"ws://127.0.0.1:{h.port}/v1/sessions/{sid}/ingest",
                                        session.ingest_token) as c:
                    await c.start(24000)
                    await c.send_audio(pcm, realtime=True, speed=1.5)
                    await c.speech_end()
                    await c.wait_for("playback.finished", timeout=15)
                await asyncio.sleep(0.6)
                session.scheduler.remove_sink(recorder)
                av_offset_ms = _av_offset_ms(recorder, endpoint.video[first_video:], endpoint.audio[first_audio:])
                print(f"WHIP endpoint A/V offset {av_offset_ms:+.1f} ms (audio vs video, Opus delay included)")
                assert abs(av_offset_ms) <= 30.0, av_offset_ms

                # the endpoint restarts: its connection closes, it is down a while, then it comes back
                await endpoint.stop()
                await _until(lambda: session.whip.state in ("retrying", "connecting"), 10,
                             "the publisher to notice the endpoint went away")
                await asyncio.sleep(1.5)  # down: at least one attempt is refused
                endpoint2 = WhipEndpoint(port)
                await endpoint2.start()
                up = time.monotonic()
                try:
                    await _until(lambda: len(endpoint2.video) >= 1, 30, "the engine to publish again")
                    print(f"restarted endpoint: first decoded frame {time.monotonic() - up:.2f} s after it came "
                          f"back (attempt {session.whip.attempts}; backoff 1, 2, 4 ... s)")
                    await _until(lambda: len(endpoint2.video) >= 25, 30, "the engine to publish again")
                    assert session.whip.publishes == 2 and session.whip.state == "connected"
                    assert session.whip.attempts >= 3  # at least one refused attempt while it was down
                    assert len(endpoint2.posts) == 1

                    # the session ends: the endpoint gets the DELETE of its resource
                    resource = next(iter(endpoint2.pcs))
                    r = await http.delete(f"{h.base_url}/v1/sessions/{sid}", headers=auth)
                    assert r.status == 200
                    await _until(lambda: endpoint2.deletes == [resource], 5, "the DELETE of the WHIP session")
                    assert session.whip.state == "closed"
                finally:
                    await endpoint2.stop()
        finally:
            await h.close()
        assert not any(WHIP_TOKEN in rec.getMessage() for rec in caplog.records), "the WHIP token was logged"
        assert any("WHIP publishing to http://127.0.0.1" in rec.getMessage() for rec in caplog.records)

    asyncio.run(asyncio.wait_for(body(), 150))


def test_serve_whip_shares_the_viewers_encoder_and_deletes_its_session_at_shutdown():
    port = _free_port()

    async def body():
        endpoint = WhipEndpoint(port)
        await endpoint.start()
        try:
            h = await run_server(ServerConfig(port=0, width=SIZE, height=SIZE, fps=FPS, token="admin",
                                              whip_url=endpoint.url, whip_token=WHIP_TOKEN))
            try:
                await _until(lambda: len(endpoint.video) >= 10, 20, "the default session's video at the endpoint")
                assert h.session().whip.state == "connected"
                resource = next(iter(endpoint.pcs))
                # a WHEP viewer joins: it and the WHIP stream send the frames of one shared encoder
                viewer_pc = new_peer_connection()
                viewer_pc.addTransceiver("video", direction="recvonly")
                got = asyncio.Event()
                viewer_pc.on("track", lambda track: got.set())
                await viewer_pc.setLocalDescription(await viewer_pc.createOffer())
                async with aiohttp.ClientSession() as http:
                    r = await http.post(f"{h.base_url}/v1/sessions/default/whep", data=viewer_pc.localDescription.sdp,
                                        headers={"Content-Type": "application/sdp", "Authorization": "Bearer admin"})
                    assert r.status == 201
                    await viewer_pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
                fanout = fanout_for(h.session().scheduler)
                await _until(lambda: sum(len(e.viewers) for e in fanout.video.values()) == 2, 10,
                             "the viewer to subscribe")
                assert len(fanout.video) == 1, fanout.info()  # one encoder for both
                await viewer_pc.close()
            finally:
                await h.close()  # server shutdown
            assert endpoint.deletes == [resource]
        finally:
            await endpoint.stop()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_whip_republishes_when_the_endpoint_dies_without_closing(monkeypatch):
    """The endpoint's process is killed (no DTLS close, no DELETE): its RTCP receiver reports stop, the publisher
    gives up on that connection and publishes to the endpoint that comes up in its place."""
    import subprocess
    import sys
    from pathlib import Path

    from avatarcast.live.outputs import whip

    monkeypatch.setattr(whip, "RTCP_TIMEOUT_S", 3.0)  # 10 s by default
    port = _free_port()

    async def body():
        # the endpoint script imports tests/media_sinks.py, like this module
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(port)], stdout=subprocess.PIPE,
                                text=True, env=env)
        loop = asyncio.get_running_loop()
        try:
            assert (await loop.run_in_executor(None, proc.stdout.readline)).strip() == "ready"
            h = await run_server(ServerConfig(port=0, width=SIZE, height=SIZE, fps=FPS, token="admin",
                                              whip_url=f"http://127.0.0.1:{port}/whip/live", whip_token=WHIP_TOKEN))
            try:
                line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 30)
                assert line.strip() == "decoding", line
                publisher = h.session().whip
                assert publisher.state == "connected"
                proc.kill()  # SIGKILL: the endpoint vanishes without a word
                proc.wait(5)
                killed = time.monotonic()
                endpoint2 = WhipEndpoint(port)
                await endpoint2.start()
                try:
                    await _until(lambda: publisher.state != "connected", 15, "the publisher to notice")
                    noticed = time.monotonic() - killed
                    assert "RTCP" in (publisher.last_error or ""), publisher.last_error
                    await _until(lambda: len(endpoint2.video) >= 1, 20, "the engine to publish again")
                    print(f"killed endpoint: noticed after {noticed:.2f} s (RTCP timeout {whip.RTCP_TIMEOUT_S:g} s), "
                          f"first frame at its replacement {time.monotonic() - killed:.2f} s after the kill")
                    await _until(lambda: len(endpoint2.video) >= 10, 20, "the engine to publish again")
                    assert publisher.publishes == 2 and publisher.state == "connected"
                finally:
                    await endpoint2.stop()
            finally:
                await h.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

    asyncio.run(asyncio.wait_for(body(), 90))


async def _endpoint_process(port: int) -> None:
    """Run as a script: a WHIP endpoint that says ``ready``, then ``decoding`` once it decodes video."""
    endpoint = WhipEndpoint(port)
    await endpoint.start()
    print("ready", flush=True)
    await _until(lambda: len(endpoint.video) >= 10, 60, "video")
    print("decoding", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_endpoint_process(int(sys.argv[1])))


def test_publisher_candidates_follow_the_endpoint_not_the_server_bind_address():
    """A server bound to 127.0.0.1 offers viewers the loopback address only; its WHIP publisher, inside its own
    task, offers the machine's addresses to a remote endpoint and the loopback address to a local one."""
    import aioice.ice

    from avatarcast.live.outputs import whep
    from avatarcast.live.outputs import whip

    async def body():
        whep.use_loopback_candidates(True)
        try:
            whip._install_scoped_host_addresses()

            async def in_publisher_task(scope: str) -> list[str]:
                whip._candidate_scope.set(scope)
                return aioice.ice.get_host_addresses(True, False)

            network = await asyncio.create_task(in_publisher_task("network"))
            loopback = await asyncio.create_task(in_publisher_task("loopback"))
            outside = aioice.ice.get_host_addresses(True, False)  # a viewer's connection: whep's choice
            assert loopback == ["127.0.0.1"] and outside == ["127.0.0.1"]
            assert "127.0.0.1" not in network
            assert network == whip._aioice_get_host_addresses(True, False)
        finally:
            whep.restore_host_candidates()

    asyncio.run(body())
