"""Headless Chromium as a WebRTC viewer: launching it, the loopback-only network namespace it needs, and a receiver
that records what the viewer page presents (for ``bench latency --browser`` and the end-to-end test).

Chromium does WebRTC between two processes on one machine only when (all of these were needed):

- it runs in a network namespace whose only interface is loopback (``unshare -n``, then ``ip link set lo up``);
- it is started with ``--allow-loopback-in-peer-connection`` and ``--disable-features=WebRtcHideLocalIpsWithMdns``;
- the server's aiortc offers a 127.0.0.1 host candidate and no STUN server (``whep.use_loopback_candidates``).

``run_in_loopback_namespace`` re-executes a command line in such a namespace (it needs root or unprivileged user
namespaces). The system Chromium is driven through Playwright's ``executable_path``; Playwright's own browser
downloads are never used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

from avatarcast_bench.receiver import MOUTH_REGION, AudioRecord, ReceiverLog, VideoRecord

CHROMIUM_PATH = os.environ.get("AVATARCAST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
)
NETNS_ENV = "AVATARCAST_LOOPBACK_NETNS"
"""Set in the environment of a command re-executed by ``run_in_loopback_namespace``."""
AUDIO_LEVEL_INTERVAL_MS = 5
"""How often the page samples the received audio level (Web Audio analyser)."""
PAGE_TIMEOUT_S = 30.0

# Keeps a handle on the page's peer connections (for getStats) before the page script creates one.
CAPTURE_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) { const pc = new Native(...args); window.__pcs.push(pc); return pc; };
  window.RTCPeerConnection.prototype = Native.prototype;
})();
"""

# For every presented frame: presentation time (epoch ms), RTP timestamp, and the mouth region's luma, 4x smaller;
# every few ms: the received audio's RMS level through a Web Audio analyser.
PAGE_PROBE = """
([x0, x1, y0, y1, levelMs]) => {
  const video = document.getElementById("video");
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const probe = window.probe = { frames: [], level: [], presented: 0 };
  const t0 = performance.timeOrigin;
  const track = video.srcObject && video.srcObject.getAudioTracks()[0];
  if (track) {
    const ac = new AudioContext();
    const analyser = ac.createAnalyser();
    analyser.fftSize = 256;
    ac.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    ac.resume();
    const buf = new Float32Array(analyser.fftSize);
    setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
      probe.level.push([t0 + performance.now(), Math.sqrt(sum / buf.length)]);
    }, levelMs);
  }
  const step = (now, meta) => {
    const w = video.videoWidth, h = video.videoHeight;
    if (w && h) {
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      ctx.drawImage(video, 0, 0, w, h);
      const sx = Math.floor(x0 * w), sy = Math.floor(y0 * h);
      const cw = Math.floor(x1 * w) - sx, ch = Math.floor(y1 * h) - sy;
      const px = ctx.getImageData(sx, sy, cw, ch).data;
      const cols = Math.ceil(cw / 4), rows = Math.ceil(ch / 4);
      const small = new Uint8Array(cols * rows);
      let n = 0;
      for (let y = 0; y < ch; y += 4)
        for (let x = 0; x < cw; x += 4) {
          const i = 4 * (y * cw + x);
          small[n++] = Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
        }
      // base64: a short string crosses to Python far faster than an array of numbers
      let bin = "";
      for (let i = 0; i < small.length; i++) bin += String.fromCharCode(small[i]);
      probe.frames.push([t0 + meta.presentationTime, meta.rtpTimestamp ?? -1, w, h, cols, btoa(bin)]);
      probe.presented++;
    }
    video.requestVideoFrameCallback(step);
  };
  video.requestVideoFrameCallback(step);
}
"""

DRAIN = "() => { const p = window.probe; const f = p.frames.splice(0); const l = p.level.splice(0); return [f, l]; }"


def browser_unavailable() -> str | None:
    """Why headless Chromium cannot be used here, or None."""
    if sys.platform != "linux":
        return "the browser receiver needs Linux network namespaces (unshare -n)"
    if not os.path.exists(CHROMIUM_PATH):
        return f"Chromium is not installed at {CHROMIUM_PATH} (Debian package 'chromium'; or set AVATARCAST_CHROMIUM)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (util-linux / iproute2)"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return ("cannot create a network namespace here (unshare -n needs root or user namespaces): "
                f"{probe.stderr.strip()}")
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; no browser download is needed)"
    return None


def in_loopback_namespace() -> bool:
    return os.environ.get(NETNS_ENV) == "1"


def run_in_loopback_namespace(argv: list[str]) -> int:
    """Run ``python argv...`` in a new network namespace with only loopback up; return its exit status."""
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *argv]
    return subprocess.call(cmd, env=dict(os.environ, **{NETNS_ENV: "1"}))


def _monotonic_offset_s() -> float:
    """epoch seconds - monotonic seconds, to place the page's timestamps on this process's clock."""
    return time.time() - time.monotonic()


class ChromiumHost:
    """One headless Chromium (fresh profile) shared by the receivers of a run."""

    def __init__(self) -> None:
        self._pw_cm: Any = None
        self.pw: Any = None
        self.browser: Any = None

    async def start(self) -> None:
        from playwright.async_api import async_playwright

        self._pw_cm = async_playwright()
        self.pw = await self._pw_cm.__aenter__()
        self.browser = await self.pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True,
                                                     args=list(CHROMIUM_ARGS))

    async def close(self) -> None:
        if self.browser is not None:
            with contextlib.suppress(Exception):
                await self.browser.close()
        if self._pw_cm is not None:
            with contextlib.suppress(Exception):
                await self._pw_cm.__aexit__(None, None, None)


class ChromiumReceiver:
    """The viewer page in a Chromium tab; fills a ``ReceiverLog`` like ``WhepReceiver`` does, from the frames the page
    presents (``requestVideoFrameCallback``) and the audio level it hears (Web Audio). Audio packets have no media
    timestamps here: their ``pts`` is -1."""

    def __init__(self, host: ChromiumHost, view_url: str) -> None:
        self.host = host
        self.view_url = view_url
        self.log = ReceiverLog(kind="chromium")
        self._context: Any = None
        self.page: Any = None
        self._task: asyncio.Task | None = None
        self._rtp0: int | None = None
        self._prev: np.ndarray | None = None
        self._offset = _monotonic_offset_s()

    async def connect(self, timeout_s: float = PAGE_TIMEOUT_S) -> None:
        self._context = await self.host.browser.new_context()
        self.page = await self._context.new_page()
        await self.page.add_init_script(CAPTURE_PEER_CONNECTIONS)
        await self.page.goto(self.view_url)
        # polled from here: Playwright's wait_for_function evaluates its predicate with eval(), which the viewer
        # page's Content-Security-Policy forbids (a function passed to evaluate is not affected)
        deadline = time.monotonic() + timeout_s
        while not await self.page.evaluate("() => !!(window.avatarcast && window.avatarcast.framesDecoded > 0)"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the viewer page decoded no frame within {timeout_s:g} s")
            await asyncio.sleep(0.05)
        await self.page.evaluate(PAGE_PROBE, [*MOUTH_REGION, AUDIO_LEVEL_INTERVAL_MS])
        self.log.connected_at = time.monotonic()
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(0.25)
                await self.drain()

    async def drain(self) -> None:
        frames, levels = await self.page.evaluate(DRAIN)
        for epoch_ms, rtp, w, h, cols, small in frames:
            crop = np.frombuffer(base64.b64decode(small), np.uint8).astype(np.float32).reshape(-1, cols)
            motion = float(np.mean(np.abs(crop - self._prev))) if self._prev is not None and \
                self._prev.shape == crop.shape else 0.0
            self._prev = crop
            if self._rtp0 is None and rtp >= 0:
                self._rtp0 = rtp
            pts = (rtp - self._rtp0) % (1 << 32) if rtp >= 0 and self._rtp0 is not None else -1
            self.log.video.append(VideoRecord(epoch_ms / 1000.0 - self._offset, pts, motion, w, h))
            self.log.crops.append(crop.astype(np.uint8))
        for epoch_ms, rms in levels:
            db = 20.0 * float(np.log10(rms)) if rms > 1e-9 else -180.0
            self.log.audio.append(AudioRecord(epoch_ms / 1000.0 - self._offset, -1, 0, db, -1))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.page is not None:
            with contextlib.suppress(Exception):
                await self.drain()
        if self._context is not None:
            with contextlib.suppress(Exception):
                await self._context.close()
