"""The time a live session's scheduler runs on: the machine's monotonic clock in the server, virtual time in tests.

The scheduler reads the time, sleeps its playout loop until the next audio tick and lets its render worker wait for
work only through a timer:

- ``RealTimer``: ``time.monotonic()``, ``asyncio.sleep`` and ``Condition.wait`` with a timeout.
- ``FakeTimer``: virtual time that stands still while anything runs and jumps to the next tick once everything
  waits (a discrete-event simulation). Before each jump the playout loop lets the event loop's other tasks run (a
  test pushing audio) and waits until every render worker has nothing left to do at the current time; rendering
  therefore takes no virtual time, and a test of ten seconds of session runs in the time its frames take to
  render. A render that should take time (a test's stalling renderer) spends it with ``pause``: virtual time, and
  the playout ticks with it, go on meanwhile. The same inputs give the same slots, underruns and events on any
  machine, however loaded.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Protocol

SETTLE_POLL_S = 0.0005
"""How often (real seconds) ``FakeTimer`` looks whether the render workers are done before it moves time on."""
SAFETY_WAIT_S = 0.05
"""Longest real wait of a render worker under ``FakeTimer`` (it looks again; a missed wake-up costs no more)."""


class Timer(Protocol):
    def now(self) -> float: ...

    def attach(self) -> None: ...

    async def sleep(self, seconds: float) -> None: ...

    def wait(self, cond: threading.Condition, timeout: float) -> None: ...

    def pause(self, seconds: float) -> None: ...


class RealTimer:
    """The machine's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    def attach(self) -> None:
        """Called by a render worker thread when it starts."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        """Wait on ``cond`` (held by the caller) until notified or ``timeout`` seconds have passed."""
        cond.wait(timeout=timeout)

    def pause(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        time.sleep(seconds)


class FakeTimer:
    """Virtual time (see the module docstring). ``now()`` starts at ``start``; ``sleep`` in any task returns once
    virtual time has reached its end, which happens when some task's sleep is the earliest thing due and every render
    worker waits."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self._epoch = 0
        self._workers: dict[threading.Thread, int] = {}  # worker -> the epoch it went idle at (-1: busy)
        self._conds: set[threading.Condition] = set()
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._pauses: dict[threading.Thread, float] = {}  # worker -> the virtual time its pause ends
        self._order = itertools.count()
        self._driver: asyncio.Task | None = None

    def now(self) -> float:
        return self._now

    # -- render workers (threads)

    def attach(self) -> None:
        """Called by a render worker thread when it starts: virtual time waits for it from then on."""
        with self._lock:
            self._workers[threading.current_thread()] = -1

    def wait(self, cond: threading.Condition, timeout: float) -> None:
        """Called by a render worker with ``cond`` held when it has nothing to do: it counts as idle until woken (a
        notify, virtual time moving on, or a short real timeout)."""
        me = threading.current_thread()
        with self._lock:
            self._conds.add(cond)
            self._workers[me] = self._epoch
        try:
            cond.wait(timeout=SAFETY_WAIT_S)
        finally:
            with self._lock:
                self._workers[me] = -1

    def pause(self, seconds: float) -> None:
        """Called in a render worker to take ``seconds`` of virtual time (a render that long): the worker counts as
        idle until virtual time reaches the pause's end, and the playout ticks run meanwhile."""
        me = threading.current_thread()
        cond = threading.Condition()
        with self._lock:
            attached = me in self._workers
            until = self._now + max(0.0, seconds)
            self._pauses[me] = until
            self._conds.add(cond)
        try:
            with cond:
                while True:
                    with self._lock:
                        if self._now >= until:
                            break
                        self._workers[me] = self._epoch
                    cond.wait(timeout=SAFETY_WAIT_S)
        finally:
            with self._lock:
                self._pauses.pop(me, None)
                self._conds.discard(cond)
                if attached:
                    self._workers[me] = -1
                else:
                    self._workers.pop(me, None)

    def _settled(self, epoch: int) -> bool:
        with self._lock:
            return all(e >= epoch for t, e in self._workers.items() if t.is_alive())

    async def _settle(self) -> None:
        """Wake every worker and wait until each waits again with nothing to do at the current time."""
        with self._lock:
            self._epoch += 1
            epoch = self._epoch
            conds = list(self._conds)
        for cond in conds:
            with cond:
                cond.notify_all()
        while not self._settled(epoch):
            await asyncio.sleep(SETTLE_POLL_S)

    # -- tasks (the event loop)

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._order), future))
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive(), name="fake-timer")
        await future

    async def _drive(self) -> None:
        """Move virtual time to the earliest sleep's end whenever the event loop and the workers are idle: the
        workers see the new time first (they assign and render what is due), then the sleeps that end there
        return."""
        while self._sleepers:
            for _ in range(3):  # let the tasks that just woke run on to their next sleep
                await asyncio.sleep(0)
            await self._settle()
            while self._sleepers and self._sleepers[0][2].done():  # cancelled
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                break
            due = self._sleepers[0][0]
            with self._lock:
                if self._pauses:  # a worker's pause that ends first: move there, let it go on, then look again
                    due = min(due, min(self._pauses.values()))
            self._now = max(self._now, due)
            await self._settle()
            while self._sleepers and self._sleepers[0][0] <= self._now:
                future = heapq.heappop(self._sleepers)[2]
                if not future.done():
                    future.set_result(None)
