"""Issue 15's findings, one test each: what broke when the server was probed as an attacker would, and holds now.

Attack clients whose timing matters run in a process of their own (a client sharing the server's event loop
measures nothing), bounded in count and time, on loopback only. Where a finding needs a second client address,
the attacker binds 127.0.0.2 (all of 127.0.0.0/8 is loopback).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import websockets

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.core.errors import AvatarcastError, InputError
from avatarcast.live.client import IngestClient
from avatarcast.live.protocol import ErrorCode
from avatarcast.live.scheduler import MAX_LATE_S
from avatarcast.live.server import ServerConfig, run_server

SIZE = 128
ROOT = Path(__file__).resolve().parents[2]


def _config(**kw) -> ServerConfig:
    base = dict(port=0, width=SIZE, height=SIZE, token="admin-secret")
    base.update(kw)
    return ServerConfig(**base)


def run(coro, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _ws_url(handle, sid="default") -> str:
    return f"ws://127.0.0.1:{handle.port}/v1/sessions/{sid}/ingest"


@pytest.fixture(scope="module")
def pcm16k(speech) -> bytes:
    audio = load_audio(speech / "ljspeech" / "LJ001-0005.wav")
    return float_to_pcm16(resample(audio.samples, audio.rate_hz, 16000))


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


async def _communicate(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    out, err = await asyncio.get_running_loop().run_in_executor(None, proc.communicate, None, timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


async def _other_session(h, size: str = "128x128"):
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
        r = await http.post(f"{h.base_url}/v1/sessions", json={"size": size})
        assert r.status == 201, await r.text()
        return h.session((await r.json())["id"])


# ---------------------------------------------------------------------------------------------------------------
# 1. Unauthenticated outage: connection caps, timeouts, refused upgrades, log lines
# ---------------------------------------------------------------------------------------------------------------

SERVER_UNDER_ULIMIT = """
    import asyncio, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
    from avatarcast.live.server import ServerConfig, run_server
    async def main():
        # 8 viewers a session: the descriptors kept for 4 sessions' viewers must fit in 512 with room for HTTP
        h = await run_server(ServerConfig(port=0, default_session=False, token="t"))
        print(h.port, flush=True)
        await asyncio.sleep(float(sys.argv[1]))
        await h.close()
    asyncio.run(main())
"""

def test_a_low_open_file_limit_lowers_connections_and_viewers_together(caplog):
    """With room for everything the caps are as asked; under a low open-file limit both the HTTP connection cap and
    the viewers a session may have are lowered to fit, with a warning, instead of starving one of them."""
    from avatarcast.live.connections import fit_descriptors

    assert fit_descriptors(512, 4, 50, limit=65536) == (512, 50)
    with caplog.at_level(logging.WARNING, logger="avatarcast.live.connections"):
        cap, viewers = fit_descriptors(512, 4, 50, limit=1024)
    assert 128 <= cap < 512 and 4 <= viewers < 50
    assert cap + 4 * viewers * 6 + 4 * 24 + 128 <= 1024
    assert "open-file limit" in caplog.text
    cap, viewers = fit_descriptors(512, 4, 50, limit=512)  # the test server below runs under this limit
    assert cap >= 64 and viewers >= 1


HOLD_IDLE_CONNECTIONS = """
    import socket, sys, time
    port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    socks, failed = [], 0
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /v1/sessions/x/ingest HTTP/1.1\\r\\nHost: a\\r\\nUpgrade: websocket\\r\\n")  # never ends
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    print("holding", len(socks), flush=True)
    time.sleep(hold)
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            s.recv(65536)  # a 503 or the end of the stream: the server is done with it
        except BlockingIOError:
            alive += 1  # still open, nothing said
        except OSError:
            pass
    print(alive, failed, flush=True)
"""


def test_a_thousand_idle_connections_do_not_take_the_server_down():
    """A server limited to 512 descriptors; 600 idle, never-finished upgrade requests from another address: the
    server refuses those over its caps at once (before: every descriptor went, `/healthz` timed out and the log
    filled with "Too many open files"), answers /healthz at once meanwhile, and closes the idle ones after
    IDLE_TIMEOUT_S."""
    server = _spawn(SERVER_UNDER_ULIMIT, "40")
    try:
        port = int(server.stdout.readline())
        attacker = _spawn(HOLD_IDLE_CONNECTIONS, str(port), "600", "12")
        assert attacker.stdout.readline().startswith("holding")

        async def probe():
            times = []
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                for _ in range(5):
                    t0 = time.monotonic()
                    r = await http.get(f"http://127.0.0.1:{port}/healthz")
                    assert r.status == 200
                    times.append(time.monotonic() - t0)
                    await asyncio.sleep(0.5)
            return times

        times = run(probe(), 30)
        assert max(times) < 1.0, times
        alive, failed = (int(v) for v in attacker.communicate(timeout=30)[0].split()[-2:])
        assert alive == 0  # over the caps refused at once, the rest closed by the idle timeout (10 s)
    finally:
        server.kill()
        _, err = server.communicate(timeout=10)
    assert "Too many open files" not in err
    assert err.count("refused") <= 3  # one rate-limited line per 10 s


SLOWLORIS = """
    import socket, sys, time
    port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: a\\r\\n")
        socks.append(s)
    t_end = time.monotonic() + seconds
    open_ = socks
    while time.monotonic() < t_end:
        still = []
        for s in open_:
            try:
                s.sendall(b"X-a: b\\r\\n")  # one header line at a time, never the blank line
                still.append(s)
            except OSError:
                pass
        open_ = still
        time.sleep(0.3)
    print(len(open_), flush=True)
"""


def test_slowloris_headers_are_cut_off(monkeypatch):
    """Requests whose headers trickle in and never end are closed after the idle timeout (before: 200 of them
    were all still open after 101 s)."""
    from avatarcast.live import server as server_module

    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_S", 1.0)

    async def body():
        h = await run_server(_config(default_session=False))
        try:
            proc = _spawn(SLOWLORIS, str(h.port), "30", "4")
            out, _ = await _communicate(proc, 30)
            assert int(out.split()[-1]) == 0
        finally:
            await h.close()

    run(body())


def test_a_refused_websocket_upgrade_is_closed_at_once():
    """401 to an upgrade request: the connection is closed with the answer (before: held open for 50 s)."""
    async def body():
        h = await run_server(_config())
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            writer.write(b"GET /v1/sessions/default/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 2.0)  # returns at EOF: the server closed
            assert data.startswith(b"HTTP/1.1 401")
            writer.close()
        finally:
            await h.close()

    run(body())


def test_repeated_log_lines_are_rate_limited():
    from avatarcast.live.logs import RepeatLimiter

    limiter = RepeatLimiter(burst=5, window_s=60)
    passed = sum(limiter.filter(logging.LogRecord("x", logging.ERROR, __file__, 1, "accept failed: %s", ("e",),
                                                  None)) for _ in range(10000))
    assert passed == 5 and limiter.suppressed_total == 9995
    other = logging.LogRecord("x", logging.ERROR, __file__, 1, "another message", (), None)
    assert limiter.filter(other)


# ---------------------------------------------------------------------------------------------------------------
# 2. One ingest-token holder must not degrade the other sessions
# ---------------------------------------------------------------------------------------------------------------

ALIGNMENT_FLOOD = """
    import asyncio, json, sys, time
    from avatarcast.live.client import IngestClient
    async def main():
        def alignment(n):  # compact, as a TTS would send it: 5,000 words fit in 230 KB
            words = [{"word": "hello", "start_ms": i, "end_ms": i} for i in range(n)]
            return json.dumps({"type": "alignment", "words": words}, separators=(",", ":"))
        async with IngestClient(sys.argv[1], sys.argv[2]) as c:
            await c.start(16000)
            for i in range(30):
                await c._ws.send(alignment(5000))
                await c._ws.send(alignment(400))
            for _ in range(20000):
                await c.send_bytes(b"\\x00\\x01")
            await c.speech_end()
            await c.ping("done")
            print(json.dumps([e.code for e in c.history if e.type == "error"]), flush=True)
    asyncio.run(main())
"""


def test_huge_alignments_and_floods_do_not_starve_another_session():
    """30 alignments of 5,000 words (230 KB each; refused: alignment_too_large, before any per-word work), 30 of
    400 words (phones worked out in slices; beyond 5,000 words an utterance refuses more) and 20,000 one-sample
    messages from one client: another session's playout ticks stay on time (before: a 10,000-word message
    blocked the event loop for 159 ms; 30 of them dropped another session to 7.4 fps)."""
    async def body():
        h = await run_server(_config(max_sessions=2))
        try:
            other = await _other_session(h)
            await asyncio.sleep(1.0)
            s = h.session()
            before, t0 = other.stats(), time.monotonic()
            proc = _spawn(ALIGNMENT_FLOOD, _ws_url(h), s.ingest_token)
            out, _ = await _communicate(proc, 90)
            codes = json.loads(out.splitlines()[-1])
            after, t1 = other.stats(), time.monotonic()
            assert codes.count(ErrorCode.ALIGNMENT_TOO_LARGE) == 30
            assert codes.count(ErrorCode.QUOTA_EXCEEDED) >= 15  # 5,000 words per utterance (12 of 400 words)
            # the other session kept its clock and its frame rate (before: 7.4 fps, its clock 1.3 s late). Late ticks
            # are not asserted one by one: on a busy shared 2-core machine (load 5-6 while this was written) the
            # machine makes some late whoever runs, and even one slip of the clock (a stall over MAX_LATE_S) was seen
            # once in ten runs with no callback of the server's loop over 80 ms (asyncio debug)
            assert after["clock_slips"] - before["clock_slips"] <= 1
            frames = after["frames_out"] - before["frames_out"]
            assert frames >= 0.9 * (t1 - t0) * other.settings.fps, (frames, t1 - t0, after["playout_ticks"])
        finally:
            await h.close()

    run(body())


def test_alignment_words_without_an_utterance_do_not_survive_a_disconnect(pcm16k):
    """Words sent with no utterance open go with their connection (before: they landed on the next client's
    first utterance)."""
    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(16000)
                await c.alignment(words=[{"word": "stale", "start_ms": 0, "end_ms": 300}])
                await c.ping(1)
                assert [w.text for w in s.scheduler._pending_words] == ["stale"]
            deadline = time.monotonic() + 5
            while s.ingest_active and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            assert s.scheduler._pending_words == []
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                await c.start(16000)
                await c.send_audio(pcm16k[: 16000])
                await c.ping(2)
                utterance = s.scheduler._open
                assert utterance is not None and utterance.words == []
                await c.speech_end()
                await c.wait_for("playback.finished", timeout=10)
        finally:
            await h.close()

    run(body())


def test_loop_budget_holds_a_connection_that_takes_more_than_its_share():
    from avatarcast.live.ingest import LoopBudget

    async def body():
        budget = LoopBudget(share=0.1, burst_s=0.05)
        budget.charge(0.08)  # 30 ms in debt: 0.3 s to repay at 10 %
        assert budget.exhausted
        t0 = time.monotonic()
        await budget.wait()
        assert 0.2 < time.monotonic() - t0 < 0.6 and not budget.exhausted

    run(body())


# ---------------------------------------------------------------------------------------------------------------
# 3. Ghost WHEP viewers
# ---------------------------------------------------------------------------------------------------------------

async def _ghost_offer() -> str:
    """An SDP offer without candidates: its ICE never completes."""
    from avatarcast.live.outputs.whep import new_peer_connection

    pc = new_peer_connection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = "\r\n".join(line for line in pc.localDescription.sdp.splitlines() if not line.startswith("a=candidate"))
    await pc.close()
    return sdp + "\r\n"


def test_viewers_that_never_connect_are_removed():
    """Offers whose ICE never completes: at most 2 pending per address, each removed after the connect timeout, so
    they cannot lock real viewers out (before: eight kept every slot for ever, even on a public session)."""
    async def body():
        h = await run_server(_config(public=True, max_viewers=8, viewer_connect_timeout_s=1.0))
        try:
            s = h.session()
            offer = await _ghost_offer()
            url = f"{h.base_url}/v1/sessions/default/whep"
            async with aiohttp.ClientSession(headers={"Content-Type": "application/sdp"}) as http:
                statuses = []
                for _ in range(3):
                    r = await http.post(url, data=offer)
                    statuses.append(r.status)
                assert statuses == [201, 201, 429]
                assert len(s.viewers) == 2
                await asyncio.sleep(1.8)
                assert len(s.viewers) == 0 and s.scheduler.sink_count == 0
                r = await http.post(url, data=offer)
                assert r.status == 201
        finally:
            await h.close()

    run(body())


# ---------------------------------------------------------------------------------------------------------------
# 4. Strict validation of every field
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ('{"public": "false"}', "public"),
    ('{"public": 1}', "public"),
    ('{"instruction": 123}', "instruction"),
    ('{"fps": true}', "fps"),
    ('{"fps": "25"}', "fps"),
    ('{"seed": 1.5}', "seed"),
    ('{"seed": -1}', "seed"),
    ('{"size": 512}', "size"),
    ('{"size": "99x100"}', "size"),
    ('{"avatar": ["a"]}', "avatar"),
])
def test_create_session_fields_are_strict_and_named(body, field):
    async def go():
        h = await run_server(_config(default_session=False, max_sessions=1))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                t0 = time.monotonic()
                r = await http.post(f"{h.base_url}/v1/sessions", data=body,
                                    headers={"Content-Type": "application/json"})
                error = (await r.json())["error"]
                assert r.status == 400 and error["field"] == field, error
                assert field in error["message"]
                assert time.monotonic() - t0 < 2.0
                assert h.server.sessions.sessions == {}
        finally:
            await h.close()

    run(go())


@pytest.mark.parametrize("body", ['{"seed": 1e400}', '{"fps": NaN}', '{"fps": Infinity}', "[" * 100000, "{"])
def test_non_finite_numbers_and_deep_nesting_are_400_not_500(body):
    async def go():
        h = await run_server(_config(default_session=False, max_sessions=1))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                r = await http.post(f"{h.base_url}/v1/sessions", data=body,
                                    headers={"Content-Type": "application/json"})
                assert r.status == 400 and (await r.json())["error"]["code"] == ErrorCode.INVALID_JSON
        finally:
            await h.close()

    run(go())


def test_ingest_refuses_deep_nesting_and_non_finite_times_and_stays_open():
    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                async def expect(raw, code):
                    await c._ws.send(raw)
                    event = await c.wait_for("error", timeout=5)
                    assert event.code == code, event

                await expect("[" * 100000, ErrorCode.INVALID_JSON)  # before: RecursionError, connection dropped
                await expect('{"type": "alignment", "words": [{"word": "a", "start_ms": Infinity, "end_ms": 1}]}',
                             ErrorCode.INVALID_JSON)
                await expect('{"type": "alignment", "words": [{"word": "a", "start_ms": 1e400, "end_ms": 1}]}',
                             ErrorCode.INVALID_JSON)
                await expect('{"type": "alignment", "words": [{"word": "a", "start_ms": 1e308, "end_ms": 1e308}]}',
                             ErrorCode.INVALID_MESSAGE)
                await expect('{"type": "start", "sample_rate": "16000"}', ErrorCode.INVALID_MESSAGE)
                assert (await c.ping("alive")).id == "alive"
        finally:
            await h.close()

    run(body())


# ---------------------------------------------------------------------------------------------------------------
# 5. Tokens: access log, Origin, Host, TLS, headers
# ---------------------------------------------------------------------------------------------------------------

def test_tokens_never_reach_the_access_log(caplog):
    async def body():
        h = await run_server(_config())
        try:
            s = h.session()
            async with aiohttp.ClientSession() as http:
                await (await http.get(f"{h.base_url}/?token={s.viewer_token}&stats=1")).read()
                await (await http.get(f"{h.base_url}/v1/sessions/default/stats?token={s.ingest_token}",
                                      headers={"Referer": f"{h.base_url}/?token={s.viewer_token}"})).read()
                await (await http.get(f"{h.base_url}/v1/sessions?TOKEN=admin-secret")).read()
            await asyncio.sleep(0.1)
            return s
        finally:
            await h.close()

    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        s = run(body())
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) >= 3 and all("[redacted]" in line for line in access[:3])
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (s.viewer_token, s.ingest_token, "admin-secret"):
        assert secret not in text


def test_ingest_origin_allow_list():
    async def body():
        h = await run_server(_config(allowed_origins=("https://studio.example.com",)))
        try:
            s = h.session()
            url = _ws_url(h) + f"?token={s.ingest_token}"
            for origin, ok in [(None, True), (f"http://127.0.0.1:{h.port}", True),
                               ("https://studio.example.com", True), ("https://evil.example", False),
                               ("null", False), (f"http://evil.example:{h.port}", False)]:
                headers = {"Origin": origin} if origin else {}
                if ok:
                    async with websockets.connect(url, additional_headers=headers, origin=None) as ws:
                        assert json.loads(await ws.recv())["type"] == "ready"
                else:
                    with pytest.raises(websockets.InvalidStatus) as info:
                        async with websockets.connect(url, additional_headers=headers):
                            pass
                    assert info.value.response.status_code == 403
        finally:
            await h.close()

    run(body())


def test_returned_urls_come_from_the_public_url_not_the_host_header():
    async def body():
        for public_url, expected in [(None, None), ("https://avatar.example.com/", "https://avatar.example.com")]:
            h = await run_server(_config(public_url=public_url))
            try:
                expected = expected or h.base_url
                async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret",
                                                          "Host": "evil.example:666"}) as http:
                    info = await (await http.get(f"{h.base_url}/v1/sessions/default")).json()
                assert info["urls"]["view"].startswith(expected + "/view/")
                assert info["urls"]["ingest"].startswith(expected.replace("http", "ws", 1) + "/v1/")
                assert "evil" not in json.dumps(info)
            finally:
                await h.close()

    run(body())


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_and_no_plain_http_off_loopback(tmp_path):
    import ssl

    cert, key = _self_signed(tmp_path)

    async def body():
        with pytest.raises(AvatarcastError, match="plain HTTP"):
            await run_server(_config(host="0.0.0.0", default_session=False))
        h = await run_server(_config(tls_cert=cert, tls_key=key))
        try:
            ctx = ssl.create_default_context(cafile=cert)
            assert h.base_url.startswith("https://")
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                r = await http.get(f"{h.base_url}/v1/sessions/default", ssl=ctx)
                info = await r.json()
                assert info["urls"]["ingest"].startswith("wss://127.0.0.1:")
            s = h.session()
            async with websockets.connect(info["urls"]["ingest"] + f"?token={s.ingest_token}", ssl=ctx) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"
        finally:
            await h.close()

    run(body())


def test_connections_still_in_their_tls_handshake_count_against_the_caps(tmp_path):
    """Accepted TCP connections that never start their TLS handshake take a place under the per-address cap (they
    used to be counted only once the handshake ended); when they go, a real HTTPS client gets in again."""
    import ssl

    cert, key = _self_signed(tmp_path)

    async def body():
        h = await run_server(_config(tls_cert=cert, tls_key=key, max_connections_per_ip=4))
        ctx = ssl.create_default_context(cafile=cert)
        loop = asyncio.get_running_loop()
        silent = []
        try:
            for _ in range(4):  # connect, then say nothing: no ClientHello
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", h.port))
                silent.append(s)
            await asyncio.sleep(0.3)
            guard = h.server.connections
            assert guard.per_ip["127.0.0.1"] == 4 and guard.total == 4
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                with pytest.raises(aiohttp.ClientError):
                    await http.get(f"{h.base_url}/healthz", ssl=ctx, timeout=aiohttp.ClientTimeout(total=5))
                assert guard.refused >= 1
                for s in silent:
                    s.close()
                silent.clear()
                for _ in range(50):
                    if guard.total == 0:
                        break
                    await asyncio.sleep(0.05)
                assert guard.total == 0  # handshakes that never happened gave their places back
                r = await http.get(f"{h.base_url}/healthz", ssl=ctx)
                assert r.status == 200
            assert guard.total == 0 or guard.per_ip["127.0.0.1"] <= 1
        finally:
            for s in silent:
                s.close()
            await h.close()

    run(body())


def test_start_up_lines_keep_tokens_out_of_a_log(tmp_path):
    """`serve` prints its tokens only to a terminal; when its output goes to a file or a log, the tokens go to a
    file only this user can read, and the printed lines name that file instead."""
    import io
    import stat

    from avatarcast.cli.commands.serve import announce

    async def body():
        h = await run_server(_config())
        try:
            log_out = io.StringIO()  # not a terminal
            path = announce(h, h.server.config, token_file=str(tmp_path / "t" / "tokens.json"), out=log_out)
            shown = io.StringIO()
            announce(h, h.server.config, print_tokens=True, out=shown)
            return log_out.getvalue(), shown.getvalue(), path, h.session(), h.admin_token
        finally:
            await h.close()

    text, shown, path, session, admin = run(body())
    for secret in (session.ingest_token, session.viewer_token, admin):
        assert secret not in text and secret in shown
    assert str(path) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = json.loads(path.read_text())
    assert tokens["admin_token"] == admin and tokens["ingest_token"] == session.ingest_token
    assert tokens["ingest_url"].endswith("/v1/sessions/default/ingest")


def test_viewer_page_security_headers():
    async def body():
        h = await run_server(_config(public=True))
        try:
            async with aiohttp.ClientSession() as http:
                r = await http.get(f"{h.base_url}/")
                html = await r.text()
                api = await http.get(f"{h.base_url}/healthz")
            return r.headers, html, api.headers
        finally:
            await h.close()

    headers, html, api = run(body())
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff" and api["X-Content-Type-Options"] == "nosniff"
    assert api["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert api["X-Frame-Options"] == "DENY"
    import base64
    import hashlib
    import re

    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp  # the page's own script is allowed, and nothing else inline


# ---------------------------------------------------------------------------------------------------------------
# 6. Avatar files limited before decoding
# ---------------------------------------------------------------------------------------------------------------

def test_a_huge_portrait_is_refused_before_decoding(tmp_path):
    """A 12000x12000 PNG of a few hundred KB: refused from its header (before: decoded, +800 MB)."""
    import psutil
    from PIL import Image

    from avatarcast.face.avatar import read_image

    path = tmp_path / "bomb.png"
    Image.new("L", (12000, 12000)).save(path, optimize=True)
    assert path.stat().st_size < 1_000_000
    rss = psutil.Process().memory_info().rss
    with pytest.raises(InputError, match="megapixels"):
        read_image(path)
    assert psutil.Process().memory_info().rss - rss < 100 * 2**20

    async def body():
        h = await run_server(_config(default_session=False, max_sessions=1))
        try:
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
                r = await http.post(f"{h.base_url}/v1/sessions", json={"avatar": str(path)})
                assert r.status == 400 and "megapixels" in (await r.json())["error"]["message"]
        finally:
            await h.close()

    run(body())


# ---------------------------------------------------------------------------------------------------------------
# 7. Reconnecting with the same token takes over
# ---------------------------------------------------------------------------------------------------------------

def test_a_new_connection_takes_over_and_drops_the_old_speech(pcm16k):
    pcm = (pcm16k * 6)[: 16000 * 2 * 20]  # 20 s

    async def body():
        h = await run_server(_config(max_buffer_ms=30000))
        try:
            s = h.session()
            old = IngestClient(_ws_url(h), s.ingest_token)
            await old.connect()
            await old.start(16000)
            await old.send_audio(pcm)
            await old.wait_for("playback.started", timeout=10)
            async with IngestClient(_ws_url(h), s.ingest_token) as new:
                await asyncio.wait_for(old._ws.wait_closed(), 5)
                assert old._ws.close_code == 4001
                assert s.stats()["buffered_ms"] < 100 and s.stats()["audio_dropped_ms"] > 15000
                await new.start(16000)
                t0 = time.monotonic()
                await new.send_audio(pcm16k[: 16000])
                await new.speech_end()
                await new.wait_for("playback.started", timeout=5)
                assert time.monotonic() - t0 < 2.0  # not behind the old client's 20 s
                done = await new.wait_for("playback.finished", timeout=10)
                assert not done.interrupted and done.position_ms == pytest.approx(500, abs=5)
        finally:
            await h.close()

    run(body())


KILLED_CLIENT = """
    import asyncio, sys
    from avatarcast.live.client import IngestClient
    async def main():
        c = IngestClient(sys.argv[1], sys.argv[2])
        await c.connect()
        await c.start(16000)
        pcm = bytes(range(256)) * 2500  # 20 s of 16 kHz PCM16
        pcm = pcm[: 16000 * 2 * 20]
        await c.send_audio(pcm)
        print("sent", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
"""


def test_a_killed_client_can_reconnect_at_once_and_its_audio_is_dropped(pcm16k):
    """A client killed with 20 s buffered (held by backpressure beyond max_buffer_ms): its reconnect is served at
    once (before: 409 for ~16 s) and the dead client's audio does not play ahead of the new speech."""
    async def body():
        h = await run_server(_config(max_buffer_ms=5000))
        try:
            s = h.session()
            proc = _spawn(KILLED_CLIENT, _ws_url(h), s.ingest_token)
            deadline = time.monotonic() + 20
            while s.stats()["buffered_ms"] < 4000 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert s.stats()["buffered_ms"] >= 4000
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            t0 = time.monotonic()
            async with IngestClient(_ws_url(h), s.ingest_token) as c:
                assert time.monotonic() - t0 < 5.0
                await c.start(16000)
                await c.send_audio(pcm16k[: 16000])
                await c.speech_end()
                await c.wait_for("playback.started", timeout=5)
                done = await c.wait_for("playback.finished", timeout=10)
                assert done.position_ms == pytest.approx(500, abs=5)
            assert s.stats()["audio_dropped_ms"] > 3000
        finally:
            await h.close()

    run(body())
