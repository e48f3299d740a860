"""Logs that say what happened without flooding the disk or carrying a secret.

- ``RepeatLimiter``: a logging filter that lets through at most ``burst`` records of one kind (logger, level and
  message template) per ``window_s`` and counts the rest, so a failure repeated every few milliseconds (a request
  flood, a broken render loop, "Too many open files") costs a few lines per window, not gigabytes.
- ``RedactingAccessLogger``: aiohttp's access log with the values of ``token`` query parameters replaced by
  ``[redacted]`` (browsers can only pass a WebSocket token in the URL) and no ``Referer`` (which would carry the
  viewer page's URL, token included).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger

SECRET_PARAMS = ("token", "access_token", "ticket")
_SECRET_RE = re.compile(r"(?i)([?&;](?:%s)=)[^&;#\s]*" % "|".join(SECRET_PARAMS))
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` (a URL, a path with its query, a log line) with the values of secret query parameters hidden."""
    return _SECRET_RE.sub(lambda m: m.group(1) + REDACTED, text)


class RepeatLimiter(logging.Filter):
    """At most ``burst`` records of one kind per ``window_s``; the first record let through after a window with
    suppressed ones says how many were dropped."""

    def __init__(self, burst: int = 5, window_s: float = 10.0, max_kinds: int = 2048) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.max_kinds = max_kinds
        self._kinds: dict[tuple, list[float]] = {}  # kind -> [window start, count, suppressed]
        self._lock = threading.Lock()
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            state = self._kinds.get(key)
            if state is None or now - state[0] >= self.window_s:
                dropped = int(state[2]) if state is not None else 0
                if len(self._kinds) >= self.max_kinds:
                    self._kinds.clear()
                self._kinds[key] = [now, 1, 0]
                if dropped:
                    record.msg = f"{record.msg} [{dropped} similar lines suppressed in the last {self.window_s:g} s]"
                return True
            state[1] += 1
            if state[1] <= self.burst:
                return True
            state[2] += 1
            self.suppressed_total += 1
            return False


_LIMITER = RepeatLimiter()


def limit_repeated_log_lines(logger: logging.Logger | None = None) -> RepeatLimiter:
    """Install the process's ``RepeatLimiter`` on every handler of ``logger`` (default: the root logger), once."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if _LIMITER not in handler.filters:
            handler.addFilter(_LIMITER)
    return _LIMITER


class RedactingAccessLogger(AbstractAccessLogger):
    """``REMOTE "METHOD PATH?QUERY HTTP/x.y" STATUS BYTES SECONDS "USER-AGENT"`` with secrets redacted."""

    def log(self, request: Any, response: Any, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        try:
            line = '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"' % (
                request.remote, request.method, redact(request.raw_path)[:2000],
                request.version.major, request.version.minor, response.status, response.body_length, time,
                request.headers.get("User-Agent", "-")[:200])
        except Exception:  # a log line must never break a response
            return
        self.logger.info(line)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
