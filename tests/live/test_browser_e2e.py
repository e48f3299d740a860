"""End to end in a real browser: headless Chromium plays the viewer page over WebRTC and the avatar talks.

Chromium does WebRTC on loopback only inside a loopback-only network namespace, so the test re-runs this file as a
script under ``unshare -n`` (with ``lo`` up). The script starts the live server in-process on 127.0.0.1 and a free
port, opens the viewer page in Chromium (Playwright, driving the system's /usr/bin/chromium), measures for a while
in silence, pushes real speech over the ingest WebSocket, measures again, and writes its findings as JSON:

- video: frames decoded (``getStats`` ``framesDecoded``) and frames presented (``requestVideoFrameCallback``);
- audio: packets received (``getStats``) and the level of the decoded signal (Web Audio ``AnalyserNode`` on the
  received track; ``getStats``'s ``totalAudioEnergy`` stays 0 in headless Chromium), in silence and during speech;
- the mouth: for every presented frame the page draws the video into a canvas and hands over the mouth region
  (``avatarcast_bench.browser.ChromiumReceiver``); its mean absolute luma change against the previous frame is
  compared between speech and silence.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SILENCE_S = 2.0
SPEECH_S = 4.0
SCRIPT_TIMEOUT_S = 120

PAGE_STATS = """
async () => {
  const out = { now: performance.now(), framesDecoded: 0, audioPackets: 0, audioEnergy: 0, audioSamples: 0,
                presented: window.probe ? window.probe.presented : 0 };
  const pcs = window.__pcs || [];
  for (const pc of pcs) {
    const report = await pc.getStats();
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") out.framesDecoded += s.framesDecoded || 0;
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        out.audioPackets += s.packetsReceived || 0;
        out.audioEnergy += s.totalAudioEnergy || 0;
        out.audioSamples += s.totalSamplesReceived || 0;
      }
    });
  }
  return out;
}
"""

def _unavailable() -> str | None:
    """Why this machine cannot run the browser test (no Chromium, Playwright or network namespace), or None."""
    from avatarcast_bench.browser import browser_unavailable

    return browser_unavailable()


def test_viewer_page_in_chromium_decodes_video_audio_and_the_mouth_moves_with_speech(tmp_path: Path) -> None:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "result.json"
    script = f'ip link set lo up && exec "{sys.executable}" "{Path(__file__).resolve()}" "{out}"'
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S, env=env)
    assert proc.returncode == 0 and out.exists(), \
        f"browser script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    r = json.loads(out.read_text())

    # the page connected and decoded video at a sensible rate
    assert r["connected"], r
    assert r["silence"]["framesDecoded"] >= 10, r
    decoded_fps = r["speech"]["framesDecoded"] / r["speech"]["seconds"]
    presented_fps = r["speech"]["presented"] / r["speech"]["seconds"]
    assert decoded_fps > 10.0, r
    assert presented_fps > 10.0, r
    # audio arrives all the time (20 ms packets) and is loud only while speech is pushed
    assert r["silence"]["audioPackets"] > 0.5 * SILENCE_S / 0.02, r
    assert r["speech"]["audioPackets"] > 0.5 * SPEECH_S / 0.02, r
    assert r["speech"]["audio_rms_samples"] > 100 and r["silence"]["audio_rms_samples"] > 50, r
    assert r["speech"]["audio_rms"] > 0.005, r  # about -46 dBFS: speech, not codec noise
    assert r["speech"]["audio_rms"] > 10 * r["silence"]["audio_rms"], r
    # the mouth moves while the avatar speaks, much more than while it idles
    assert r["speech"]["motion_frames"] > 20 and r["silence"]["motion_frames"] > 10, r
    assert r["speech"]["mouth_motion"] > 0.5, r
    assert r["speech"]["mouth_motion"] > 2.0 * r["silence"]["mouth_motion"], r


# ---------------------------------------------------------------------------------------------- the script


async def _browser_session(out_path: Path) -> dict:
    from avatarcast_bench.browser import ChromiumHost, ChromiumReceiver
    from avatarcast.live.client import IngestClient
    from avatarcast.live.server import ServerConfig, run_server
    from avatarcast.audio.io import float_to_pcm16, load_audio
    from avatarcast.core.types import AUDIO_RATE_HZ

    speech = load_audio(Path(__file__).resolve().parents[2] / "avatarcast" / "assets" / "demo_speech.flac")
    pcm = float_to_pcm16(speech.samples[: int(SPEECH_S * AUDIO_RATE_HZ)])
    handle = await run_server(ServerConfig(host="127.0.0.1", port=0, public=True))
    host = ChromiumHost()
    result: dict = {"connected": False}
    try:
        await host.start()
        rx = ChromiumReceiver(host, f"{handle.base_url}/view/default")
        await rx.connect()
        page = rx.page
        result["connected"] = await page.evaluate("window.avatarcast.connected")

        async def window(seconds: float) -> dict:
            a = await page.evaluate(PAGE_STATS)
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            b = await page.evaluate(PAGE_STATS)
            t1 = time.monotonic()
            await rx.drain()
            motion = [v.motion for v in rx.log.video if t0 <= v.t <= t1]
            level = [10 ** (r.rms_dbfs / 20.0) for r in rx.log.audio if t0 <= r.t <= t1]
            return {
                "seconds": t1 - t0,
                "framesDecoded": b["framesDecoded"] - a["framesDecoded"],
                "presented": b["presented"] - a["presented"],
                "audioPackets": b["audioPackets"] - a["audioPackets"],
                "motion_frames": len(motion),
                "mouth_motion": sum(motion) / len(motion) if motion else 0.0,
                "audio_rms_samples": len(level),
                "audio_rms": sum(level) / len(level) if level else 0.0,
            }

        await asyncio.sleep(0.5)
        result["silence"] = await window(SILENCE_S)
        ingest_url = handle.base_url.replace("http://", "ws://") + "/v1/sessions/default/ingest"
        async with IngestClient(ingest_url, token=handle.admin_token) as client:
            await client.start(sample_rate=AUDIO_RATE_HZ)
            sender = asyncio.create_task(client.send_audio(pcm, realtime=True))
            await client.wait_for("playback.started", timeout=15)
            result["speech"] = await window(SPEECH_S - 0.6)
            await sender
            await client.speech_end()
        await rx.close()
    finally:
        await host.close()
        await handle.close()
    out_path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    t0 = time.monotonic()
    res = asyncio.run(_browser_session(Path(sys.argv[1])))
    print(json.dumps(res), f"({time.monotonic() - t0:.1f} s)")
