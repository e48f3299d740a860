"""Per-session live metrics, named as in the design's metric vocabulary.

``avatar_first_frame_ms``, ``underrun_ms``, ``render_fps``, ``output_fps``, ``av_drift_ms``,
``interrupt_to_silence_ms``, ``interrupt_to_listening_ms``; plus a few counters that explain them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

RATE_WINDOW_S = 2.0
"""Sliding window for the fps figures."""
LATENCY_HISTORY = 200
"""How many latency samples are kept per metric."""


def _summary(values: deque[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "last": None, "p50": None, "p95": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    p50, p95 = np.percentile(a, (50, 95)).tolist()
    return {
        "count": int(a.size),
        "last": round(float(a[-1]), 1),
        "p50": round(p50, 1),
        "p95": round(p95, 1),
        "max": round(float(a.max()), 1),
    }


class SessionStats:
    """Thread-safe counters: the render worker and the playout loop both write here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.monotonic()
        self.avatar_first_frame_ms: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self.interrupt_to_silence_ms: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self.interrupt_to_listening_ms: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self.underrun_ms = 0.0  # speech frames shown late (the last frame was held; audio kept its time)
        self.starved_ms = 0.0  # speech paused because the client had not sent the audio yet
        self.late_idle_frames = 0  # idle frames rendered too late (the last frame was held)
        self.idle_frames_held = 0  # idle frames not rendered because the machine was busy (the previous one shown)
        self.start_cushion_ms = 0.0  # audio an utterance waits for beyond its first frame (StartCushion), now
        self.clock_slips = 0  # the playout loop was blocked so long that the clock was re-based
        self.sooner_starts = 0  # utterances whose first frame moved ahead of the frame grid (MediaClock.shift_from)
        self.sooner_start_ms = 0.0  # by how much, in all
        self.av_drift_ms = 0.0  # largest |audio pts - video pts| of paired media seen
        self.frames_out = 0
        self.frames_rendered = 0
        self.render_ms_ema = 0.0
        self.audio_received_ms = 0.0
        self.speech_played_ms = 0.0
        self.audio_dropped_ms = 0.0  # audio discarded by interrupts (never silently otherwise)
        self.utterances = 0
        self.error: str | None = None  # what stopped the session's rendering (its render process died), if anything
        # why speech frames were late: how long before its deadline each had its audio (was assigned), how long it
        # then waited for the render worker (None: never started), and how late the discarded render finished
        self.late_slack_ms: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self.late_wait_ms: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self.late_never_started = 0
        self.late_render_ms: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self.ticks = self.ticks_late_10ms = self.ticks_late_20ms = 0  # playout ticks run, and run late
        self.tick_late_max_ms = 0.0
        self._out_times: deque[float] = deque()
        self._render_times: deque[float] = deque()

    def frame_rendered(self, render_s: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames_rendered += 1
            ms = render_s * 1000.0
            self.render_ms_ema = ms if self.frames_rendered == 1 else 0.9 * self.render_ms_ema + 0.1 * ms
            self._render_times.append(now)
            self._trim(self._render_times, now)

    def tick_run(self, late_s: float) -> None:
        """The playout loop ran a tick ``late_s`` after its time (the event loop was busy)."""
        with self._lock:
            self.ticks += 1
            if late_s > 0.010:
                self.ticks_late_10ms += 1
                if late_s > 0.020:
                    self.ticks_late_20ms += 1
            self.tick_late_max_ms = max(self.tick_late_max_ms, late_s * 1000.0)

    def late_speech_frame(self, slack_s: float, wait_s: float | None) -> None:
        with self._lock:
            self.late_slack_ms.append(slack_s * 1000.0)
            if wait_s is None:
                self.late_never_started += 1
            else:
                self.late_wait_ms.append(wait_s * 1000.0)

    def late_speech_rendered(self, after_deadline_s: float) -> None:
        with self._lock:
            self.late_render_ms.append(after_deadline_s * 1000.0)

    def frame_out(self) -> None:
        now = time.monotonic()
        with self._lock:
            self.frames_out += 1
            self._out_times.append(now)
            self._trim(self._out_times, now)

    @staticmethod
    def _trim(times: deque[float], now: float) -> None:
        while times and now - times[0] > RATE_WINDOW_S:
            times.popleft()

    @staticmethod
    def _rate(times: deque[float], now: float) -> float:
        if len(times) < 2:
            return 0.0
        span = max(now - times[0], 1e-6)
        return (len(times) - 1) / span if now - times[-1] < RATE_WINDOW_S else 0.0

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            self._trim(self._out_times, now)
            self._trim(self._render_times, now)
            return {
                "avatar_first_frame_ms": _summary(self.avatar_first_frame_ms),
                "underrun_ms": round(self.underrun_ms, 1),
                "starved_ms": round(self.starved_ms, 1),
                "render_fps": round(self._rate(self._render_times, now), 2),
                "render_ms": round(self.render_ms_ema, 2),
                "output_fps": round(self._rate(self._out_times, now), 2),
                "av_drift_ms": round(self.av_drift_ms, 3),
                "interrupt_to_silence_ms": _summary(self.interrupt_to_silence_ms),
                "interrupt_to_listening_ms": _summary(self.interrupt_to_listening_ms),
                "late_speech": {"slack_at_assign_ms": _summary(self.late_slack_ms),
                                "wait_before_render_ms": _summary(self.late_wait_ms),
                                "never_started": self.late_never_started,
                                "rendered_after_deadline_ms": _summary(self.late_render_ms)},
                "playout_ticks": {"count": self.ticks, "late_10ms": self.ticks_late_10ms,
                                  "late_20ms": self.ticks_late_20ms, "max_late_ms": round(self.tick_late_max_ms, 1)},
                "late_idle_frames": self.late_idle_frames,
                "idle_frames_held": self.idle_frames_held,
                "clock_slips": self.clock_slips,
                "sooner_starts": {"count": self.sooner_starts, "total_ms": round(self.sooner_start_ms, 1)},
                "start_cushion_ms": self.start_cushion_ms,
                "frames_out": self.frames_out,
                "frames_rendered": self.frames_rendered,
                "audio_received_ms": round(self.audio_received_ms, 1),
                "speech_played_ms": round(self.speech_played_ms, 1),
                "audio_dropped_ms": round(self.audio_dropped_ms, 1),
                "utterances": self.utterances,
                "uptime_s": round(now - self.started_at, 1),
                "error": self.error,
            }
