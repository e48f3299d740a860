"""The studio (``/studio``): its API over real HTTP, and the page itself in headless Chromium.

API tests start the live server in-process and talk to it with aiohttp: the admin token guards the page and every
studio endpoint, the page's CSP allows no inline code, uploads are refused by size before they are read and by their
header's pixel count before they are decoded, preparation errors come back in words (not an image, no face, two
faces), the number of avatars is capped, and typed text is synthesized and played with its word timings.

The browser test re-runs this file as a script in a loopback-only network namespace (Chromium does WebRTC on
loopback only there; see ``avatarcast_bench/browser.py``), with Chromium's fake capture device fed a real
speech recording. Through the page only (clicks, typing, file inputs) it uploads a bad file and a portrait from
``../shared/data/portraits``, creates a session with the portrait, and measures on the preview's decoded frames
(drawn into a canvas at every ``requestVideoFrameCallback``) and its received audio (Web Audio analyser):

- typing a sentence (spoken with Ctrl+Enter) makes the mouth move and the audio loud, against a stretch of silence
  before;
- interrupting (Esc) makes both stop;
- the "Tilt head" instruction button tilts the head (the face mesh fitted to the decoded frames, as in avatar
  preparation: the roll to the left held for a second, against the speaking head's median roll) far more than while
  the same sentence is spoken without it;
- the microphone (the fake device playing the recording, through an audio context at 44.1 kHz that the page
  resamples to 48 kHz) makes the mouth move;
- the test-tone latency measurement gives mic-to-viewer figures.

``python tests/live/test_studio.py --bench N [--screenshots DIR]`` runs the same flow and prints the mic-to-viewer
latency of N tone bursts with its conditions (and saves screenshots of the page).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
PORTRAIT = DATA / "portraits" / "obama.jpg"
TWO_FACES = DATA / "portraits" / "two_people.jpg"
SPEECH_WAV = DATA / "speech" / "ljspeech" / "LJ001-0001.wav"
SENTENCE = ("The studio turns typed text into speech, and the avatar says it with its lips in time, "
            "while the streamer watches the preview and directs the performance.")
SCRIPT_TIMEOUT_S = 420


def _need_data() -> None:
    for path in (PORTRAIT, TWO_FACES, SPEECH_WAV):
        if not path.exists():
            pytest.skip(f"test data missing: {path}")


# ---------------------------------------------------------------------------------------------- API


@pytest.fixture
async def studio_server():
    from avatarcast.live.server import ServerConfig, run_server

    handle = await run_server(ServerConfig(host="127.0.0.1", port=0, default_session=False,
                                           render_processes=False, max_sessions=2))
    try:
        yield handle
    finally:
        await handle.close()


async def _wait_prepared(client, base: str, headers: dict, avatar_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with client.get(f"{base}/studio/api/avatars", headers=headers) as r:
            avatars = {a["id"]: a for a in (await r.json())["avatars"]}
        entry = avatars[avatar_id]
        if entry["status"] in ("ready", "failed"):
            return entry
        await asyncio.sleep(0.1)
    raise AssertionError(f"avatar {avatar_id} was not prepared within {timeout_s} s")


async def test_studio_page_and_api_need_the_admin_token_and_the_page_runs_no_inline_code(studio_server) -> None:
    import aiohttp

    base = studio_server.base_url
    async with aiohttp.ClientSession() as c:
        async with c.get(f"{base}/studio") as r:
            assert r.status == 401
        async with c.get(f"{base}/studio?token=wrong") as r:
            assert r.status == 403
        for method, path in (("GET", "/studio/api/avatars"), ("POST", "/studio/api/avatars"),
                             ("POST", "/studio/api/sessions"), ("GET", "/studio/api/voices"),
                             ("POST", "/studio/api/sessions/x/say"), ("POST", "/studio/api/sessions/x/instruction")):
            async with c.request(method, f"{base}{path}", headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 403, (method, path)
        async with c.get(f"{base}/studio?token={studio_server.admin_token}") as r:
            assert r.status == 200
            html = await r.text()
            csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert "<script>" not in html and "<style>" not in html  # everything comes from served files
        for src in ("/static/studio/studio.js", "/static/studio/studio.css", "/static/studio/mic-worklet.js"):
            assert src in html or src.endswith("worklet.js")
            async with c.get(f"{base}{src}") as r:
                assert r.status == 200, src
                assert ("javascript" in r.content_type) or ("css" in r.content_type), r.content_type


async def test_uploads_are_bounded_before_decoding_and_errors_are_told_in_words(studio_server) -> None:
    import aiohttp
    from PIL import Image

    from avatarcast.live import studio

    base, h = studio_server.base_url, {"Authorization": f"Bearer {studio_server.admin_token}"}
    async with aiohttp.ClientSession() as c:
        # too many bytes: refused from the declared length, nothing read
        big = b"\0" * (studio.MAX_PORTRAIT_BYTES + 1)
        async with c.post(f"{base}/studio/api/avatars?name=big.jpg", data=big, headers=h) as r:
            assert r.status == 413
            assert "at most 20 MB" in (await r.json())["error"]["message"]
        # without a declared length (chunked): counted while reading, refused past the limit

        async def chunks():
            for _ in range(studio.MAX_PORTRAIT_BYTES // (1 << 20) + 2):
                yield b"\0" * (1 << 20)

        try:
            async with c.post(f"{base}/studio/api/avatars?name=big.jpg", data=chunks(), headers=h) as r:
                assert r.status == 413
        except aiohttp.ClientError:
            pass  # the server answered and closed while the client was still sending: refused either way
        async with c.get(f"{base}/studio/api/avatars", headers=h) as r:
            assert [a["id"] for a in (await r.json())["avatars"]] == ["default"]
        # a small file whose header declares a huge image: refused from the header, never decoded
        buf = io.BytesIO()
        Image.new("L", (1, 1)).save(buf, "PNG")
        png = bytearray(buf.getvalue())
        png[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # IHDR width and height
        png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
        async with c.post(f"{base}/studio/api/avatars?name=bomb.png", data=bytes(png), headers=h) as r:
            bomb = await r.json()
        entry = await _wait_prepared(c, base, h, bomb["id"])
        assert entry["status"] == "failed" and "megapixels" in entry["error"], entry
        # not an image; no face; two faces; bad parameters
        async with c.post(f"{base}/studio/api/avatars?name=notes.jpg", data=b"these are my notes", headers=h) as r:
            notes = await r.json()
        entry = await _wait_prepared(c, base, h, notes["id"])
        assert entry["status"] == "failed" and "cannot read notes.jpg as an image" in entry["error"], entry
        buf = io.BytesIO()
        Image.new("RGB", (400, 400), (120, 140, 160)).save(buf, "PNG")
        async with c.post(f"{base}/studio/api/avatars?name=wall.png", data=buf.getvalue(), headers=h) as r:
            wall = await r.json()
        entry = await _wait_prepared(c, base, h, wall["id"])
        assert entry["status"] == "failed" and "no face found in wall.png" in entry["error"], entry
        async with c.post(f"{base}/studio/api/avatars?name=two.jpg", data=TWO_FACES.read_bytes(), headers=h) as r:
            two = await r.json()
        entry = await _wait_prepared(c, base, h, two["id"])
        assert entry["status"] == "failed" and "2 faces found" in entry["error"], entry
        assert entry["preview"], entry  # the faces, numbered, to choose from
        async with c.post(f"{base}/studio/api/avatars?name=two.jpg&face=1", data=TWO_FACES.read_bytes(),
                          headers=h) as r:
            two1 = await r.json()
        entry = await _wait_prepared(c, base, h, two1["id"])
        assert entry["status"] == "ready" and entry["preview"] and entry["frame"], entry
        async with c.get(f"{base}{entry['frame']}", headers=h) as r:
            assert r.status == 200 and Image.open(io.BytesIO(await r.read())).size == (512, 512)
        async with c.post(f"{base}/studio/api/avatars?name=cut.jpg", headers=h,
                          data=(DATA / "portraits" / "obama_partial_face.jpg").read_bytes()) as r:
            cut = await r.json()
        entry_cut = await _wait_prepared(c, base, h, cut["id"])
        assert entry_cut["status"] == "ready" and "cut by the image edge" in entry_cut["details"]["warning"]
        async with c.post(f"{base}/studio/api/avatars?kind=gif", data=b"x", headers=h) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "kind"
        async with c.post(f"{base}/studio/api/avatars?face=-1", data=b"x", headers=h) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "face"
        async with c.post(f"{base}/studio/api/avatars", data=b"", headers=h) as r:
            assert r.status == 400
        # the preview shows the detected face; a session runs on the prepared avatar
        async with c.get(f"{base}{entry['preview']}", headers=h) as r:
            assert r.status == 200 and r.content_type == "image/png"
            preview = Image.open(io.BytesIO(await r.read()))
            assert max(preview.size) <= studio.PREVIEW_MAX_SIDE_PX
        async with c.post(f"{base}/studio/api/sessions", json={"avatar": notes["id"]}, headers=h) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "avatar"
        async with c.post(f"{base}/studio/api/sessions", json={"avatar": two1["id"], "size": "256x256"},
                          headers=h) as r:
            assert r.status == 201, await r.text()
            info = await r.json()
        assert info["size"] == "256x256" and info["viewer_token"] and info["urls"]["view"].endswith(
            f"/view/{info['id']}?token={info['viewer_token']}")


async def test_a_short_video_is_refused_in_words_with_its_first_frame_shown(studio_server) -> None:
    import aiohttp

    clips = sorted((DATA / "video" / "grid").glob("*.mpg"))
    if not clips:
        pytest.skip("no GRID clips in the test data")
    base, h = studio_server.base_url, {"Authorization": f"Bearer {studio_server.admin_token}"}
    async with aiohttp.ClientSession() as c:
        async with c.post(f"{base}/studio/api/avatars?kind=video&name={clips[0].name}", data=clips[0].read_bytes(),
                          headers=h) as r:
            assert r.status == 202
            entry = await r.json()
        entry = await _wait_prepared(c, base, h, entry["id"], timeout_s=120)
        # 3 s of footage: too little for a video avatar, and the message says how much is needed
        assert entry["status"] == "failed" and "too little usable footage" in entry["error"], entry
        assert clips[0].name in entry["error"] and entry["details"]["faces"] == 1 and entry["preview"], entry
        async with c.get(f"{base}{entry['preview']}", headers=h) as r:
            assert r.status == 200 and r.content_type == "image/png"
        async with c.post(f"{base}/studio/api/avatars?kind=video&name=..", data=b"not a video", headers=h) as r:
            dots = await r.json()
        dots = await _wait_prepared(c, base, h, dots["id"])
        assert dots["status"] == "failed" and dots["name"] == "upload", dots  # the name cannot leave its folder
        async with c.post(f"{base}/studio/api/avatars?kind=video&name=x.mp4", data=b"not a video", headers=h) as r:
            bad = await r.json()
        bad = await _wait_prepared(c, base, h, bad["id"])
        assert bad["status"] == "failed" and "cannot read x.mp4 as a video" in bad["error"], bad


async def test_the_number_of_kept_avatars_is_capped_and_failed_ones_make_room(studio_server, monkeypatch) -> None:
    import aiohttp

    from avatarcast.live import studio

    monkeypatch.setattr(studio, "MAX_AVATARS", 2)
    base, h = studio_server.base_url, {"Authorization": f"Bearer {studio_server.admin_token}"}
    portrait = PORTRAIT.read_bytes()
    async with aiohttp.ClientSession() as c:
        ids = []
        for i in range(2):
            async with c.post(f"{base}/studio/api/avatars?name=p{i}.jpg", data=portrait, headers=h) as r:
                assert r.status == 202
                ids.append((await r.json())["id"])
            assert (await _wait_prepared(c, base, h, ids[-1]))["status"] == "ready"
        async with c.post(f"{base}/studio/api/avatars?name=p3.jpg", data=portrait, headers=h) as r:
            assert r.status == 409 and "at most 2 avatars" in (await r.json())["error"]["message"]
        async with c.delete(f"{base}/studio/api/avatars/{ids[0]}", headers=h) as r:
            assert r.status == 200
        async with c.post(f"{base}/studio/api/avatars?name=bad.jpg", data=b"nope", headers=h) as r:
            bad = (await r.json())["id"]
        assert (await _wait_prepared(c, base, h, bad))["status"] == "failed"
        async with c.post(f"{base}/studio/api/avatars?name=p4.jpg", data=portrait, headers=h) as r:
            assert r.status == 202  # the failed upload made room


async def test_typed_text_is_spoken_with_word_timings_and_instructions_are_reported(studio_server) -> None:
    import aiohttp

    from avatarcast.live.tts import available_voices

    if not available_voices():
        pytest.skip("no local TTS engine (espeak-ng) installed")
    base, h = studio_server.base_url, {"Authorization": f"Bearer {studio_server.admin_token}"}
    async with aiohttp.ClientSession() as c:
        async with c.post(f"{base}/studio/api/sessions", json={"size": "256x256"}, headers=h) as r:
            sid = (await r.json())["id"]
        async with c.post(f"{base}/studio/api/sessions/{sid}/say", json={"text": "Hello from the studio, friends."},
                          headers=h) as r:
            assert r.status == 200, await r.text()
            said = await r.json()
        assert said["alignment"] and [w["word"].lower() for w in said["words"]] == ["hello", "from", "the",
                                                                                  "studio", "friends"]
        starts = [w["start_ms"] for w in said["words"]]
        assert starts == sorted(starts) and said["words"][-1]["end_ms"] <= said["duration_ms"] + 1
        assert 1000 < said["duration_ms"] < 5000
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            async with c.get(f"{base}/v1/sessions/{sid}/stats", headers=h) as r:
                stats = await r.json()
            if stats["speech_played_ms"] >= said["duration_ms"] - 50:
                break
            await asyncio.sleep(0.2)
        assert stats["utterances"] == 1 and stats["speech_played_ms"] >= said["duration_ms"] - 50, stats
        for body, field in (({"text": ""}, "text"), ({"text": "x" * 1001}, "text"), ({"text": 5}, "text"),
                            ({"text": "hi", "voice": "espeak-ng:klingon"}, "voice"), ({"text": "hi", "x": 1}, "x"),
                            ({"text": "hi", "voice": 3}, "voice")):
            async with c.post(f"{base}/studio/api/sessions/{sid}/say", json=body, headers=h) as r:
                assert r.status == 400 and (await r.json())["error"]["field"] == field, body
        async with c.post(f"{base}/studio/api/sessions/{sid}/instruction",
                          json={"text": "smile and nod, look surprised when you say 'really', flibbertigibbet"},
                          headers=h) as r:
            direction = await r.json()
        assert "happy (throughout)" in direction["cues"] and "surprised (on 'really')" in direction["cues"]
        assert any("flibbertigibbet" in w for w in direction["warnings"]), direction
        async with c.post(f"{base}/studio/api/sessions/nope/say", json={"text": "hi"}, headers=h) as r:
            assert r.status == 404


# ---------------------------------------------------------------------------------------------- browser


def _unavailable() -> str | None:
    """Why this machine cannot run the browser test (no Chromium, Playwright or network namespace), or None."""
    from avatarcast_bench.browser import browser_unavailable

    return browser_unavailable()


def run_browser_script(out: Path, *extra: str, timeout_s: float = SCRIPT_TIMEOUT_S) -> dict:
    script = f'ip link set lo up && exec "{sys.executable}" "{Path(__file__).resolve()}" "{out}" ' + \
        " ".join(f'"{a}"' for a in extra)
    env = dict(os.environ, OMP_NUM_THREADS="1", _STUDIO_IN_NS="1")
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=timeout_s,
                          env=env)
    assert proc.returncode == 0 and out.exists(), \
        f"browser script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.browser
@pytest.mark.slow
def test_studio_in_chromium_upload_type_interrupt_direct_and_microphone(tmp_path: Path) -> None:
    _need_data()
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    from avatarcast.live.tts import available_voices

    if not available_voices():
        pytest.skip("no local TTS engine (espeak-ng) installed")
    r = run_browser_script(tmp_path / "result.json")

    # a bad upload shows its error in the page, in words
    assert "cannot read notes.jpg as an image" in r["bad_upload_text"], r["bad_upload_text"]
    # the portrait was prepared and its detected face shown; the session's preview plays
    assert r["portrait_ready"] and r["portrait_preview_loaded"], r
    assert r["frames_decoded"] > 20, r
    sil, say, after = r["silence"], r["typed"], r["after_interrupt"]
    assert sil["frames"] > 20 and say["frames"] > 20 and after["frames"] > 10, r
    # typing: the avatar speaks (audio) and its mouth moves, much more than in silence
    assert say["audio_rms"] > 0.005 and say["audio_rms"] > 10 * sil["audio_rms"], r
    assert say["mouth_motion"] > 0.5 and say["mouth_motion"] > 2.0 * sil["mouth_motion"], r
    # interrupt: silence again, the mouth back to idle
    assert r["interrupt_text"] == "interrupted", r
    assert after["audio_rms"] < 0.2 * say["audio_rms"], r
    assert after["mouth_motion"] < 0.5 * say["mouth_motion"], r
    # the instruction button: the head tilts (roll, measured with the face mesh on the decoded frames) far more
    # than while the same sentence is spoken without it
    plain, tilted = r["plain_head"], r["tilt_head"]
    assert plain["pose_frames"] > 20 and tilted["pose_frames"] > 20, r
    # The speaking head has a pose of its own (another roll than in silence), so the tilt is measured from the plain
    # sentence's median roll: to the left, held for a second
    speaking_roll = float(np.median(plain["roll_deg"]))
    tilt_left = held_tilt_left(tilted["roll_deg"], speaking_roll, tilted["poses_per_s"])
    plain_left = held_tilt_left(plain["roll_deg"], speaking_roll, plain["poses_per_s"])
    assert tilt_left > 3.0 and tilt_left > plain_left + 2.5, (tilt_left, plain_left, r)
    # the microphone (fake capture device playing real speech): utterances found, the mouth moves
    mic = r["mic"]
    assert mic["state"] == "44100 Hz -> 48000 Hz", r
    assert mic["onsets"] >= 1 and mic["mouth_motion"] > 2.0 * sil["mouth_motion"], r
    assert mic["audio_rms"] > 10 * sil["audio_rms"], r
    # the test tone came back through the whole path
    assert len(r["latency_ms"]) >= 3, r
    assert all(0 < v < 2000 for v in r["latency_ms"]), r


# ---------------------------------------------------------------------------------------------- the script

FRAME_PROBE = """
([side, levelMs, [cx0, cy0, cx1, cy1]]) => {
  const video = document.getElementById("preview");
  const canvas = document.createElement("canvas");
  canvas.width = side; canvas.height = side;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const probe = window.probe = { frames: [], level: [] };
  const t0 = performance.timeOrigin;
  setInterval(() => probe.level.push([t0 + performance.now(), window.studio.viewerLevel]), levelMs);
  const step = (now, meta) => {
    if (probe.stopped) return;
    if (video.videoWidth) {
      const w = video.videoWidth, h = video.videoHeight;
      ctx.drawImage(video, cx0 * w, cy0 * h, (cx1 - cx0) * w, (cy1 - cy0) * h, 0, 0, side, side);
      const px = ctx.getImageData(0, 0, side, side).data;
      let bin = "";
      for (let i = 0; i < px.length; i += 4)
        bin += String.fromCharCode(Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]));
      probe.frames.push([t0 + meta.presentationTime, btoa(bin)]);
    }
    video.requestVideoFrameCallback(step);
  };
  video.requestVideoFrameCallback(step);
}
"""
DRAIN = "() => { const p = window.probe; return [p.frames.splice(0), p.level.splice(0)]; }"
GRAB = """
() => {
  const video = document.getElementById("preview");
  const c = document.createElement("canvas");
  c.width = video.videoWidth; c.height = video.videoHeight;
  c.getContext("2d").drawImage(video, 0, 0);
  return c.toDataURL("image/png");
}
"""
SIDE = 128
JITTER_STATS = """
async () => {
  const out = { audio: [0, 0], video: [0, 0] };
  for (const pc of window.__pcs || []) {
    if (pc.connectionState !== "connected") continue;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && out[s.kind]) {
        out[s.kind][0] += s.jitterBufferDelay || 0;
        out[s.kind][1] += s.jitterBufferEmittedCount || 0;
      }
    });
  }
  return out;
}
"""


@dataclass
class FaceRegions:
    """Where to look in the preview: the face's square crop of the frame (fractions), and the mouth in that crop
    (fractions: x0, x1, y0, y1)."""

    crop: tuple[float, float, float, float]
    mouth: tuple[float, float, float, float]


def find_face(png_data_url: str) -> FaceRegions:
    """The face in a decoded preview frame (the detector the avatar was prepared with)."""
    import cv2

    from avatarcast.face import mesh as face_mesh

    raw = base64.b64decode(png_data_url.split(",", 1)[1])
    frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = frame.shape[:2]
    faces = face_mesh.detect_faces(frame)
    assert faces, "no face in the preview's frame"
    face = max(faces, key=lambda f: f.area)
    x0, y0, x1, y1 = face.box
    side = 1.5 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    crop = (max(0.0, (cx - side / 2) / w), max(0.0, (cy - side / 2) / h),
            min(1.0, (cx + side / 2) / w), min(1.0, (cy + side / 2) / h))
    kx = (face.keypoints[:, 0] / w - crop[0]) / (crop[2] - crop[0])
    ky = (face.keypoints[:, 1] / h - crop[1]) / (crop[3] - crop[1])
    mouth = (float(kx[3]) - 0.2, float(kx[3]) + 0.2, float(ky[3]) - 0.1, float(ky[3]) + 0.14)
    return FaceRegions(crop, tuple(float(np.clip(v, 0, 1)) for v in mouth))


class Recorder:
    """Frames (luma, SIDE x SIDE) and audio levels drained from the page, on this process's clock."""

    def __init__(self, page, regions: FaceRegions) -> None:
        self.page = page
        self.regions = regions
        self.frames: list[tuple[float, np.ndarray]] = []
        self.levels: list[tuple[float, float]] = []
        self.offset = time.time() - time.monotonic()

    async def drain(self) -> None:
        frames, levels = await self.page.evaluate(DRAIN)
        for ms, b64 in frames:
            luma = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(SIDE, SIDE).astype(np.float32)
            self.frames.append((ms / 1000.0 - self.offset, luma))
        self.levels += [(ms / 1000.0 - self.offset, v) for ms, v in levels]

    async def window(self, seconds: float) -> tuple[float, float]:
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            await asyncio.sleep(min(0.25, end - time.monotonic()))
            await self.drain()
        return t0, time.monotonic()

    def frames_between(self, t0: float, t1: float) -> list[np.ndarray]:
        return [f for t, f in self.frames if t0 <= t <= t1]

    def measure(self, t0: float, t1: float) -> dict:
        x0, x1, y0, y1 = (int(v * SIDE) for v in self.regions.mouth)
        frames = [f for t, f in self.frames if t0 <= t <= t1]
        motion = [float(np.mean(np.abs(b[y0:y1, x0:x1] - a[y0:y1, x0:x1]))) for a, b in zip(frames, frames[1:])]
        levels = [v for t, v in self.levels if t0 <= t <= t1]
        out = {"seconds": round(t1 - t0, 2), "frames": len(frames),
               "mouth_motion": float(np.mean(motion)) if motion else 0.0,
               "audio_rms": float(np.mean(levels)) if levels else 0.0}
        return out


def poses_of(frames: list[np.ndarray]) -> np.ndarray:
    """Yaw, pitch and roll of every other frame where the face mesh fits, ``(n, 3)``."""
    return np.array([p for p in (head_pose_of(f) for f in frames[::2]) if p is not None]).reshape(-1, 3)


def pose_figures(reference: np.ndarray, frames: list[np.ndarray], seconds: float) -> dict:
    """The head's yaw, pitch and roll over every other frame, against ``reference`` (the median pose over a stretch of
    silence, or empty where none was found): the 90th percentile of each angle, and the roll itself over time
    (signed; negative is a tilt to the avatar's left, as in the storyboard). Run after the session: fitting the mesh
    takes the CPU the server (in this process) needs to keep its clock."""
    poses = poses_of(frames)
    out: dict = {"pose_frames": len(poses), "poses_per_s": round(len(poses) / max(seconds, 1e-3), 2)}
    if len(poses) and len(reference):
        dev = poses - reference
        for i, name in enumerate(("yaw", "pitch", "roll")):
            out[f"{name}_p90_deg"] = round(float(np.percentile(np.abs(dev[:, i]), 90)), 2)
        out["roll_deg"] = [round(float(v), 2) for v in dev[:, 2]]
    return out


def held_tilt_left(roll: list[float], baseline: float, per_s: float) -> float:
    """How far the head is tilted to its left of ``baseline`` for a whole second: the 20th percentile of the tilt within
    the second where it is largest. A deliberate tilt is held; the head's own motion while speaking changes pose every
    second or so, so a held angle tells the two apart where a percentile over the window can mix them up."""
    left = baseline - np.asarray(roll)
    span = max(1, round(per_s))
    return float(max(np.percentile(left[k:k + span], 20) for k in range(max(1, len(left) - span + 1))))


def head_pose_of(crop: np.ndarray) -> tuple[float, float, float] | None:
    """Yaw, pitch and roll (degrees) of the face in a decoded face crop: the face mesh fitted to the frame, as in
    avatar preparation (roll from the line between the eyes)."""
    import cv2

    from avatarcast.face import mesh as face_mesh
    from avatarcast.face.avatar import head_pose

    big = cv2.resize(crop.astype(np.uint8), (2 * SIDE, 2 * SIDE), interpolation=cv2.INTER_CUBIC)
    rgb = np.ascontiguousarray(np.repeat(big[:, :, None], 3, axis=2))
    faces = face_mesh.detect_faces(rgb)
    if not faces:
        return None
    return head_pose(face_mesh.face_landmarks(rgb, max(faces, key=lambda f: f.area)))


async def _poll(page, expression: str, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await page.evaluate(expression)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")


async def _wait_idle_plain(page, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = await page.evaluate("() => window.studio.stats")
        if st and st["buffered_ms"] == 0:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)


async def _wait_idle(page, rec: Recorder, timeout_s: float = 30.0) -> None:
    """Until the session has played everything it was given (and a little more)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = await page.evaluate("() => window.studio.stats")
        if st and st["buffered_ms"] == 0:
            break
        await asyncio.sleep(0.2)
    await rec.window(0.8)


async def _studio_session(out_path: Path, bench_bursts: int = 0, screenshots: Path | None = None) -> dict:
    import aiohttp
    from playwright.async_api import async_playwright

    from avatarcast_bench.browser import CAPTURE_PEER_CONNECTIONS, CHROMIUM_ARGS, CHROMIUM_PATH
    from avatarcast.live.load import cpu_model
    from avatarcast.live.server import ServerConfig, run_server

    handle = await run_server(ServerConfig(host="127.0.0.1", port=0, default_session=False))
    result: dict = {}
    bad = out_path.parent / "notes.jpg"
    bad.write_text("these are my notes, not a photo")
    args = [*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={SPEECH_WAV}"]
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=args)
            context = await browser.new_context(viewport={"width": 1280, "height": 1000})
            page = await context.new_page()
            await page.add_init_script(CAPTURE_PEER_CONNECTIONS)
            page.on("console", lambda m: m.type == "error" and print("page:", m.text, file=sys.stderr))
            await page.goto(f"{handle.base_url}/studio?token={handle.admin_token}")
            await _poll(page, "() => document.getElementById('status').textContent === 'ready'", 20, "the page start")

            # a bad upload shows the error
            await page.set_input_files("#upload-file", str(bad))
            await page.click("#upload-button")
            result["bad_upload_text"] = await _poll(
                page, "() => { const e = document.querySelector('#avatar-list li.failed .err'); "
                      "return e && e.textContent; }", 30, "the bad upload's error")
            # a real portrait: prepared, its detected face shown, picked for the new session
            await page.set_input_files("#upload-file", str(PORTRAIT))
            await page.click("#upload-button")
            result["portrait_ready"] = bool(await _poll(
                page, "() => [...document.querySelectorAll('#avatar-list li.ready strong')]"
                      ".some((e) => e.textContent === 'obama.jpg')", 60, "the portrait's preparation"))
            result["portrait_preview_loaded"] = bool(await _poll(
                page, "() => [...document.querySelectorAll('#avatar-list li.ready img')]"
                      ".some((i) => i.complete && i.naturalWidth > 0)", 10, "the detected face's picture"))
            assert await page.evaluate("() => document.getElementById('session-avatar').selectedOptions[0]"
                                       ".textContent") == "obama.jpg"
            await page.click("#session-create")
            await _poll(page, "() => window.studio.connected && window.studio.framesDecoded > 10", 60,
                        "the preview's first frames")
            await asyncio.sleep(1.0)
            regions = find_face(await page.evaluate(GRAB))
            result["face_regions"] = asdict(regions)
            if bench_bursts:  # the latency on a fresh preview too, before anything else was played
                before = await page.evaluate(JITTER_STATS)
                result["latency_fresh_ms"] = await page.evaluate(f"() => window.studio.measureLatency({bench_bursts})")
                after = await page.evaluate(JITTER_STATS)
                result["jitter_buffer_fresh_ms"] = {
                    kind: round(1000 * (after[kind][0] - before[kind][0]) / max(1, after[kind][1] - before[kind][1]),
                                1) for kind in ("audio", "video")}
                await _wait_idle_plain(page)
            await page.evaluate(FRAME_PROBE, [SIDE, 10, list(regions.crop)])
            rec = Recorder(page, regions)
            result["trace"] = []
            pose_windows: dict[str, tuple[list[np.ndarray], float]] = {}

            async def trace(step: str) -> None:
                """The session's playout lateness so far, after each step (what disturbed the stream, and when)."""
                async with aiohttp.ClientSession() as http:
                    sid = await page.evaluate("() => window.studio.selected")
                    async with http.get(f"{handle.base_url}/v1/sessions/{sid}/stats",
                                        headers={"Authorization": f"Bearer {handle.admin_token}"}) as r:
                        st = await r.json()
                result["trace"].append([step, st["clock_slips"], st["playout_ticks"]["max_late_ms"],
                                        st["underrun_ms"]])
            await rec.window(1.0)
            t0, t1 = await rec.window(2.5)
            reference = rec.frames_between(t0, t1)
            result["silence"] = rec.measure(t0, t1)
            await trace('silence')
            result["frames_decoded"] = await page.evaluate("() => window.studio.framesDecoded")

            # type a sentence: the mouth moves and it is heard; interrupt stops it
            await page.fill("#say-text", SENTENCE)
            await page.press("#say-text", "Control+Enter")  # the keyboard alone: Ctrl+Enter speaks
            await _poll(page, "() => window.studio.says >= 1", 30, "the speech")
            await _poll(page, "() => window.studio.stats && window.studio.stats.speech_played_ms > 300", 20,
                        "playback")
            t0, t1 = await rec.window(3.0)
            result["typed"] = rec.measure(t0, t1)
            await trace('typed')
            if screenshots is not None:
                await page.screenshot(path=str(screenshots / "studio.png"), full_page=True)
            await page.keyboard.press("Escape")  # Esc interrupts
            result["interrupt_text"] = await _poll(
                page, "() => document.getElementById('instruction-result').textContent", 5, "the interrupt")
            await rec.window(0.6)
            t0, t1 = await rec.window(1.5)
            result["after_interrupt"] = rec.measure(t0, t1)
            await trace('after_interrupt')

            # the same sentence without and with the "Shake head" button: the head's sideways movement
            short = "Here is a short sentence to compare the head."
            heads = [("plain_head", None), ("tilt_head", "Tilt head")] + \
                ([("shake_head", "Shake head"), ("nod_head", "Nod")] if bench_bursts else [])
            for key, button in heads:
                await _wait_idle(page, rec)
                if button:
                    k = await page.evaluate("() => window.studio.instructions")
                    await page.click(f"#direct-buttons button:text-is('{button}')")
                    await _poll(page, f"() => window.studio.instructions > {k}", 5, "the instruction")
                await page.fill("#say-text", short)
                n = await page.evaluate("() => window.studio.says")
                await page.click("#say-button")
                await _poll(page, f"() => window.studio.says > {n}", 30, "the speech")
                t0, t1 = await rec.window(3.0)
                result[key] = rec.measure(t0, t1)
                pose_windows[key] = (rec.frames_between(t0, t1), t1 - t0)
                await trace(key)
            await _wait_idle(page, rec)
            await page.click("#direct-buttons button:text-is('Neutral, calm')")

            # the microphone: the fake capture device plays real speech, into an audio context at 44.1 kHz (a rate
            # the protocol does not take: the page resamples to 48 kHz, as on many sound cards)
            await page.evaluate("() => { window.studio.micRate = 44100; }")
            await page.click("#mic-button")
            await _poll(page, "() => window.studio.vad === 'speaking'", 10, "voice activity on the microphone")
            await rec.window(0.5)
            t0, t1 = await rec.window(4.0)
            result["mic"] = rec.measure(t0, t1)
            result["mic"]["onsets"] = await page.evaluate("() => window.studio.micOnsets.length")
            result["mic"]["state"] = await page.evaluate("() => document.getElementById('mic-state').dataset.rate")
            await trace('mic')
            if screenshots is not None:
                await page.screenshot(path=str(screenshots / "studio_mic.png"), full_page=False)
            await page.click("#mic-button")
            await page.evaluate("() => { window.studio.micRate = 0; }")
            await _wait_idle(page, rec)

            # mic-to-viewer latency with the test tone
            bursts = bench_bursts or 4
            await page.evaluate("() => { window.probe.stopped = true; }")  # the probe's own work off the page
            before = await page.evaluate(JITTER_STATS)
            result["latency_ms"] = await page.evaluate(f"() => window.studio.measureLatency({bursts})")
            after = await page.evaluate(JITTER_STATS)
            result["jitter_buffer_ms"] = {
                kind: round(1000 * (after[kind][0] - before[kind][0]) / max(1, after[kind][1] - before[kind][1]), 1)
                for kind in ("audio", "video")}
            result["latency_clock_lag_ms"] = await page.evaluate("() => window.studio.latencyLags")
            result["onsets"] = await page.evaluate("() => [window.studio.micOnsets, window.studio.playbackStarted, "
                                                   "window.studio.viewerOnsets]")
            result["latency_text"] = await page.evaluate(
                "() => document.getElementById('latency-result').textContent")
            result["stats"] = await page.evaluate("() => window.studio.stats")
            result["start_cushion_ms"] = result["stats"]["start_cushion_ms"]
            result["conditions"] = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_1min": os.getloadavg()[0],
                                    "session": "512x512 at 25 fps, parametric generator, render process",
                                    "browser": "headless Debian Chromium, loopback"}
            await browser.close()
    finally:
        await handle.close()
    silent = poses_of(reference)  # the reference pose, fitted once for every window
    result["silence"]["pose_frames"] = len(silent)
    reference_pose = np.median(silent, axis=0) if len(silent) else silent
    for key, (frames, seconds) in pose_windows.items():
        result[key].update(pose_figures(reference_pose, frames, seconds))
    out_path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="the studio's browser flow (run inside a loopback-only namespace)")
    p.add_argument("out", type=Path, help="where to write the findings (JSON)")
    p.add_argument("--bench", type=int, default=0, help="tone bursts for the mic-to-viewer latency")
    p.add_argument("--screenshots", type=Path, default=None, help="folder for screenshots of the page")
    a = p.parse_args()
    if os.environ.get("AVATARCAST_LOOPBACK_NETNS") != "1" and os.environ.get("_STUDIO_IN_NS") != "1":
        # started by hand: re-run inside a loopback-only network namespace
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
        sys.exit(subprocess.call(cmd, env=dict(os.environ, _STUDIO_IN_NS="1", OMP_NUM_THREADS="1")))
    t_start = time.monotonic()
    res = asyncio.run(_studio_session(a.out, a.bench, a.screenshots))
    lat = sorted(res["latency_ms"])
    summary = {k: res[k] for k in ("silence", "typed", "after_interrupt", "plain_head", "tilt_head", "shake_head",
                                   "nod_head", "mic") if k in res}
    print(json.dumps(summary, indent=1))
    if lat:
        print(f"mic-to-viewer latency at the end of the flow (test tone, {len(lat)} bursts): p50 {np.percentile(lat, 50):.0f} ms, "
              f"p95 {np.percentile(lat, 95):.0f} ms, min {lat[0]:.0f}, max {lat[-1]:.0f}")
    if res.get("latency_fresh_ms"):
        fresh = sorted(res["latency_fresh_ms"])
        print(f"mic-to-viewer latency on a fresh preview ({len(fresh)} bursts, before the rest of the flow): p50 "
              f"{np.percentile(fresh, 50):.0f} ms, p95 {np.percentile(fresh, 95):.0f} ms, min {fresh[0]:.0f}, max "
              f"{fresh[-1]:.0f}; jitter buffers (ms): {res['jitter_buffer_fresh_ms']}")
    mic_on, started, heard = res["onsets"]
    to_server, to_viewer = [], []
    for t in mic_on[-len(lat):] if lat else []:  # the tone bursts are the last onsets
        s_ = [x for x in started if x > t][:1]
        v_ = [x for x in heard if x > t][:1]
        if s_ and v_ and v_[0] > s_[0]:
            to_server.append(s_[0] - t)
            to_viewer.append(v_[0] - s_[0])
    if to_server:
        print(f"  of which: onset -> the server starts playing it (playback.started back at the page) p50 "
              f"{np.percentile(to_server, 50):.0f} ms; -> heard in the preview p50 {np.percentile(to_viewer, 50):.0f} ms")
    print("playout after each step [step, clock slips, max late tick ms, underrun ms]:", res.get("trace"))
    print(f"session start cushion at the end: {res['start_cushion_ms']} ms; the preview's jitter buffers during "
          f"the bursts (ms): {res['jitter_buffer_ms']}")
    print("conditions:", json.dumps(res["conditions"]), f"({time.monotonic() - t_start:.0f} s)")
