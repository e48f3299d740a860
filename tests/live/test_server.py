"""The live server end to end over real sockets: auth, limits, protocol errors, backpressure, vanishing clients,
several sessions side by side, and interruption. Real speech from the shared test data, the real renderer."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest
import websockets

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.live.client import IngestClient
from avatarcast.live.protocol import ErrorCode
from avatarcast.live.scheduler import MAX_LATE_S
from avatarcast.live.server import ServerConfig, run_server

SIZE = 256  # small frames keep the tests light; the scheduler is the same at any size


def _config(**kw) -> ServerConfig:
    base = dict(port=0, width=SIZE, height=SIZE, token="admin-secret")
    base.update(kw)
    return ServerConfig(**base)


def _pcm(path, rate: int = 16000, seconds: float | None = None) -> bytes:
    audio = load_audio(path)
    samples = audio.samples if seconds is None else audio.samples[: int(seconds * audio.rate_hz)]
    return float_to_pcm16(resample(samples, audio.rate_hz, rate))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


@pytest.fixture(scope="module")
def clip(speech):
    return speech / "ljspeech" / "LJ001-0002.wav"  # 1.9 s


def _watch_peak(value) -> tuple[list[float], asyncio.Task]:
    """Sample ``value()`` every 5 ms in a task; ``peak[0]`` is the largest value seen so far."""
    peak = [0.0]

    async def watch():
        while True:
            peak[0] = max(peak[0], value())
            await asyncio.sleep(0.005)

    return peak, asyncio.create_task(watch())


def _ws_url(handle, sid="default") -> str:
    return f"ws://127.0.0.1:{handle.port}/v1/sessions/{sid}/ingest"


def test_tokens_are_required_and_checked(clip):
    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            async with aiohttp.ClientSession() as http:
                base = h.base_url
                r = await http.get(f"{base}/v1/sessions")
                assert r.status == 401 and (await r.json())["error"]["code"] == ErrorCode.UNAUTHORIZED
                r = await http.get(f"{base}/v1/sessions", headers={"Authorization": "Bearer wrong"})
                assert r.status == 403
                r = await http.get(f"{base}/v1/sessions?token=admin-secret")
                assert r.status == 200 and [x["id"] for x in (await r.json())["sessions"]] == ["default"]
                # a viewer token cannot administer, an ingest token cannot view
                r = await http.delete(f"{base}/v1/sessions/default?token={s.viewer_token}")
                assert r.status == 403
                r = await http.get(f"{base}/view/default?token={s.ingest_token}")
                assert r.status == 403
                r = await http.get(f"{base}/view/default")
                assert r.status == 401
                r = await http.get(f"{base}/?token={s.viewer_token}")
                assert r.status == 200 and "RTCPeerConnection" in await r.text()
                r = await http.post(f"{base}/v1/sessions/default/whep", data="v=0",
                                    headers={"Content-Type": "application/sdp"})
                assert r.status == 401
                r = await http.get(f"{base}/v1/sessions/default/stats?token={s.viewer_token}")
                assert r.status == 200 and "avatar_first_frame_ms" in await r.json()
            # WebSocket ingest: refused before the upgrade
            for token in (None, "wrong", s.viewer_token):
                with pytest.raises(websockets.InvalidStatus) as info:
                    async with IngestClient(_ws_url(h), token):
                        pass
                assert info.value.response.status_code in (401, 403)
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                assert c.ready.session_id == "default"
                # one ingest client per session: a new connection with the token takes over (docs/security.md)
                async with IngestClient(_ws_url(h), s.ingest_token) as c2:
                    assert c2.ready.session_id == "default"
                    await asyncio.wait_for(c._ws.wait_closed(), 5)
                    assert c._ws.close_code == 4001
        finally:
            await h.close()

    run(body())


def test_session_limit_create_list_delete():
    async def body():
        h = await run_server(_config(max_sessions=2))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                base = h.base_url
                r = await http.post(f"{base}/v1/sessions", json={"size": "128x128", "fps": 20, "public": True})
                assert r.status == 201, await r.text()
                created = await r.json()
                assert created["ingest_token"] and created["viewer_token"] and created["fps"] == 20
                assert created["urls"]["ingest"].startswith("ws://")
                r = await http.post(f"{base}/v1/sessions", json={})
                assert r.status == 429 and (await r.json())["error"]["code"] == ErrorCode.SESSION_LIMIT
                r = await http.post(f"{base}/v1/sessions", json={"size": "huge"})
                assert r.status in (400, 429)
                # a public session's page and stats need no token
                r = await http.get(f"{base}/view/{created['id']}", headers={"Authorization": ""})
                assert r.status == 200
                r = await http.delete(f"{base}/v1/sessions/{created['id']}")
                assert r.status == 200
                r = await http.get(f"{base}/v1/sessions")
                assert [x["id"] for x in (await r.json())["sessions"]] == ["default"]
                r = await http.post(f"{base}/v1/sessions", json={"size": "99x100"})
                assert r.status == 400 and "size" in (await r.json())["error"]["message"]
                r = await http.post(f"{base}/v1/sessions", json={"avatar": "/no/such/portrait.png"})
                assert r.status == 400
                r = await http.delete(f"{base}/v1/sessions/nope")
                assert r.status == 404
        finally:
            await h.close()

    run(body())


def test_bad_messages_get_errors_and_the_session_survives(clip):
    async def body():
        h = await run_server(_config(max_message_bytes=8192))
        try:
            s = h.session()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                async def expect(code):
                    event = await c.wait_for("error", timeout=5)
                    assert event.code == code, event
                await c.send_bytes(b"\x00\x00" * 160)
                await expect(ErrorCode.AUDIO_BEFORE_START)
                await c._ws.send("{this is not json")
                await expect(ErrorCode.INVALID_JSON)
                await c.send_json({"type": "dance"})
                await expect(ErrorCode.UNKNOWN_TYPE)
                await c.send_json({"type": "start", "sample_rate": 44100})
                await expect(ErrorCode.UNSUPPORTED_SAMPLE_RATE)
                await c.start(16000)
                await c.send_bytes(b"\x00" * 321)
                await expect(ErrorCode.ODD_LENGTH_PCM)
                await c.send_bytes(b"\x00" * 20000)  # over the limit, under the hard limit
                await expect(ErrorCode.MESSAGE_TOO_LARGE)
                await c._ws.send("x" * 9000)
                await expect(ErrorCode.MESSAGE_TOO_LARGE)
                assert (await c.ping("p1")).id == "p1"
                # and speech still plays
                await c.send_audio(_pcm(clip, seconds=1.0), chunk_ms=100)
                await c.speech_end()
                await c.wait_for("playback.started", timeout=10)
                done = await c.wait_for("playback.finished", timeout=10)
                assert not done.interrupted and done.position_ms == pytest.approx(1000, abs=5)
            # a message over the hard limit (abuse) closes the connection; the server goes on
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(16000)
                await c.send_bytes(b"\x00" * 8192 * 5)
                with pytest.raises((ConnectionError, asyncio.TimeoutError)):
                    await c.wait_for("pong", timeout=5)
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                assert (await c.ping(2)).id == 2
        finally:
            await h.close()

    run(body())


def test_flood_faster_than_real_time_is_bounded_and_lossless(speech):
    path = speech / "ljspeech" / "LJ001-0005.wav"
    pcm = _pcm(path, rate=24000, seconds=3.0)
    duration_ms = len(pcm) / 2 / 24000 * 1000

    async def body():
        h = await run_server(_config(max_buffer_ms=500))
        try:
            s = h.session()
            peak, watcher = _watch_peak(s.scheduler.buffered_ms)
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(24000)
                t0 = time.monotonic()
                await c.send_audio(pcm, chunk_ms=40)  # as fast as the server lets us
                await c.speech_end()
                sent_s = time.monotonic() - t0
                done = await c.wait_for("playback.finished", timeout=15)
            watcher.cancel()
            stats = s.stats()
            # the server held at most its budget plus one message (and the resampler's few ms of delay that a
            # chunk can release at once); the rest waited in the TCP buffers
            assert peak[0] <= 500 + 40 + 25, peak[0]
            assert not done.interrupted
            assert done.position_ms == pytest.approx(duration_ms, abs=1.0)
            assert stats["audio_dropped_ms"] == 0.0
            assert stats["speech_played_ms"] == pytest.approx(duration_ms, abs=1.0)
            assert stats["av_drift_ms"] < 0.1
            assert sent_s < duration_ms / 1000  # sending was faster than real time, yet nothing was lost
        finally:
            await h.close()

    run(body())


def test_client_vanishing_mid_utterance_is_cleaned_up(clip):
    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            c = IngestClient(_ws_url(h), s.ingest_token)
            await c.connect()
            await c.start(16000)
            await c.send_audio(_pcm(clip, seconds=1.0))
            await asyncio.sleep(0.2)
            c._ws.transport.abort()  # gone without a close frame or speech.end
            deadline = time.monotonic() + 5
            while s.ingest_active and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not s.ingest_active
            # what was received plays to the end, then the avatar idles with a closed mouth
            await asyncio.sleep(1.5)
            stats = s.stats()
            assert stats["speech_played_ms"] == pytest.approx(1000, abs=5)
            assert stats["buffered_ms"] == 0.0
            assert s.scheduler.state_shown().jaw_open == 0.0
            assert stats["output_fps"] > 15
            # the session and the server serve the next client
            async with IngestClient(_ws_url(h), s.ingest_token) as c2:
                await c2.start(16000)
                await c2.send_audio(_pcm(clip, seconds=0.5))
                await c2.speech_end()
                done = await c2.wait_for("playback.finished", timeout=10)
                assert done.position_ms == pytest.approx(500, abs=5)
        finally:
            await h.close()

    run(body())


def test_several_sessions_side_by_side(speech):
    clips = [speech / "ljspeech" / "LJ001-0002.wav", speech / "ljspeech" / "LJ001-0007.wav"]

    async def body():
        h = await run_server(_config(max_sessions=3))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                created = []
                for _ in range(2):
                    r = await http.post(f"{h.base_url}/v1/sessions", json={"size": "192x192"})
                    assert r.status == 201
                    created.append(await r.json())

            async def speak(info, path):
                async with IngestClient(info["urls"]["ingest"], info["ingest_token"]) as c:
                    await c.start(22050)
                    await c.send_audio(_pcm(path, rate=22050, seconds=1.2), realtime=True, speed=2.0)
                    await c.speech_end()
                    started = await c.wait_for("playback.started", timeout=10)
                    done = await c.wait_for("playback.finished", timeout=10)
                    return started, done

            results = await asyncio.gather(*(speak(info, p) for info, p in zip(created, clips)))
            for (started, done), info in zip(results, created):
                assert done.utterance_id == started.utterance_id
                assert done.position_ms == pytest.approx(1200, abs=5)
                stats = h.session(info["id"]).stats()
                assert stats["output_fps"] > 18 and stats["av_drift_ms"] < 0.1
            # the default session kept its clock while the others spoke
            assert h.session().stats()["output_fps"] > 18
        finally:
            await h.close()

    run(body())


def test_interrupt_stops_speech_quickly_and_closes_the_mouth(speech):
    path = speech / "ljspeech" / "LJ001-0005.wav"

    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(16000)
                await c.send_audio(_pcm(path, seconds=3.0))
                await c.speech_end()
                await c.wait_for("playback.started", timeout=10)
                await asyncio.sleep(0.6)
                jaw_while_speaking = []
                for _ in range(10):
                    jaw_while_speaking.append(s.scheduler.state_shown().jaw_open)
                    await asyncio.sleep(0.04)
                assert max(jaw_while_speaking) > 0.1  # the mouth moves with the speech
                t0 = time.monotonic()
                await c.interrupt()
                done = await c.wait_for("playback.finished", timeout=2)
                reply_ms = (time.monotonic() - t0) * 1000
                assert done.interrupted and 500 < done.position_ms < 2500
                assert reply_ms < 300
                await asyncio.sleep(0.6)
                stats = s.stats()
                assert s.scheduler.state_shown().jaw_open == 0.0
                assert stats["interrupt_to_silence_ms"]["count"] == 1
                # the queued audio is flushed, not played out (over a second of it was left); the figure itself is
                # measured by `avatarcast bench latency`
                assert stats["interrupt_to_silence_ms"]["last"] < 400
                assert stats["interrupt_to_listening_ms"]["last"] < 600
                assert stats["buffered_ms"] == 0.0
                assert stats["audio_dropped_ms"] > 0
                # a new utterance after the interrupt plays normally
                await c.send_audio(_pcm(path, seconds=0.5))
                await c.speech_end()
                done = await c.wait_for("playback.finished", timeout=10)
                assert not done.interrupted and done.position_ms == pytest.approx(500, abs=5)
        finally:
            await h.close()

    run(body())


def test_interrupt_acts_at_once_on_speech_pushed_far_ahead(speech):
    """A TTS answer pushed much faster than real time waits in the session's backlog, and the socket is still
    read: an interrupt sent behind 20 s of audio stops the speech where it is instead of after all of it."""
    pcm = _pcm(speech / "ljspeech" / "LJ001-0005.wav", rate=24000)
    pcm = (pcm * 4)[: 24000 * 2 * 20]  # 20 s

    async def body():
        h = await run_server(_config(max_buffer_ms=30000))
        try:
            s = h.session()
            peak, watcher = _watch_peak(s.scheduler.buffered_ms)
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(24000)
                await c.send_audio(pcm)  # returns once all of it is in the server's hands (nothing waits in TCP)
                await c.wait_for("playback.started", timeout=10)
                await asyncio.sleep(0.5)
                backlog_before = s.stats()["ingest_backlog_ms"]
                await c.interrupt()
                done = await c.wait_for("playback.finished", timeout=10)
                stats = s.stats()
                assert backlog_before > 15000  # the rest of the answer was waiting, raw
                assert done.interrupted and 300 < done.position_ms < 3000
                assert stats["speech_played_ms"] < 3000
                assert stats["audio_dropped_ms"] == pytest.approx(20000 - stats["speech_played_ms"], abs=50)
                assert stats["buffered_ms"] == 0.0 and stats["ingest_backlog_ms"] == 0.0
                # the scheduler itself never held more than its share
                assert peak[0] <= 1000 + 20 + 25, peak[0]
                # the next utterance plays normally
                await c.send_audio(pcm[: 24000])  # 0.5 s
                await c.speech_end()
                done = await c.wait_for("playback.finished", timeout=10)
                assert not done.interrupted and done.position_ms == pytest.approx(500, abs=5)
            watcher.cancel()
        finally:
            await h.close()

    run(body())


def test_backlogged_speech_keeps_its_order_with_control_messages(speech):
    """Two utterances pushed at once, each ended by speech.end: the speech.end messages wait behind their audio
    in the backlog, so each utterance plays whole and in order."""
    a = _pcm(speech / "ljspeech" / "LJ001-0005.wav", rate=16000, seconds=2.5)
    b = _pcm(speech / "ljspeech" / "LJ001-0007.wav", rate=16000, seconds=1.5)

    async def body():
        h = await run_server(_config(max_buffer_ms=20000))
        try:
            s = h.session()
            applied = []
            set_instruction = s.scheduler.set_instruction

            def record(text):  # when, in the stream, the instruction reaches the scheduler
                applied.append((text, s.scheduler.stats.utterances, s.scheduler.stats.audio_received_ms))
                set_instruction(text)

            s.scheduler.set_instruction = record
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(16000)
                await c.send_audio(a)
                await c.speech_end()
                await c.instruction("smile warmly")
                await c.send_audio(b)
                await c.speech_end()
                first = await c.wait_for("playback.finished", timeout=10)
                second = await c.wait_for("playback.finished", timeout=10)
                assert not first.interrupted and first.position_ms == pytest.approx(2500, abs=5)
                assert not second.interrupted and second.position_ms == pytest.approx(1500, abs=5)
                assert first.utterance_id != second.utterance_id
                assert s.backlog.peak_ms > 1000  # the second utterance and both speech.end waited in the backlog
                stats = s.stats()
                assert stats["utterances"] == 2 and stats["audio_dropped_ms"] < 1.0
                assert stats["speech_played_ms"] == pytest.approx(4000, abs=5)
                # after all of the first utterance and before any of the second
                assert len(applied) == 1 and applied[0][:2] == ("smile warmly", 1)
                assert applied[0][2] == pytest.approx(2500, abs=1)
        finally:
            await h.close()

    run(body())


def test_a_client_pushing_far_ahead_keeps_its_keepalive(speech):
    """The socket is read while the session buffers less than max_buffer_ms (60 s by default), so the client's
    keep-alive pings are answered at once with seconds of audio ahead of them. (With the scheduler holding the
    whole buffer, 10 s, the server stopped reading earlier and the pings waited behind the audio in TCP until the
    client's keep-alive closed the connection.)"""
    pcm = _pcm(speech / "ljspeech" / "LJ001-0005.wav", rate=24000)
    pcm = (pcm * 3)[: 24000 * 2 * 12]  # 12 s

    async def body():
        h = await run_server(ServerConfig(port=0, width=SIZE, height=SIZE, token="admin-secret"))
        try:
            s = h.session()
            async with IngestClient(_ws_url(h), s.ingest_token, ping_interval=0.3, ping_timeout=0.5) as c:
                await c.start(24000)
                await c.send_audio(pcm)
                await c.wait_for("playback.started", timeout=10)
                await asyncio.sleep(1.5)  # several keep-alive periods with ~10 s of audio ahead
                assert (await c.ping("alive")).id == "alive"
                await c.interrupt()
                done = await c.wait_for("playback.finished", timeout=5)
                assert done.interrupted and done.position_ms < 4000
        finally:
            await h.close()

    run(body())


def test_a_client_held_by_backpressure_is_not_closed_by_the_keepalive(speech, monkeypatch):
    """Beyond max_buffer_ms the server stops reading; its keep-alive then expects no pong (the pong waits unread
    behind the audio), so a client held for many keep-alive periods keeps its connection and loses nothing."""
    from avatarcast.live import ingest

    monkeypatch.setattr(ingest, "HEARTBEAT_S", 0.4)
    pcm = _pcm(speech / "ljspeech" / "LJ001-0005.wav", rate=24000, seconds=4.0)

    async def body():
        h = await run_server(_config(max_buffer_ms=500))
        try:
            s = h.session()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(24000)
                await c.send_audio(pcm)
                await c.speech_end()
                done = await c.wait_for("playback.finished", timeout=15)
                assert not done.interrupted and done.position_ms == pytest.approx(4000, abs=1)
                assert (await c.ping("after")).id == "after"  # the connection is still open
            stats = s.stats()
            assert stats["audio_dropped_ms"] == 0.0
            assert stats["speech_played_ms"] == pytest.approx(4000, abs=1)
        finally:
            await h.close()

    run(body())


def test_a_client_that_answers_no_ping_is_closed(clip, monkeypatch):
    """While the socket is read, a client that answers no ping within half a keep-alive period is closed and the
    session frees its ingest for the next client."""
    from avatarcast.live import ingest

    monkeypatch.setattr(ingest, "HEARTBEAT_S", 0.4)

    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            async with aiohttp.ClientSession() as http:
                # autoping off and nothing read: this client never answers the server's pings
                ws = await http.ws_connect(_ws_url(h) + f"?token={s.ingest_token}", autoping=False)
                deadline = time.monotonic() + 10
                while s.ingest_active and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert not s.ingest_active
                await ws.close()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:  # the next client is served
                await c.start(16000)
                await c.send_audio(_pcm(clip, seconds=0.5))
                await c.speech_end()
                done = await c.wait_for("playback.finished", timeout=10)
                assert done.position_ms == pytest.approx(500, abs=5)
        finally:
            await h.close()

    run(body())


def test_backlogged_speech_of_a_vanished_client_still_plays(speech):
    """A client that pushes 3 s at once and vanishes: the part still in the backlog plays out after it is gone,
    and the utterance is then closed."""
    pcm = _pcm(speech / "ljspeech" / "LJ001-0005.wav", rate=16000, seconds=3.0)

    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            c = IngestClient(_ws_url(h), s.ingest_token)
            await c.connect()
            await c.start(16000)
            await c.send_audio(pcm)
            deadline = time.monotonic() + 5
            while s.backlog.peak_ms < 1500 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            c._ws.transport.abort()
            while s.ingest_active and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not s.ingest_active and s.stats()["ingest_backlog_ms"] > 0
            deadline = time.monotonic() + 10
            while s.stats()["speech_played_ms"] < 3000 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            stats = s.stats()
            assert stats["speech_played_ms"] == pytest.approx(3000, abs=5)
            assert stats["buffered_ms"] == 0.0 and stats["audio_dropped_ms"] < 1.0
            assert s.scheduler._open is None  # the utterance was closed after its backlog
        finally:
            await h.close()

    run(body())


def test_interrupt_over_rest_reaches_a_client_held_by_backpressure(speech):
    """Beyond max_buffer_ms an interrupt sent on the socket would wait behind the unread audio; over REST it acts
    at once, the audio already sent is dropped as it is read, and speech after a new start plays normally."""
    pcm = _pcm(speech / "ljspeech" / "LJ001-0005.wav", rate=24000)
    pcm = (pcm * 3)[: 24000 * 2 * 10]  # 10 s

    async def body():
        h = await run_server(_config(max_buffer_ms=1000))
        try:
            s = h.session()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(24000)
                await c.alignment(words=[{"word": "late", "start_ms": 0, "end_ms": 300}])
                sender = asyncio.create_task(c.send_audio(pcm))
                await c.wait_for("playback.started", timeout=10)
                await asyncio.sleep(0.5)
                async with aiohttp.ClientSession() as http:  # wrong tokens are refused
                    r = await http.post(f"{h.base_url}/v1/sessions/default/interrupt",
                                        headers={"Authorization": f"Bearer {s.viewer_token}"})
                    assert r.status == 403
                answer = await c.interrupt(out_of_band=True)
                assert [u["utterance_id"] for u in answer["interrupted"]] == ["utt_1"]
                done = await c.wait_for("playback.finished", timeout=5)
                assert done.interrupted and done.position_ms < 3000
                await sender  # the rest of the 10 s goes out and is dropped as the server reads it
                await c.speech_end()
                await asyncio.sleep(1.0)
                played = s.stats()["speech_played_ms"]
                assert played == pytest.approx(done.position_ms, abs=1)  # nothing sent before it played
                with pytest.raises(RuntimeError):
                    await c.send_audio(pcm[:960])  # a new start is needed
                await c.start(24000)
                await c.send_audio(pcm[:24000])  # 0.5 s
                await c.speech_end()
                done = await c.wait_for("playback.finished", timeout=10)
                assert not done.interrupted and done.position_ms == pytest.approx(500, abs=5)
                stats = s.stats()
                assert stats["speech_played_ms"] == pytest.approx(played + 500, abs=5)
                assert stats["audio_dropped_ms"] == pytest.approx(10000 - played, abs=60)
                assert stats["buffered_ms"] == 0.0
        finally:
            await h.close()

    run(body())


def test_a_flood_of_tiny_messages_does_not_hold_other_sessions_clocks():
    """20000 one-sample messages at once: the server takes a turn of the event loop per message, so another
    session's playout clock never slips (before, it was held for about a second while aiohttp handed over the
    buffered messages)."""
    import sys

    async def body():
        h = await run_server(_config(max_sessions=2))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                r = await http.post(f"{h.base_url}/v1/sessions", json={"size": "128x128"})
                other = h.session((await r.json())["id"])
            s = h.session()
            url, token = _ws_url(h), s.ingest_token

            # the client runs in a process of its own, as a real one does, so its messages pile up in the
            # server's socket buffers the way a flood does
            flood = (
                "import asyncio, sys\n"
                "from avatarcast.live.client import IngestClient\n"
                "async def main():\n"
                "    async with IngestClient(sys.argv[1], sys.argv[2]) as c:\n"
                "        await c.start(16000)\n"
                "        for _ in range(20000):\n"
                "            await c.send_bytes(b'\\x00\\x01')\n"
                "        await c.speech_end()\n"
                "        await c.wait_for('playback.finished', timeout=30)\n"
                "asyncio.run(main())\n"
            )
            slips_before = other.scheduler.stats.clock_slips
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", flood, url, token,
                                                        stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            errors = [err.decode(errors="replace")] if proc.returncode else []
            assert not errors, errors
            stats = s.stats()
            assert stats["speech_played_ms"] == pytest.approx(1250, abs=1)  # every sample arrived and played
            assert other.scheduler.stats.clock_slips == slips_before
            assert other.stats()["playout_ticks"]["max_late_ms"] < MAX_LATE_S * 1000
        finally:
            await h.close()

    run(body())
