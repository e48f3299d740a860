"""Live, at a WebRTC receiver: "nod when you say 'X'" makes the head nod on that word, every time.

The same live input is played several times, each on a fresh server: the instruction on the ingest socket before the
speech, then the speech at real-time pace with its word timings as TTS alignment, either all up front or one
alignment message per half-second audio chunk (``offset_ms``, as TTS services stream them: a word arrives about when
its audio does). A real aiortc receiver decodes the video over WHEP; the head pitch is measured on the decoded frames
by the independent evaluator (dlib's 68 landmarks and ``solvePnP``), never read from the renderer. Each decoded
frame is placed on the server's media clock by matching it to the frames the server emitted, and the word's time on
that clock comes from the emitted audio (where the utterance's first sample plays).
"""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.direction.director import find_phrase
from avatarcast.live.client import IngestClient
from avatarcast.live.outputs.whep import new_peer_connection
from avatarcast.live.server import ServerConfig, run_server
from media_sinks import Recorder, thumb

pytestmark = pytest.mark.slow

SIZE = 256
FPS = 25.0
RATE = 24000
WORD = "differs"
CUT_S = 5.4  # the first 5.4 s of the recording: the word comes at about 4.4 s
RUNS = ["up front", "per chunk", "up front", "per chunk"]


@pytest.fixture(scope="module")
def utterance(speech, transcripts):
    from avatarcast.audio.alignment import align_transcript

    audio = load_audio(speech / "ljspeech" / "LJ001-0001.wav")
    x = audio.samples[: int(CUT_S * audio.rate_hz)]
    words, _ = align_transcript(audio.samples, audio.rate_hz, transcripts["LJ001-0001"])
    words = [w for w in words if w.end_s <= CUT_S]
    span = find_phrase(words, WORD)
    assert span is not None and 3.0 < span[0] < CUT_S - 0.5
    return float_to_pcm16(resample(x, audio.rate_hz, RATE)), words, span[0]


async def _send(c: IngestClient, pcm: bytes, words, mode: str) -> None:
    await c.instruction(f"nod when you say '{WORD}'")
    await c.start(RATE)
    as_ms = lambda w, t0: {"word": w.text, "start_ms": (w.start_s - t0) * 1000, "end_ms": (w.end_s - t0) * 1000}
    if mode == "up front":
        await c.alignment(words=[as_ms(w, 0.0) for w in words])
        await c.send_audio(pcm, realtime=True)
    else:
        step = RATE  # half a second of PCM16
        for pos in range(0, len(pcm), step):
            t0, t1 = pos / (2 * RATE), (pos + step) / (2 * RATE)
            chunk_words = [w for w in words if t0 <= w.start_s < t1]
            if chunk_words:
                await c.alignment(words=[as_ms(w, t0) for w in chunk_words], offset_ms=t0 * 1000)
            await c.send_audio(pcm[pos:pos + step], realtime=True)
    await c.speech_end()
    await c.wait_for("playback.finished", timeout=30)


async def _receive(track, out: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            frame = await asyncio.wait_for(track.recv(), 2.0)
        except (MediaStreamError, asyncio.TimeoutError):
            return
        out.append(frame.to_ndarray(format="rgb24"))


async def _one_run(pcm: bytes, words, mode: str):
    h = await run_server(ServerConfig(port=0, width=SIZE, height=SIZE, fps=FPS, token="admin"))
    pc = new_peer_connection()
    stop = asyncio.Event()
    try:
        s = h.session()
        recorder = Recorder()
        s.scheduler.add_sink(recorder)
        pc.addTransceiver("video", direction="recvonly")
        frames: list[np.ndarray] = []
        tasks = []

        @pc.on("track")
        def on_track(track):
            if track.kind == "video":
                tasks.append(asyncio.create_task(_receive(track, frames, stop)))

        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"{h.base_url}/v1/sessions/default/whep?token={s.viewer_token}",
                                data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
            assert r.status == 201, await r.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
        await asyncio.sleep(1.0)
        async with IngestClient(f"ws://127.0.0.1:{h.port}/v1/sessions/default/ingest", s.ingest_token) as c:
            await _send(c, pcm, words, mode)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stop.set()
        await pc.close()
        await h.close()
    return recorder, frames


def _pitch_around_word(recorder: Recorder, frames: list[np.ndarray], word_s: float):
    """(time from the word's start, pitch in degrees) of the decoded frames from 1.3 s before the word to 1 s
    after, on the server's media clock."""
    from avatarcast_bench.evaluation import FaceTracker
    from avatarcast_bench.face_landmarks68 import head_pose_deg, shared_landmarker

    # where the utterance starts on the media clock: the first emitted audio that is not silence
    start = next(pts + int(np.flatnonzero(a)[0]) for pts, a in recorder.audio if np.any(a))
    word_clock = start / 48000.0 + word_s
    sent_pts = np.array([p for p, _ in recorder.video]) / 90000.0
    sent = np.stack([t for _, t in recorder.video])
    tracker = FaceTracker(shared_landmarker())
    out, guess = [], None
    for rgb in frames:
        t = sent_pts[int(np.argmin(np.abs(sent - thumb(rgb)).mean(axis=(1, 2))))] - word_clock
        if not -1.3 <= t <= 1.0:
            continue
        lm = tracker.update(rgb)
        if lm is None:
            continue
        (_yaw, pitch, _roll), guess = head_pose_deg(lm, (rgb.shape[1], rgb.shape[0]), guess)
        out.append((t, pitch))
    return np.array(out)


def test_nod_on_the_word_in_every_run(utterance):
    pcm, words, word_s = utterance
    results = []
    for mode in RUNS:
        recorder, frames = asyncio.run(asyncio.wait_for(_one_run(pcm, words, mode), 120))
        series = _pitch_around_word(recorder, frames, word_s)
        assert len(series) > 40, f"{mode}: only {len(series)} decoded frames with a face near the word"
        t, pitch = series[:, 0], series[:, 1]
        baseline = float(np.median(pitch[(t >= -1.3) & (t < -0.35)]))
        window = (t >= -0.3) & (t <= 0.6)
        i_peak = int(np.flatnonzero(window)[np.argmax(pitch[window])])
        peak = float(pitch[i_peak] - baseline)
        # the nod shows where the pitch crosses half way to its peak on the way up (the last frame below half
        # before the peak, then the next); that crossing must be within 0.3 s of the word
        below = np.flatnonzero(pitch[:i_peak] - baseline < peak / 2)
        onset = float(t[below[-1] + 1]) if len(below) else float(t[0])
        results.append((mode, peak, onset))
        print(f"{mode}: pitch {peak:+.1f} deg over the second before the word, half way at {onset:+.2f} s")
    for mode, peak, onset in results:
        assert peak >= 2.5, results
        assert -0.3 <= onset <= 0.3, results
