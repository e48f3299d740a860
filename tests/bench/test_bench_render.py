"""`avatarcast bench render`: prints a labelled table and writes the figures as JSON."""

from __future__ import annotations

import json

import pytest

from avatarcast.cli.main import main
from avatarcast_bench.commands.render import bench_states


def test_bench_render_reports_fps_with_conditions(portraits, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "render", "--portrait", str(portraits / "astronaut.png"), "--frames", "12",
               "--paced-frames", "12", "--e2e-seconds", "1.5", "--workers", "1,2", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "512x512" in printed and "1920x1080" in printed and "real_time_factor" in printed
    assert "ms CPU a frame" in printed and "sessions' rendering per core" in printed
    figures = json.loads(out.read_text())
    assert figures["portrait"].endswith("astronaut.png")
    sizes = [r["size"] for r in figures["raw"]]
    assert sizes == ["512x512", "1920x1080"]
    for r in figures["raw"]:
        assert r["frames"] == 12 and r["cores"] == 1 and r["render_fps"] > 1.0
    paced = figures["paced"]
    assert paced["size"] == "512x512" and paced["frames"] == 12 and paced["fps"] == 25.0
    assert paced["paced_cpu_ms_per_frame"] > 0 and paced["back_to_back_cpu_ms_per_frame"] > 0
    assert paced["paced_vs_back_to_back"] == pytest.approx(
        paced["paced_cpu_ms_per_frame"] / paced["back_to_back_cpu_ms_per_frame"])
    assert paced["sessions_per_core"] == pytest.approx(40.0 / paced["paced_cpu_ms_per_frame"])
    e2e = figures["end_to_end"]
    assert e2e["measured"] and e2e["fps"] == 48.0 and e2e["video_s"] == 1.5
    assert [r["workers"] for r in e2e["runs"]] == [1, 2]
    for r in e2e["runs"]:
        assert r["real_time_factor"] > 0 and r["peak_memory_mib"] > 50 and r["clips"] >= 1


def test_bench_compares_peak_memory_across_durations(portraits, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "render", "--portrait", str(portraits / "astronaut.png"), "--frames", "10",
               "--paced-frames", "0", "--e2e-seconds", "0", "--memory-minutes", "0.02,0.04", "--json", str(out)])
    assert rc == 0
    assert "memory against duration" in capsys.readouterr().out
    assert json.loads(out.read_text())["paced"] is None
    memory = json.loads(out.read_text())["memory_vs_duration"]
    assert [m["video_s"] for m in memory] == [1.2, 2.4]
    assert memory[0]["runs"][0]["peak_vs_first"] == 1.0 and memory[1]["runs"][0]["peak_vs_first"] > 0
    assert main(["bench", "render", "--e2e-seconds", "0", "--memory-minutes", "-1"]) != 0


def test_bench_rejects_too_few_frames(capsys):
    assert main(["bench", "render", "--frames", "3"]) != 0
    assert "--frames" in capsys.readouterr().err
    assert main(["bench", "render", "--paced-frames", "3"]) != 0
    assert "--paced-frames" in capsys.readouterr().err


def test_bench_state_sequence_varies_mouth_eyes_and_head():
    states = bench_states(200, 25.0)
    jaw = [s.jaw_open for s in states]
    assert max(jaw) > 0.5 and min(jaw) < 0.1
    assert min(s.eye_open_left for s in states) < 0.1
    assert max(abs(s.head_yaw_deg) for s in states) > 3
