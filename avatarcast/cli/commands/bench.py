"""Benchmarks that print figures with their conditions, using the metric names of the design.

  render   raw render fps at 512x512 and 1920x1080 on one core, and the real-time factor of a 1080p/48 fps render
  latency  live latency, A/V drift and underruns through a real WebRTC receiver
  viewers  server CPU and per-viewer output_fps with 1, 10 and 50 WebRTC viewers of one session
  kernels  attention kernel throughput on a GPU
  video    video avatars against real footage of the same speaker (independent detector), loops, speed
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "render": ("avatarcast_bench.commands.render", "raw render fps and end-to-end real-time factor"),
    "latency": ("avatarcast_bench.commands.latency", "live latency, drift and underruns over WebRTC"),
    "viewers": ("avatarcast_bench.commands.viewers", "server CPU and per-viewer fps with many WebRTC viewers"),
    "kernels": ("avatarcast_bench.commands.kernels", "attention kernel TFLOP/s and speedups (GPU)"),
    "video": ("avatarcast_bench.commands.video", "video avatars against the real recording, loops and speed"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module_name, help_text) in BENCHES.items():
        module = importlib.import_module(module_name)
        q = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(q)
        q.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
