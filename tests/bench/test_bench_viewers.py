"""The viewers benchmark, run briefly: a real server, aiortc viewers in processes of their own.

Nothing here is timed: the figures must exist and show what the benchmark is for (every viewer receives video and
audio; the session's frames are encoded once whatever the number of viewers; the table names its conditions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from avatarcast.cli.main import main


def test_bench_viewers_prints_the_figures_with_their_conditions(tmp_path):
    out = tmp_path / "viewers.json"
    cmd = [sys.executable, "-m", "avatarcast", "bench", "viewers", "--viewers", "1,3", "--duration", "3",
           "--size", "192x192", "--decode", "1", "--viewers-per-process", "2", "--client-nice", "2",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "conditions" in proc.stdout and "server_percent" in proc.stdout and "output_fps" in proc.stdout
    f = json.loads(out.read_text())
    assert f["conditions"]["cores"] == os.cpu_count() and f["conditions"]["codec"] == "vp8"
    steps = f["steps"]
    assert [s["viewers"] for s in steps] == [0, 1, 3]
    for s in steps[1:]:
        assert s["output_fps"]["min"] > 5 and s["audio_packets_per_s_min"] > 10  # every viewer receives both
        assert s["output_fps_decoded"]["count"] == 1 and s["output_fps_decoded"]["min"] > 5
        server = s["server"]
        # encoded once: the shared encoder's rate is the session's frame rate, not viewers x that rate
        assert 0.5 * server["output_fps"] < server["encoded_fps"] < 1.5 * server["output_fps"]
        assert "added_percent" in s and s["receiving_processes"] == (1 if s["viewers"] == 1 else 2)
        assert 0 < s["join_ms"]["p50"] <= s["join_ms"]["max"]


@pytest.mark.parametrize("argv, message", [
    (["--viewers", "1,x"], "--viewers"),
    (["--viewers", "0"], "--viewers"),
    (["--duration", "1"], "--duration"),
    (["--client-nice", "25"], "--client-nice"),
])
def test_bench_viewers_checks_its_arguments(argv, message, capsys):
    assert main(["bench", "viewers", *argv]) != 0
    assert message in capsys.readouterr().err
