"""How busy the machine's CPUs are, for shedding idle-frame renders when the server runs short of CPU.

Live sessions render every frame on time only while the CPUs have room: when they are nearly saturated (several
sessions on a small machine, or OBS and the server sharing one), frames wait for a core and speech frames start to
miss their deadlines. Idle frames (listening, between utterances) move slowly and predictably, so under load a
scheduler may show each rendered idle frame twice (``Scheduler`` asks ``CpuLoad.busy``); speech frames always
render. ``CpuLoad`` reads the whole machine's CPU time from ``/proc/stat`` (other programs count too: they take
the same cores), at most every ``SAMPLE_S`` seconds, smooths it, and switches with hysteresis: busy from ``on``
utilisation, not busy again below ``off``.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from avatarcast.core.errors import InputError, InvalidValueError

def cpu_model() -> str | None:
    """The processor's model name (Linux), for the conditions of a benchmark run: figures differ between machines."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


SAMPLE_S = 0.5
"""Shortest interval between two readings of the CPU counters."""
SMOOTH_S = 1.0
"""Time constant of the utilisation's exponential smoothing."""
DEFAULT_ON = 0.85
"""Utilisation (0-1 of all cores) from which the machine counts as busy."""
HYSTERESIS = 0.15
"""The machine stops counting as busy below ``on - HYSTERESIS``."""


def check_idle_hold_at(percent: float) -> float:
    """The ``--idle-hold-at`` setting (machine CPU %, 0 = never hold), checked."""
    percent = float(percent)
    if not 0.0 <= percent <= 100.0:
        raise InputError(f"`idle_hold_at` must be a CPU percentage from 0 to 100, got {percent:g}")
    return percent


def read_proc_stat(path: str = "/proc/stat") -> tuple[float, float] | None:
    """(busy, total) CPU time of all cores in clock ticks, or None where there is no such file."""
    try:
        with open(path, "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    values = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(values)
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return total - idle, total


class CpuLoad:
    """The machine's smoothed CPU utilisation and whether it counts as busy. Thread-safe; cheap to ask often."""

    def __init__(self, on: float = DEFAULT_ON, off: float | None = None,
                 read: Callable[[], tuple[float, float] | None] = read_proc_stat,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < on <= 1.0:
            raise InvalidValueError(f"the busy threshold must be in (0, 1], got {on}")
        self.on = float(on)
        self.off = float(off) if off is not None else max(0.0, self.on - HYSTERESIS)
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, float] | None = read()
        self._last_t = clock()
        self.utilisation = 0.0
        self._busy = False

    def busy(self) -> bool:
        now = self._clock()
        with self._lock:
            if now - self._last_t >= SAMPLE_S:
                self._update(now)
            return self._busy

    def _update(self, now: float) -> None:
        reading = self._read()
        dt = now - self._last_t
        if reading is not None and self._last is not None and reading[1] > self._last[1]:
            u = (reading[0] - self._last[0]) / (reading[1] - self._last[1])
            a = min(1.0, dt / SMOOTH_S)
            self.utilisation += a * (min(max(u, 0.0), 1.0) - self.utilisation)
            if self._busy and self.utilisation < self.off:
                self._busy = False
            elif not self._busy and self.utilisation >= self.on:
                self._busy = True
        self._last, self._last_t = reading, now
