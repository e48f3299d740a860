"""Benchmark: live latency, A/V drift, underruns and interruption through a real WebRTC receiver.

Starts the live server on 127.0.0.1 (a free port, in a child process so its CPU use is measured alone), opens
--sessions sessions, each watched by its own aiortc WHEP receiver and fed by its own ingest client that pushes real
speech at real-time pace: utterances with pauses between them, every fourth one interrupted. Figures use the
design's metric names and are labelled cold (first utterance after the server started), warm (first utterance of a
session opened on a running server) and steady (later utterances). Prints a table with the conditions; --json
writes every figure, --plot a timeline PNG.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from avatarcast.core.errors import InputError
from avatarcast.core.realtime import check_nice, check_priority, check_worker_nice
from avatarcast.live.load import check_idle_hold_at
from avatarcast.live.cushion import parse_start_cushion
from avatarcast.live.session import check_fps, parse_size
from avatarcast_bench.browser import browser_unavailable, in_loopback_namespace, run_in_loopback_namespace
from avatarcast_bench.latency import BenchConfig, format_table, run_bench, write_json, write_plot


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audio", default=None, metavar="FILE",
                   help="speech recording to push; None means the bundled demo speech")
    p.add_argument("--portrait", default=None, metavar="PORTRAIT_OR_DIR",
                   help="portrait image or prepared avatar folder; None means the bundled portrait")
    p.add_argument("--sessions", type=int, default=1, help="concurrent sessions, each with its own receiver")
    p.add_argument("--duration", type=float, default=30.0, metavar="S", help="seconds of speech per session")
    p.add_argument("--size", default="512x512", metavar="WxH", help="video size")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate")
    p.add_argument("--browser", action="store_true",
                   help="watch with headless Chromium (the viewer page, /usr/bin/chromium via Playwright) instead of "
                        "the aiortc receiver; runs the benchmark in a loopback-only network namespace (unshare -n)")
    p.add_argument("--interrupt-every", type=int, default=4, metavar="N",
                   help="interrupt every Nth utterance part-way (0 = never)")
    p.add_argument("--idle-hold-at", type=float, default=85.0, metavar="PCT",
                   help="the server's --idle-hold-at: from this machine CPU use (%%) idle frames are rendered every "
                        "other frame; 0 = always every frame")
    p.add_argument("--client-nice", type=int, default=0, metavar="N",
                   help="run the benchmark's aiortc receivers and ingest clients at nice +N (lower CPU priority) "
                        "while the server keeps its own, as if they ran on another machine; 0 = the same priority")
    p.add_argument("--receiver-nice", type=int, default=None, metavar="N",
                   help="run the aiortc receivers in a process of their own at nice +N, apart from the ingest "
                        "clients (which keep --client-nice): the viewers' decoding, most of the benchmark's own "
                        "CPU, then delays neither the clients' audio nor the server, as with viewers and TTS "
                        "clients on other machines; not given = the receivers run in the clients' process")
    p.add_argument("--start-cushion-ms", default="auto", metavar="auto|MS",
                   help="the server's --start-cushion-ms: 'auto' (adaptive) or a fixed number of milliseconds")
    p.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                   help="the server's --realtime-priority: render threads and processes under SCHED_RR at N "
                        "(0 = the normal policy)")
    p.add_argument("--worker-nice", type=int, default=0, metavar="N",
                   help="the server's --worker-nice: its render processes, render threads and encoders N nice "
                        "levels below its event loop")
    p.add_argument("--no-warm", action="store_true", help="skip the warm-start probe session at the end")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a timeline plot")


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces ``args`` (to re-run the benchmark in another network namespace)."""
    out = ["--sessions", str(args.sessions), "--duration", str(args.duration), "--size", args.size,
           "--fps", str(args.fps), "--interrupt-every", str(args.interrupt_every),
           "--idle-hold-at", str(args.idle_hold_at), "--client-nice", str(args.client_nice),
           "--start-cushion-ms", str(args.start_cushion_ms), "--realtime-priority", str(args.realtime_priority),
           "--worker-nice", str(args.worker_nice)]
    if args.receiver_nice is not None:
        out += ["--receiver-nice", str(args.receiver_nice)]
    for flag, value in (("--audio", args.audio), ("--portrait", args.portrait), ("--json", args.json),
                        ("--plot", args.plot)):
        if value is not None:
            out += [flag, str(Path(value).resolve()) if flag in ("--json", "--plot") else value]
    if args.browser:
        out.append("--browser")
    if args.no_warm:
        out.append("--no-warm")
    return out


def run(args: argparse.Namespace) -> int:
    w, h = parse_size(args.size)
    if args.duration <= 0:
        raise InputError("--duration must be positive (seconds of speech per session)")
    check_idle_hold_at(args.idle_hold_at)
    cushion_ms = parse_start_cushion(args.start_cushion_ms)
    realtime = check_priority(args.realtime_priority)
    worker_nice = check_worker_nice(args.worker_nice)
    for flag, nice in (("--client-nice", args.client_nice), ("--receiver-nice", args.receiver_nice)):
        if nice is not None:
            check_nice(nice, flag)
    if args.receiver_nice is not None and args.browser:
        raise InputError("--receiver-nice is for the aiortc receivers; the Chromium receiver (--browser) is a "
                         "process of its own already")
    if not 1 <= args.sessions <= 16:
        raise InputError("--sessions must be between 1 and 16")
    if args.browser:
        reason = browser_unavailable()
        if reason:
            raise InputError(f"--browser: {reason}")
        if not in_loopback_namespace():  # Chromium does WebRTC on loopback only in a loopback-only namespace
            return run_in_loopback_namespace(["-m", "avatarcast", "bench", "latency", *_argv(args)])
    cfg = BenchConfig(audio=args.audio, portrait=args.portrait, sessions=args.sessions, duration_s=args.duration,
                      width=w, height=h, fps=check_fps(args.fps), receiver="chromium" if args.browser else "aiortc",
                      warm_probe=not args.no_warm,
                      interrupt_every=max(0, args.interrupt_every), idle_hold_at=args.idle_hold_at,
                      client_nice=args.client_nice, receiver_nice=args.receiver_nice,
                      start_cushion_ms=cushion_ms, realtime_priority=realtime, worker_nice=worker_nice)
    figures = asyncio.run(run_bench(cfg))
    print(format_table(figures))
    if args.json:
        write_json(figures, args.json)
    if args.plot:
        write_plot(figures, args.plot)
    return 0
