"""Soak: clients connecting, vanishing, reconnecting, interrupting and sending bad messages for a long time against
one server, with its memory, file descriptors and threads sampled, and the well-behaved sessions' underruns.

    python -m avatarcast_bench.soak --minutes 60 --sessions 4 --json soak.json

The server runs in this process; the clients run in a child process of their own (a client sharing the server's
event loop would measure nothing). Half of the sessions (at least one) get a well-behaved client: utterances at
real-time pace, each waited for, a pause between. The others get a chaos client that loops through: pushing speech
and vanishing without a close; a second connection taking over the first; interrupts on the socket and over REST;
malformed, oversized and deeply nested messages; a flood of one-sample messages; REST requests with bad bodies and
tokens; idle connections opened and dropped.

Memory is judged as the issue asks: the mean RSS of the last sixth of the run (the last 10 minutes of 60) against
minutes 10-20 (the second sixth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.live.client import IngestClient
from avatarcast.live.demo import DEMO_SPEECH
from avatarcast.live.server import ServerConfig, run_server

SAMPLE_S = 5.0
SIZE = "256x256"


@dataclass
class SoakResult:
    duration_s: float
    samples: list[dict[str, Any]]
    sessions: dict[str, dict[str, Any]]
    roles: dict[str, str]
    client_counts: dict[str, int]
    client_errors: list[str]
    sessions_at_start: dict[str, dict[str, Any]] | None = None  # when the clients started

    def during(self, sid: str, key: str) -> float:
        """A counter's increase while the clients ran."""
        start = (self.sessions_at_start or {}).get(sid, {}).get(key, 0) or 0
        return round((self.sessions[sid].get(key) or 0) - start, 1)

    def window_mean(self, key: str, start: float, end: float) -> float:
        vals = [s[key] for s in self.samples if start <= s["t_s"] < end]
        return sum(vals) / len(vals) if vals else float("nan")

    def summary(self) -> dict[str, Any]:
        d = self.duration_s
        ref = (d / 6, 2 * d / 6)
        last = (5 * d / 6, d + 1)
        out: dict[str, Any] = {"duration_s": round(d, 1), "samples": len(self.samples)}
        for key in ("rss_mb", "children_rss_mb", "fds", "fds_other", "threads"):
            if not all(key in s for s in self.samples):
                continue
            a, b = self.window_mean(key, *ref), self.window_mean(key, *last)
            out[key] = {"ref_window_mean": round(a, 1), "last_window_mean": round(b, 1),
                        "change_pct": round(100.0 * (b - a) / a, 2) if a else None,
                        "max": max(s[key] for s in self.samples) if self.samples else None}
        good = [sid for sid, role in self.roles.items() if role == "good"]
        out["good_sessions"] = {sid: {**{k: self.sessions[sid].get(k) for k in
                                         ("underrun_ms", "clock_slips", "speech_played_ms", "utterances",
                                          "late_idle_frames", "playout_ticks", "avatar_first_frame_ms")},
                                      "underrun_ms_during": self.during(sid, "underrun_ms"),
                                      "clock_slips_during": self.during(sid, "clock_slips")}
                                for sid in good}
        out["chaos_sessions"] = {sid: {k: self.sessions[sid].get(k) for k in
                                       ("underrun_ms", "clock_slips", "speech_played_ms", "audio_dropped_ms",
                                        "utterances")}
                                 for sid, role in self.roles.items() if role == "chaos"}
        out["client_counts"] = self.client_counts
        out["client_errors"] = self.client_errors[:20]
        return out


def _process_sample(t0: float, server: Any) -> dict[str, Any]:
    import psutil

    sessions = {sid: s.stats() for sid, s in server.sessions.sessions.items()}

    me = psutil.Process()
    children = me.children(recursive=True)
    child_rss = 0
    for c in children:
        try:
            child_rss += c.memory_info().rss
        except psutil.Error:
            pass
    guard = server.connections
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "rss_mb": round(me.memory_info().rss / 2**20, 1),
        "children_rss_mb": round(child_rss / 2**20, 1),
        "children": len(children),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "connections": guard.total if guard is not None else None,
        # descriptors other than the client connections open at that moment (those come and go with the clients)
        "fds_other": len(os.listdir("/proc/self/fd")) - (guard.total if guard is not None else 0),
        "connections_refused": guard.refused if guard is not None else None,
        "load_1min": round(os.getloadavg()[0], 2),  # the machine's, everything on it included
        "underrun_ms": {sid: st["underrun_ms"] for sid, st in sessions.items()},
        "clock_slips": {sid: st["clock_slips"] for sid, st in sessions.items()},
    }


async def run_soak(duration_s: float, sessions: int = 4, size: str = SIZE, sample_s: float = SAMPLE_S,
                   log_samples: bool = False, good: int | None = None, client_nice: int = 0,
                   realtime_priority: int = 0) -> SoakResult:
    """Run the soak for ``duration_s`` seconds with ``sessions`` sessions (the default one included); the clients'
    process runs ``client_nice`` steps below the server's CPU priority (as if on another machine); the server's
    render threads and processes under SCHED_RR at ``realtime_priority`` (0: the normal policy)."""
    import aiohttp

    w, h = (int(v) for v in size.lower().split("x"))
    handle = await run_server(ServerConfig(port=0, width=w, height=h, token="soak-admin", max_sessions=sessions,
                                           max_buffer_ms=20000, realtime_priority=realtime_priority))
    try:
        infos = [handle.server.sessions.sessions["default"].info(handle.server.base_url, with_tokens=True)]
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer soak-admin"}) as http:
            for _ in range(sessions - 1):
                r = await http.post(f"{handle.base_url}/v1/sessions", json={"size": size})
                if r.status != 201:
                    raise RuntimeError(f"creating a soak session failed: {r.status} {await r.text()}")
                infos.append(await r.json())
        n_good = max(1, sessions // 2) if good is None else good
        roles = {info["id"]: ("good" if i < n_good else "chaos") for i, info in enumerate(infos)}
        spec = {"base": handle.base_url, "admin": "soak-admin", "duration_s": duration_s,
                "nice": client_nice,
                "sessions": [{"id": i["id"], "ingest": i["urls"]["ingest"], "token": i["ingest_token"],
                              "role": roles[i["id"]]} for i in infos]}
        at_start = {sid: s.stats() for sid, s in handle.server.sessions.sessions.items()}
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "avatarcast_bench.soak", "--clients",
                                                    json.dumps(spec), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        samples = []
        out_task = asyncio.create_task(proc.communicate())
        while not out_task.done():
            samples.append(_process_sample(t0, handle.server))
            if log_samples:
                print(json.dumps(samples[-1]), flush=True)
            await asyncio.wait([out_task], timeout=sample_s)
        stdout, stderr = out_task.result()
        samples.append(_process_sample(t0, handle.server))
        try:
            report = json.loads(stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"counts": {}, "errors": [f"client process failed ({proc.returncode}): "
                                               f"{stderr.decode(errors='replace')[-2000:]}"]}
        stats = {sid: s.stats() for sid, s in handle.server.sessions.sessions.items()}
        return SoakResult(time.monotonic() - t0, samples, stats, roles, report["counts"], report["errors"], at_start)
    finally:
        await handle.close()


# ---------------------------------------------------------------------------------------------- the clients


def _speech_pcm() -> bytes:
    audio = load_audio(DEMO_SPEECH)
    return float_to_pcm16(resample(audio.samples, audio.rate_hz, 16000))


async def _good(s: dict, pcm: bytes, until: float, counts: dict, errors: list) -> None:
    rng = random.Random(s["id"])
    while time.monotonic() < until:
        try:
            async with IngestClient(s["ingest"], s["token"]) as c:
                for _ in range(5):
                    if time.monotonic() >= until:
                        break
                    seconds = rng.uniform(1.5, 4.0)
                    off = rng.randrange(0, max(1, len(pcm) // 2 - int(seconds * 16000))) * 2
                    await c.start(16000)
                    await c.send_audio(pcm[off:off + int(seconds * 16000) * 2], realtime=True)
                    await c.speech_end()
                    await c.wait_for("playback.finished", timeout=30)
                    counts["good_utterances"] = counts.get("good_utterances", 0) + 1
                    await asyncio.sleep(rng.uniform(0.5, 1.5))
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"good {s['id']}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)


def _bad_messages(rng: random.Random) -> list[Any]:
    words = [{"word": "w", "start_ms": i, "end_ms": i + 1} for i in range(1500)]
    return [
        "{not json", "[" * 100000, '{"type": "dance"}', '{"type": "start", "sample_rate": "16000"}',
        json.dumps({"type": "alignment", "words": words}),
        '{"type": "alignment", "words": [{"word": "x", "start_ms": Infinity, "end_ms": 1}]}',
        '{"type": "alignment", "words": [{"word": "x", "start_ms": 1e400, "end_ms": 1}]}',
        '{"type": "alignment", "words": [{"word": "x", "start_ms": 1e308, "end_ms": 1e308}]}',
        b"\x00" * 321, b"\x00\x00" * 160, '{"type": "instruction", "text": 123}',
        json.dumps({"type": "alignment", "words": [{"word": "orphan", "start_ms": 0, "end_ms": 200}]}),
        "x" * rng.randrange(1, 5000),
    ]


async def _chaos(s: dict, spec: dict, pcm: bytes, until: float, counts: dict, errors: list) -> None:
    import aiohttp

    rng = random.Random(s["id"] + "chaos")
    base, host_port = spec["base"], spec["base"].split("://", 1)[1]

    def bump(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    def piece(seconds: float) -> bytes:
        off = rng.randrange(0, max(1, len(pcm) // 2 - int(seconds * 16000))) * 2
        return pcm[off:off + int(seconds * 16000) * 2]

    async def vanish() -> None:
        c = IngestClient(s["ingest"], s["token"])
        await c.connect()
        await c.start(16000)
        await c.send_audio(piece(rng.uniform(1.0, 6.0)))
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        c._ws.transport.abort()
        if c._reader is not None:
            c._reader.cancel()
        bump("vanished")

    async def takeover() -> None:
        a = IngestClient(s["ingest"], s["token"])
        await a.connect()
        await a.start(16000)
        await a.send_audio(piece(3.0))
        async with IngestClient(s["ingest"], s["token"]) as b:
            await b.start(16000)
            await b.send_audio(piece(1.0))
            await b.speech_end()
            await b.wait_for("playback.finished", timeout=30)
        await a.close()
        bump("takeovers")

    async def interrupt() -> None:
        async with IngestClient(s["ingest"], s["token"]) as c:
            await c.start(16000)
            await c.send_audio(piece(rng.uniform(2.0, 5.0)))
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            await c.interrupt(out_of_band=rng.random() < 0.3)
            await c.wait_for("playback.finished", timeout=30)
            bump("interrupts")

    async def bad() -> None:
        async with IngestClient(s["ingest"], s["token"]) as c:
            for m in _bad_messages(rng):
                await c._ws.send(m)
            await c.start(16000)
            for m in _bad_messages(rng)[:6]:
                await c._ws.send(m)
            await c.send_audio(piece(0.5))
            await c.speech_end()
            await c.wait_for("playback.finished", timeout=30)
            bump("bad_message_rounds")

    async def flood() -> None:
        async with IngestClient(s["ingest"], s["token"]) as c:
            await c.start(16000)
            for _ in range(rng.randrange(2000, 8000)):
                await c._ws.send(b"\x00\x01")
            await c.speech_end()
            await c.wait_for("playback.finished", timeout=60)
            bump("floods")

    async def rest() -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            auth = {"Authorization": f"Bearer {spec['admin']}"}
            for body in ('{"public": "false"}', '{"instruction": 123}', '{"seed": 1e400}', "[" * 5000, "{",
                         '{"fps": true}', '{"size": 5}', '{"surprise": 1}'):
                async with http.post(f"{base}/v1/sessions", data=body, headers=auth) as r:
                    if r.status != 400:
                        errors.append(f"rest: {body[:30]!r} gave {r.status}")
            async with http.get(f"{base}/v1/sessions", headers={"Authorization": "Bearer wrong"}) as r:
                await r.read()
            async with http.get(f"{base}/v1/sessions/{s['id']}/stats?token={s['token']}") as r:
                await r.read()
        socks = []
        host, port = host_port.rsplit(":", 1)
        for _ in range(rng.randrange(5, 30)):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
                if rng.random() < 0.5:
                    await asyncio.get_running_loop().sock_sendall(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass
            socks.append(sock)
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        for sock in socks:
            sock.close()
        bump("rest_rounds")

    actions = [vanish, takeover, interrupt, bad, flood, rest, vanish, interrupt]  # each in every round
    while time.monotonic() < until:
        for action in rng.sample(actions, len(actions)):
            if time.monotonic() >= until:
                break
            try:
                await asyncio.wait_for(action(), 90)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"chaos {s['id']} {action.__name__}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(rng.uniform(0.2, 1.0))


async def _clients(spec: dict) -> dict:
    pcm = _speech_pcm()
    until = time.monotonic() + spec["duration_s"]
    counts: dict[str, int] = {}
    errors: list[str] = []
    tasks = [(_good(s, pcm, until, counts, errors) if s["role"] == "good"
              else _chaos(s, spec, pcm, until, counts, errors)) for s in spec["sessions"]]
    await asyncio.gather(*tasks)
    return {"counts": counts, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avatarcast_bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--size", default=SIZE)
    p.add_argument("--good", type=int, default=None,
                   help="sessions with a well-behaved client (default: half); --good N --sessions N is a control "
                        "run without chaos")
    p.add_argument("--sample-s", type=float, default=SAMPLE_S)
    p.add_argument("--json", default=None, help="write the summary and every sample to this file")
    p.add_argument("--client-nice", type=int, default=10, metavar="N",
                   help="run the clients N steps below the server's CPU priority, as if they ran on other machines "
                        "(0 = same priority)")
    p.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                   help="the server's --realtime-priority (render threads and processes under SCHED_RR; 0 = off)")
    p.add_argument("--clients", default=None, help=argparse.SUPPRESS)  # the client process
    args = p.parse_args(argv)
    if args.clients:
        spec = json.loads(args.clients)
        if spec.get("nice"):
            os.nice(int(spec["nice"]))
        report = asyncio.run(_clients(spec))
        print(json.dumps(report), flush=True)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = asyncio.run(run_soak(args.minutes * 60.0, args.sessions, args.size, args.sample_s, log_samples=True,
                                  good=args.good, client_nice=args.client_nice,
                                  realtime_priority=args.realtime_priority))
    summary = result.summary()
    print(json.dumps(summary, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "samples": result.samples,
                                               "sessions": result.sessions}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
