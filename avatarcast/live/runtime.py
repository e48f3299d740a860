"""Keeping Python's cyclic garbage collector out of the media path.

A full (generation 2) collection walks every tracked object. A live server holds about 100 000 of them, nearly all
created by imports at start (modules, classes, functions, OpenCV's and aiortc's bindings), and on a small machine
one walk takes about 100 ms, during which no Python thread runs: the playout clock, the render threads and the
encoders all stop, and every session misses two or three frames. ``freeze_startup_objects`` imports what sessions
use, collects once, and moves everything that exists then into the collector's permanent generation
(``gc.freeze``): those objects live as long as the process anyway, and later collections walk only what was
created after, so a full collection takes a few milliseconds. Objects of sessions (created later) stay collectable.
"""

from __future__ import annotations

import gc
import importlib

SESSION_MODULES = (
    "avatarcast.face.avatar",
    "avatarcast.direction.director",
    "avatarcast.generators.parametric.generator",
    "avatarcast.audio.visemes",
    "avatarcast.live.outputs.whep",
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
