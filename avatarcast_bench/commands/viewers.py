"""Benchmark: what viewers cost. Server CPU and per-viewer output_fps with 1, 10 and 50 WHEP viewers of one session.

Starts the live server on 127.0.0.1 in a child process (its CPU, render process included, is measured alone with
psutil), with its default session talking (the bundled demo speech in a loop, with pauses) and rendering every
frame (``--idle-hold-at 0``: the render's cost does not change with the machine's load). First the server's CPU
with no viewer is measured; then for each count in --viewers, that many aiortc WHEP viewers connect to the session
from other processes at lower CPU priority (--client-nice, as if on other machines), the stream settles, and for
--duration seconds the benchmark measures the server's CPU and what every viewer receives; then they leave.

What a viewer is: a real aiortc peer (ICE, DTLS, SRTP, RTCP with receiver reports, REMB, NACK and PLI) whose
offer asks for --codec. --decode of them (one process) decode every frame, audio and video, as a player would:
their decoded frames per second are ``output_fps_decoded``. The others count what is delivered (every RTP packet
received, and a video frame when its last packet, the marker, arrives) but do not decode: decoding 50 streams
would need more CPU than the 2-core test machine has beside the server, and would measure the receivers, not the
server. Their ``output_fps`` is complete frames delivered per second; packets lost are counted from sequence
numbers.

Figures: ``server_percent`` (100 % = one core) with N viewers, ``added_percent`` = that minus the no-viewer
figure (what the viewers cost), per-viewer ``output_fps`` (min / p5 / median) and how many viewers got at least
``TARGET_FPS``, audio packets per second, and the conditions (CPU model, load, priorities). Beside them, the server's
own view from the session's stats: the session's ``output_fps``, ``encoded_fps`` (the shared encoder's frames: once
each, whatever the number of viewers), the frames its senders sent per viewer, keyframes, viewers restarted on a
keyframe (``resyncs``: a sender a second behind); and what tells a slow receiver from a slow server: the viewers'
processes' CPU and the UDP datagrams the machine dropped at full receive buffers (``/proc/net/snmp``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from avatarcast.core.errors import InputError
from avatarcast.core.realtime import check_nice
from avatarcast.live.load import cpu_model
from avatarcast.live.outputs.whep import new_peer_connection, use_loopback_candidates
from avatarcast.live.session import check_fps, parse_size
from avatarcast_bench.latency import CpuSampler, quiet_webrtc_logs

TARGET_FPS = 24.5
"""A viewer of a 25 fps session counts as served when it gets at least this many frames a second."""
SETTLE_S = 3.0
"""After the last viewer of a step connected, before measuring (keyframes, bitrate estimates)."""
CONNECT_TIMEOUT_S = 30.0
CONNECT_EACH_S = 3.0
"""Time allowed per viewer of a process to connect (they join one after another)."""
SERVER_START_TIMEOUT_S = 120.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--viewers", default="1,10,50", metavar="N,N,...", help="viewer counts to measure, in order")
    p.add_argument("--duration", type=float, default=20.0, metavar="S", help="seconds measured per viewer count")
    p.add_argument("--size", default="512x512", metavar="WxH", help="video size")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate")
    p.add_argument("--codec", choices=("vp8", "h264"), default="vp8", help="the video codec the viewers ask for")
    p.add_argument("--decode", type=int, default=2, metavar="N",
                   help="viewers (of each count) that decode every frame; the others count delivered frames")
    p.add_argument("--viewers-per-process", type=int, default=25, metavar="N",
                   help="viewers per receiving process")
    p.add_argument("--client-nice", type=int, default=10, metavar="N",
                   help="the viewers' processes run at nice +N (lower CPU priority than the server); 0 = the same")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")


# ---------------------------------------------------------------------------------------------- viewers (child)


class CountingViewer:
    """One aiortc WHEP viewer that counts the RTP it receives (and decodes it when ``decode``)."""

    def __init__(self, url: str, token: str, codec: str, decode: bool) -> None:
        self.url = url
        self.token = token
        self.codec = codec
        self.decode = decode
        self.pc: Any = None
        self.resource: str | None = None
        self.counts = {"video_frames": 0, "video_packets": 0, "audio_packets": 0, "decoded_video": 0,
                       "decoded_audio": 0}
        self._seq: dict[str, list[int]] = {}  # kind -> [first extended seq, last extended seq, packets]
        self._tasks: list[asyncio.Task] = []
        self.join_ms: float | None = None  # offer sent -> first complete video frame (a keyframe) received

    def _count(self, kind: str, packet: Any) -> None:
        c = self.counts
        c[f"{kind}_packets"] += 1
        if kind == "video" and packet.marker:
            c["video_frames"] += 1
        s = self._seq.get(kind)
        if s is None:
            self._seq[kind] = [packet.sequence_number, packet.sequence_number, 1]
        else:  # extend the 16-bit sequence number past wrap-arounds
            last = s[1]
            delta = (packet.sequence_number - last) & 0xFFFF
            s[1] = last + delta if delta < 0x8000 else last - ((last - packet.sequence_number) & 0xFFFF)
            s[2] += 1

    def lost(self) -> int:
        return sum(max(0, s[1] - s[0] + 1 - s[2]) for s in self._seq.values())

    async def connect(self) -> None:
        import aiohttp
        from aiortc import RTCRtpReceiver, RTCSessionDescription

        use_loopback_candidates(True)
        pc = self.pc = new_peer_connection()
        video = pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        mime = "video/VP8" if self.codec == "vp8" else "video/H264"
        video.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities("video").codecs if c.mimeType == mime])
        for kind, transceiver in (("video", video), ("audio", audio)):
            receiver = transceiver.receiver
            original = receiver._handle_rtp_packet

            async def counted(packet: Any, arrival_time_ms: int, _k: str = kind, _o: Any = original) -> None:
                self._count(_k, packet)
                await _o(packet, arrival_time_ms=arrival_time_ms)

            receiver._handle_rtp_packet = counted

        @pc.on("track")
        def on_track(track: Any) -> None:
            if self.decode:
                self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await pc.setLocalDescription(await pc.createOffer())
        t0 = time.monotonic()
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url, data=pc.localDescription.sdp, headers=headers) as r:
                body = await r.text()
                if r.status != 201:
                    raise ConnectionError(f"WHEP offer refused: HTTP {r.status}: {body[:200]}")
                location = r.headers.get("Location", "")
        base = self.url.split("/v1/", 1)[0]
        self.resource = location if location.startswith("http") else base + location
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while self.counts["video_frames"] == 0 or (self.decode and self.counts["decoded_video"] == 0):
            if time.monotonic() > deadline:
                raise TimeoutError("a viewer received no video within 30 s")
            await asyncio.sleep(0.01)
        self.join_ms = (time.monotonic() - t0) * 1000.0

    async def _consume(self, track: Any) -> None:
        key = "decoded_video" if track.kind == "video" else "decoded_audio"
        try:
            while True:
                await track.recv()
                self.counts[key] += 1
        except Exception:
            return

    async def close(self) -> None:
        import aiohttp

        if self.resource:
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.delete(self.resource, headers={"Authorization": f"Bearer {self.token}"}):
                        pass
            except Exception:
                pass
        for t in self._tasks:
            t.cancel()
        if self.pc is not None:
            await self.pc.close()


class _NullDecoder:
    """Takes the complete frames aiortc's jitter buffer releases and decodes nothing (counting viewers)."""

    def decode(self, encoded_frame: Any) -> list:
        return []


def receive_main(cfg: dict) -> None:
    """A viewers' process: connect ``cfg["count"]`` viewers, say ``ready``; on ``measure S`` count for S seconds
    and print the per-viewer figures; on end of input, leave."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    quiet_webrtc_logs(logging.ERROR)
    if cfg.get("nice"):
        os.nice(int(cfg["nice"]))
    if not cfg["decode"]:
        import aiortc.rtcrtpreceiver

        aiortc.rtcrtpreceiver.get_decoder = lambda codec: _NullDecoder()
    asyncio.run(_receive(cfg))


async def _receive(cfg: dict) -> None:
    viewers = [CountingViewer(cfg["url"], cfg["token"], cfg["codec"], cfg["decode"]) for _ in range(cfg["count"])]
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()

    def readable() -> None:
        line = sys.stdin.readline()
        lines.put_nowait(line)
        if not line:
            loop.remove_reader(sys.stdin.fileno())

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        for v in viewers:  # one after another, as people join
            await v.connect()
        print(json.dumps({"ready": True, "join_ms": [v.join_ms for v in viewers]}), flush=True)
        while (line := await lines.get()):
            parts = line.split()
            if parts and parts[0] == "measure":
                seconds = float(parts[1])
                before = [dict(v.counts) for v in viewers]
                lost0 = [v.lost() for v in viewers]
                t0 = time.monotonic()
                await asyncio.sleep(seconds)
                dt = time.monotonic() - t0
                out = []
                for v, b, l0 in zip(viewers, before, lost0):
                    out.append({k: round((v.counts[k] - b[k]) / dt, 2) for k in v.counts} | {
                        "lost_packets": v.lost() - l0, "decode": v.decode})
                print(json.dumps({"viewers": out}), flush=True)
    finally:
        await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)


# ---------------------------------------------------------------------------------------------- the run


class _Proc:
    def __init__(self, cfg: dict) -> None:
        self.count = int(cfg["count"])
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.p = subprocess.Popen([sys.executable, "-m", "avatarcast_bench.commands.viewers", "--receive",
                                   json.dumps(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env)

    def read(self, timeout_s: float) -> dict:
        assert self.p.stdout is not None
        ready, _, _ = select.select([self.p.stdout], [], [], timeout_s)
        line = self.p.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError("a viewers' process ended or did not answer (see its log above)")
        return json.loads(line)

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def close(self) -> None:
        try:
            self.p.stdin.close()  # type: ignore[union-attr]
            self.p.wait(30)
        except Exception:
            self.p.terminate()  # our own child, by its handle
            self.p.wait(5)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))] if s else float("nan")


async def _measure_cpu(pid: int, seconds: float) -> dict:
    cpu = CpuSampler(pid)
    cpu.start()
    await asyncio.sleep(seconds)
    return await cpu.stop()


def udp_counters(path: str = "/proc/net/snmp") -> dict[str, int]:
    """The machine's UDP counters (Linux): ``RcvbufErrors`` counts datagrams dropped because the receiving
    socket's buffer was full (a receiver too slow to read), ``SndbufErrors`` those the sender could not queue."""
    try:
        with open(path, encoding="ascii") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}
    except (OSError, IndexError, ValueError):
        return {}


def _cpu_s(procs: list[_Proc]) -> float:
    """CPU seconds used so far by the viewers' processes."""
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = psutil.Process(p.p.pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _stats(url: str, admin: str) -> dict:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _step(n: int, args: argparse.Namespace, url: str, token: str, server_pid: int, admin: str) -> dict:
    stats_url = url.rsplit("/whep", 1)[0] + "/stats"
    decoding = min(args.decode, n)
    groups = [{"count": decoding, "decode": True}] if decoding else []
    rest = n - decoding
    while rest > 0:
        k = min(args.viewers_per_process, rest)
        groups.append({"count": k, "decode": False})
        rest -= k
    procs = [_Proc({"url": url, "token": token, "codec": args.codec, "nice": args.client_nice, **g}) for g in groups]
    join_ms: list[float] = []
    try:
        for p in procs:
            msg = p.read(CONNECT_TIMEOUT_S + CONNECT_EACH_S * p.count)
            if not msg.get("ready"):
                raise RuntimeError(f"unexpected message from a viewers' process: {msg}")
            join_ms += msg["join_ms"]
        time.sleep(SETTLE_S)
        for p in procs:
            p.send(f"measure {args.duration}")
        stats0, t0, rx0, udp0 = _stats(stats_url, admin), time.monotonic(), _cpu_s(procs), udp_counters()
        cpu = asyncio.run(_measure_cpu(server_pid, args.duration))
        stats1, t1, rx1, udp1 = _stats(stats_url, admin), time.monotonic(), _cpu_s(procs), udp_counters()
        viewers = [v for p in procs for v in p.read(args.duration + 30.0)["viewers"]]
    finally:
        for p in procs:
            p.close()
    fps = [v["video_frames"] for v in viewers]
    empty = {"video": {}, "viewers_video_sent": 0, "viewers_resyncs": 0, "viewers_video_dropped": 0}
    e0, e1 = stats0.get("encoding", empty), stats1.get("encoding", empty)  # (a server from before fanout.py)
    dt = t1 - t0
    video_codec = "video/vp8" if args.codec == "vp8" else "video/h264"
    encoded = (e1["video"].get(video_codec, {}).get("frames", 0) - e0["video"].get(video_codec, {}).get("frames", 0))
    server = {
        "output_fps": stats1["output_fps"],  # the session's frames out (scheduler)
        "encoded_fps": round(encoded / dt, 2),  # the shared encoder's frames: once each, whatever the viewers
        "keyframes": e1["video"].get(video_codec, {}).get("keyframes", 0)
        - e0["video"].get(video_codec, {}).get("keyframes", 0),
        "sent_fps_per_viewer": round((e1["viewers_video_sent"] - e0["viewers_video_sent"]) / dt / n, 2),
        "viewer_resyncs": e1["viewers_resyncs"] - e0["viewers_resyncs"],
        "viewer_video_dropped": e1["viewers_video_dropped"] - e0["viewers_video_dropped"],
        "playout_ticks_late_20ms": stats1["playout_ticks"]["late_20ms"] - stats0["playout_ticks"]["late_20ms"],
        "bitrate": e1["video"].get(video_codec, {}).get("bitrate"),
    }
    decoded = [v["decoded_video"] for v in viewers if v["decode"]]
    return {
        "viewers": n,
        "server_percent": cpu["server_percent_mean"],
        "server_percent_max": cpu["server_percent_max"],
        "machine_percent": cpu["machine_percent_mean"],
        "output_fps": {"min": min(fps), "p5": _pct(fps, 5), "median": _pct(fps, 50), "max": max(fps)},
        "viewers_at_target": sum(f >= TARGET_FPS for f in fps),
        "output_fps_decoded": {"count": len(decoded), "min": min(decoded) if decoded else None,
                               "audio_min": min((v["decoded_audio"] for v in viewers if v["decode"]), default=None)},
        "audio_packets_per_s_min": min(v["audio_packets"] for v in viewers),
        "video_packets_per_s_mean": round(sum(v["video_packets"] for v in viewers) / len(viewers), 1),
        "lost_packets": sum(v["lost_packets"] for v in viewers),
        "receiving_processes": len(procs),
        # offer sent -> first video frame received, each viewer joining a session that others already watch
        "join_ms": {"p50": round(_pct(join_ms, 50), 1), "max": round(max(join_ms), 1)},
        "viewers_cpu_percent": round(100.0 * (rx1 - rx0) / (t1 - t0), 1),
        # datagrams the machine dropped at full receive buffers (the viewers' sockets, on loopback) and at send
        "udp_receive_buffer_drops": udp1.get("RcvbufErrors", 0) - udp0.get("RcvbufErrors", 0),
        "udp_send_buffer_drops": udp1.get("SndbufErrors", 0) - udp0.get("SndbufErrors", 0),
        "server": server,
    }


def _server(width: int, height: int, fps: float, max_viewers: int) -> tuple[Any, int, str, str]:
    """The live server in a child process: (process, its pid, its base URL, its admin token)."""
    token = secrets.token_urlsafe(18)
    # every frame rendered whatever the machine's load (no idle-frame holding), so the no-viewer baseline holds
    config = dict(host="127.0.0.1", port=0, width=width, height=height, fps=fps, token=token, demo=True,
                  max_viewers=max_viewers, max_pending_viewers_per_ip=0, max_connections_per_ip=0, idle_hold_at=0.0)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen([sys.executable, "-m", "avatarcast_bench.latency", "--serve",
                             json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], SERVER_START_TIMEOUT_S)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.terminate()  # our own child, by its handle
        proc.wait(5)
        raise RuntimeError("the live server did not start (see its log above)")
    msg = json.loads(line)
    return proc, int(msg["pid"]), f"http://127.0.0.1:{msg['port']}", token


def run(args: argparse.Namespace) -> int:
    import aiortc

    width, height = parse_size(args.size)
    fps = check_fps(args.fps)
    try:
        counts = [int(x) for x in args.viewers.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--viewers {args.viewers!r}: give viewer counts separated by commas, e.g. 1,10,50")
    if not counts or any(not 1 <= n <= 200 for n in counts):
        raise InputError("--viewers: each count must be from 1 to 200")
    if args.duration < 2:
        raise InputError("--duration must be at least 2 seconds")
    check_nice(args.client_nice, "--client-nice")
    if args.decode < 0 or args.viewers_per_process < 1:
        raise InputError("--decode must be at least 0 and --viewers-per-process at least 1")
    load_before = os.getloadavg()
    proc, pid, base, admin = _server(width, height, fps, max(counts))
    url = f"{base}/v1/sessions/default/whep"
    token = _viewer_token(base, admin)
    steps = []
    try:
        time.sleep(SETTLE_S)
        cpu0 = asyncio.run(_measure_cpu(pid, args.duration))
        steps.append({"viewers": 0, "server_percent": cpu0["server_percent_mean"],
                      "server_percent_max": cpu0["server_percent_max"],
                      "machine_percent": cpu0["machine_percent_mean"]})
        for n in counts:
            steps.append(_step(n, args, url, token, pid, admin))
    finally:
        try:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait(15)
        except Exception:
            proc.terminate()
            proc.wait(5)
    base_cpu = steps[0]["server_percent"]
    for s in steps[1:]:
        s["added_percent"] = round(s["server_percent"] - base_cpu, 1)
    figures = {
        "steps": steps,
        "conditions": {
            "size": f"{width}x{height}", "fps": fps, "codec": args.codec, "duration_s": args.duration,
            "cpu_model": cpu_model(), "cores": os.cpu_count(), "client_nice": args.client_nice,
            "decoding_viewers": args.decode, "viewers_per_process": args.viewers_per_process,
            "content": "default session, bundled demo speech in a loop, every frame rendered",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "aiortc": aiortc.__version__,
        },
    }
    print(format_table(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _viewer_token(base: str, admin: str) -> str:
    """The default session's viewer token, read over REST with the admin token the server was given."""
    return _stats(f"{base}/v1/sessions/default", admin)["viewer_token"]


def format_table(f: dict) -> str:
    c = f["conditions"]
    lines = [f"conditions: {c['size']}@{c['fps']:g} fps {c['codec'].upper()}, {c['duration_s']:g} s a step, "
             f"{c['cores']} cores ({c['cpu_model']}), load {c['load_average_before'][0]:g} -> "
             f"{c['load_average_after'][0]:g}, viewers at nice +{c['client_nice']} in their own processes "
             f"({c['decoding_viewers']} decode every frame, the others count delivered frames)",
             f"{'viewers':>7}  {'server_percent':>14}  {'added_percent':>13}  {'machine %':>9}  "
             f"{'output_fps min/p5/median':>24}  {'>= %g fps' % TARGET_FPS:>9}  {'decoded fps min':>15}  "
             f"{'audio pkt/s min':>15}  {'lost pkts':>9}"]
    for s in f["steps"]:
        if s["viewers"] == 0:
            lines.append(f"{0:>7}  {s['server_percent']:>14.1f}  {'-':>13}  {s['machine_percent'] or 0:>9.1f}")
            continue
        o = s["output_fps"]
        d = s["output_fps_decoded"]
        lines.append(f"{s['viewers']:>7}  {s['server_percent']:>14.1f}  {s['added_percent']:>13.1f}  "
                     f"{s['machine_percent'] or 0:>9.1f}  {o['min']:>7.2f} / {o['p5']:>5.2f} / {o['median']:>6.2f}  "
                     f"{s['viewers_at_target']:>4}/{s['viewers']:<4}  "
                     f"{(d['min'] if d['min'] is not None else float('nan')):>15.2f}  "
                     f"{s['audio_packets_per_s_min']:>15.1f}  {s['lost_packets']:>9}")
        v = s["server"]
        lines.append(f"{'':>7}  server side: session output_fps {v['output_fps']:g}, encoded_fps {v['encoded_fps']:g} "
                     f"(once for all viewers), sent {v['sent_fps_per_viewer']:g} fps a viewer, {v['keyframes']} "
                     f"keyframes, viewer resyncs {v['viewer_resyncs']}, playout ticks > 20 ms late "
                     f"{v['playout_ticks_late_20ms']}, bitrate {v['bitrate']}; the viewers' processes used "
                     f"{s['viewers_cpu_percent']:g} %, joined in {s['join_ms']['p50']:g} / {s['join_ms']['max']:g} ms "
                     f"(p50 / max), UDP datagrams dropped at full receive buffers "
                     f"{s['udp_receive_buffer_drops']} (send {s['udp_send_buffer_drops']})")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--receive":
        receive_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m avatarcast_bench.commands.viewers --receive CONFIG_JSON (used by the benchmark)")
