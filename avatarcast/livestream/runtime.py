"""The live server's process: its event loop, and Python's cyclic garbage collector kept out of the media path.

``run_event_loop`` runs the server on uvloop (libuv) when it is installed (a core dependency on Linux and macOS),
else on asyncio's own loop. The server's one event loop carries every session's ingest, playout clock and aiortc
RTP/RTCP traffic; with 4 sessions on 2 cores it is the busiest thread of the machine, and the media clock's ticks
run late when it is behind. On uvloop, 4-session runs had a quarter of the ticks more than 20 ms late against
27-39 % on asyncio's loop (two runs each, ``bench latency --sessions 4``), and the latest tick 90-113 against
138-198 ms late. ``--event-loop asyncio`` selects asyncio's loop.

A full (generation 2) collection walks every tracked object. A live server holds about 100 000 of them, nearly all
created by imports at start (modules, classes, functions, OpenCV's and aiortc's bindings), and on a small machine
one walk takes about 100 ms, during which no Python thread runs: the playout clock, the render threads and the
encoders all stop, and every session misses two or three frames. ``freeze_startup_objects`` imports what sessions
use, collects once, and moves everything that exists then into the collector's permanent generation
(``gc.freeze``): those objects live as long as the process anyway, and later collections walk only what was
created after, so a full collection takes a few milliseconds. Objects of sessions (created later) stay collectable.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
from typing import Any, Coroutine

from avatarcast.errors import InputError

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_event_loop(main: Coroutine[Any, Any, Any], event_loop: str = "auto") -> Any:
    """Run ``main`` to completion on uvloop (``auto`` when installed, or ``uvloop``) or on asyncio's loop."""
    if event_loop not in EVENT_LOOPS:
        main.close()
        raise InputError(f"event loop {event_loop!r}: choose one of {', '.join(EVENT_LOOPS)}")
    use_uvloop = event_loop == "uvloop" or (event_loop == "auto" and uvloop_available())
    if not use_uvloop:
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        main.close()
        raise InputError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

SESSION_MODULES = (
    "avatarcast.pipeline.avatar",
    "avatarcast.pipeline.director",
    "avatarcast.pipeline.generators.parametric",
    "avatarcast.pipeline.visemes",
    "avatarcast.livestream.whep",
    "multiprocessing.shared_memory",
    "concurrent.futures",
)
"""Modules a live session imports on first use (imported at start so that their objects are frozen too)."""


def freeze_startup_objects(modules: tuple[str, ...] = SESSION_MODULES) -> int:
    """Import ``modules``, collect once, freeze everything alive; returns how many objects are frozen."""
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
