"""The real-time scheduling policy for the threads and processes that must meet a frame's deadline.

A live session's speech frame has to be rendered within the start cushion (20-100 ms) of its audio arriving. On a
machine whose cores are all busy (many sessions, other jobs), the kernel's fair scheduler may keep a render process
waiting longer than that, and the frame is shown late. ``serve --realtime-priority N`` puts the sessions' render
threads and render processes under ``SCHED_RR`` at priority N, as audio servers (JACK, PipeWire) do for their
media threads: they then run as soon as they are ready, ahead of every ordinary process. They use a bounded share of
the CPU (a frame's render, then they wait), and the kernel keeps 5 % of each core for ordinary processes whatever
they do (``sched_rt_runtime_us``). Work that is not on a frame's deadline (the live planner, LLM requests, avatar
preparation) stays under the normal policy.

It needs the right to raise the policy: root, ``CAP_SYS_NICE``, or an ``RLIMIT_RTPRIO`` of at least N
(``ulimit -r``, ``LimitRTPRIO=`` in a systemd unit). Linux only.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from avatarcast.core.errors import InputError

MAX_PRIORITY = 99
MAX_NICE = 19

_thread = threading.local()


def promote(priority: int) -> None:
    """Run the calling thread under ``SCHED_RR`` at ``priority`` (1-99; 0 leaves it as it is). Threads it starts
    afterwards inherit the policy. Raises ``PermissionError`` when the process may not."""
    if priority > 0:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))


def demote() -> None:
    """Run the calling thread under the normal policy again (for work started by a real-time thread that is not on
    a frame's deadline). Lowering is always allowed; does nothing where the policy is already normal."""
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) in (os.SCHED_RR, os.SCHED_FIFO):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def lower(steps: int) -> None:
    """Run the calling thread ``steps`` nice levels below the level it had when first lowered (Linux keeps a nice
    level per thread; processes and threads started afterwards inherit it). For ``serve --worker-nice``: the heavy
    workers (render processes, render worker threads, encoders) yield the CPU to the server's event loop, which runs
    the playout ticks, the ingest and the RTP sending. Going back up (a smaller ``steps`` later) needs the right to
    raise a priority; where it is refused the thread stays lower."""
    if not hasattr(os, "setpriority"):
        return
    base = getattr(_thread, "base", None)
    if base is None:
        base = _thread.base = _thread.level = os.getpriority(os.PRIO_PROCESS, 0)
    target = min(base + max(int(steps), 0), MAX_NICE)
    if target == _thread.level:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, target)  # who = 0: the calling thread
        _thread.level = target
    except OSError:
        pass


def check_nice(steps: int, what: str) -> int:
    """A number of nice levels to lower something by, checked: 0 (the same level) to ``MAX_NICE``; ``what`` names the
    setting in the error."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps <= MAX_NICE:
        raise InputError(f"{what} must be from 0 to {MAX_NICE}, got {steps!r}")
    return steps


def check_worker_nice(steps: int) -> int:
    """The ``worker_nice`` setting, checked (``check_nice``)."""
    return check_nice(steps, "`worker_nice`")


def check_priority(priority: int) -> int:
    """The ``realtime_priority`` setting, checked: 0 (off) or a priority this process may use (tried on a thread of
    its own, which ends at once)."""
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= MAX_PRIORITY:
        raise InputError(f"`realtime_priority` must be 0 (off) or 1-{MAX_PRIORITY}, got {priority!r}")
    if priority == 0:
        return 0
    if not hasattr(os, "sched_setscheduler"):
        raise InputError("`realtime_priority` needs Linux's real-time scheduling policies; leave it at 0 here")
    refused: list[BaseException] = []

    def attempt() -> None:
        try:
            promote(priority)
        except OSError as exc:
            refused.append(exc)

    probe = threading.Thread(target=attempt, name="realtime-probe")
    probe.start()
    probe.join()
    if refused:
        raise InputError(f"the real-time policy at priority {priority} was refused ({refused[0].strerror or refused[0]}):"
                         " run the server as root or with CAP_SYS_NICE, raise its RLIMIT_RTPRIO (ulimit -r), or set "
                         "`realtime_priority` to 0")
    return priority


@dataclass(frozen=True)
class WorkerPriority:
    """How a session's heavy workers run against the server's event loop: its render process and render worker
    thread, and its encode threads. ``realtime``: the render workers under ``SCHED_RR`` at this priority (0: the
    normal policy); ``nice``: every worker this many nice levels below the event loop (``lower``)."""

    realtime: int = 0
    nice: int = 0

    @classmethod
    def checked(cls, realtime: int = 0, nice: int = 0) -> "WorkerPriority":
        """The ``realtime_priority`` and ``worker_nice`` settings, checked (``InputError`` naming the bad one)."""
        return cls(check_priority(realtime), check_worker_nice(nice))

    def apply_to_render_worker(self, log: logging.Logger, what: str) -> None:
        """On the calling thread (a render worker): lower it by ``nice``, then put it under the real-time policy. A
        refused policy is logged, and the worker renders under the normal one."""
        lower(self.nice)
        try:
            promote(self.realtime)
        except OSError as exc:
            log.warning("%s: the real-time policy was refused (%s); rendering under the normal one", what, exc)
