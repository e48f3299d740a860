"""The machine-load signal that lets sessions hold idle frames, and keeping the garbage collector's full walks off
the objects that live as long as the server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from avatarcast.core.errors import InputError
from avatarcast.live.load import SAMPLE_S, CpuLoad, check_idle_hold_at, read_proc_stat


class FakeCpu:
    """CPU counters that advance by ``busy`` of each second (2 cores), on a clock the test moves."""

    def __init__(self) -> None:
        self.t = 0.0
        self.busy_ticks = 0.0
        self.total_ticks = 0.0

    def run(self, seconds: float, busy: float) -> None:
        self.t += seconds
        self.total_ticks += 200.0 * seconds
        self.busy_ticks += 200.0 * seconds * busy

    def read(self):
        return self.busy_ticks, self.total_ticks


def test_busy_switches_on_and_off_with_hysteresis() -> None:
    cpu = FakeCpu()
    load = CpuLoad(on=0.85, read=cpu.read, clock=lambda: cpu.t)
    assert load.off == pytest.approx(0.70)
    for _ in range(6):
        cpu.run(SAMPLE_S, 0.5)
        assert not load.busy()
    for _ in range(8):
        cpu.run(SAMPLE_S, 0.97)
        load.busy()
    assert load.busy() and load.utilisation > 0.85
    for _ in range(4):  # still above the off threshold: stays busy
        cpu.run(SAMPLE_S, 0.78)
        assert load.busy()
    for _ in range(8):
        cpu.run(SAMPLE_S, 0.3)
        load.busy()
    assert not load.busy()


def test_counters_are_read_at_most_every_sample_interval() -> None:
    cpu = FakeCpu()
    reads = []
    load = CpuLoad(read=lambda: reads.append(cpu.t) or cpu.read(), clock=lambda: cpu.t)
    for _ in range(50):
        cpu.run(0.01, 1.0)
        load.busy()
    assert len(reads) == 1 + int(0.5 / SAMPLE_S)  # the one at construction and one after SAMPLE_S


def test_without_proc_stat_the_machine_is_never_busy(tmp_path) -> None:
    assert read_proc_stat(str(tmp_path / "missing")) is None
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    assert read_proc_stat(str(tmp_path / "stat")) is None
    t = [0.0]
    load = CpuLoad(read=lambda: None, clock=lambda: t[0])
    t[0] += 10
    assert not load.busy()


def test_real_counters_give_a_utilisation_between_0_and_1() -> None:
    reading = read_proc_stat()
    if reading is None:
        pytest.skip("no /proc/stat on this system")
    busy, total = reading
    assert 0 <= busy <= total


def test_bad_thresholds_are_refused() -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            CpuLoad(on=bad, read=lambda: None)
    assert check_idle_hold_at(0) == 0.0 and check_idle_hold_at("85") == 85.0
    for bad in (-1, 100.5):
        with pytest.raises(InputError, match="`idle_hold_at`"):
            check_idle_hold_at(bad)


def test_objects_alive_at_start_are_frozen_and_later_garbage_is_still_collected() -> None:
    # in a fresh interpreter: freezing is process-wide
    code = textwrap.dedent("""
        import gc, weakref
        from avatarcast.live.runtime import freeze_startup_objects
        n = freeze_startup_objects()
        assert n > 20000, n  # the imports' objects
        class Node:
            pass
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle: only the cyclic collector frees it
        ref = weakref.ref(a)
        del a, b
        gc.collect()
        assert ref() is None
        print("ok", n)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_the_server_freezes_its_startup_objects() -> None:
    code = textwrap.dedent("""
        import asyncio, gc
        from avatarcast.live.server import ServerConfig, run_server
        async def main():
            assert gc.get_freeze_count() == 0
            handle = await run_server(ServerConfig(port=0, default_session=False))
            print(gc.get_freeze_count())
            await handle.close()
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 50000  # aiohttp, aiortc, av, OpenCV, scipy and the pipeline
