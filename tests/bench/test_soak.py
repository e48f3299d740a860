"""A short soak (about 45 s): a well-behaved session beside one whose clients connect, push speech and vanish,
take each other over, interrupt, flood, and send malformed, oversized and deeply nested messages and bad REST
requests. Nothing may grow: file descriptors, threads, memory; and the well-behaved session keeps its clock.
The long run (60 minutes, 4 sessions) is ``python -m avatarcast_bench.soak``; its figures are in
docs/security.md."""

from __future__ import annotations

import asyncio

import pytest

from avatarcast_bench.soak import run_soak


@pytest.mark.slow
def test_short_soak_nothing_grows_and_the_good_session_keeps_time():
    result = asyncio.run(asyncio.wait_for(run_soak(40.0, sessions=2, size="128x128", sample_s=2.0), 120))
    summary = result.summary()
    assert not result.client_errors, result.client_errors
    counts = result.client_counts
    assert counts.get("good_utterances", 0) >= 5
    assert sum(1 for k in ("vanished", "takeovers", "interrupts", "bad_message_rounds", "floods", "rest_rounds")
               if counts.get(k)) >= 4, counts
    # windows: seconds 6.7-13.3 against the last 6.7 s
    fds = summary["fds_other"]  # descriptors besides the client connections open at that moment
    assert fds["last_window_mean"] <= fds["ref_window_mean"] + 3, summary
    assert summary["threads"]["last_window_mean"] <= summary["threads"]["ref_window_mean"] + 2, summary["threads"]
    rss = summary["rss_mb"]
    assert rss["last_window_mean"] <= rss["ref_window_mean"] * 1.10 + 10, rss
    good = next(iter(summary["good_sessions"].values()))
    # while the clients ran (a shared 2-core machine: a little slack; the long run's figures are in the docs)
    assert good["clock_slips_during"] <= 1, good
    assert good["underrun_ms_during"] <= 200, good
    assert max(s["connections"] for s in result.samples) < 64
