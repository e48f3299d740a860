"""WebRTC out, measured at a real aiortc receiver on loopback: both tracks arrive, frames keep flowing in silence,
and audio and video stay in sync.

Sync is measured on the content, not on the sender's bookkeeping: the frames and audio the scheduler emitted are
recorded on the server, then each decoded video frame is matched to the emitted frame it shows and the decoded
audio is cross-correlated with the emitted audio. Both give the receiver's offset to the media clock; their
difference is the A/V offset a player would see.
"""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.live.client import IngestClient
from avatarcast.live.outputs.whep import new_peer_connection
from avatarcast.live.server import ServerConfig, run_server
from media_sinks import Recorder, thumb

SIZE = 256
FPS = 25.0


async def _receive(track, out: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            frame = await asyncio.wait_for(track.recv(), 2.0)
        except (MediaStreamError, asyncio.TimeoutError):
            return
        if track.kind == "video":
            out.append((frame.pts, thumb(frame.to_ndarray(format="rgb24"))))
        else:
            pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0] if frame.format.is_packed \
                else frame.to_ndarray()[0]
            out.append((frame.pts, pcm.astype(np.float32) / 32768.0))


def _envelope(samples: np.ndarray, hop: int = 240) -> np.ndarray:
    n = len(samples) // hop
    return np.sqrt(np.mean(samples[: n * hop].reshape(n, hop) ** 2, axis=1))


def test_webrtc_tracks_flow_in_silence_and_stay_in_sync(speech):
    path = speech / "ljspeech" / "LJ001-0002.wav"
    audio = load_audio(path)
    pcm = float_to_pcm16(resample(audio.samples[: int(1.8 * audio.rate_hz)], audio.rate_hz, 24000))

    async def body():
        h = await run_server(ServerConfig(port=0, width=SIZE, height=SIZE, fps=FPS, token="admin"))
        pc = new_peer_connection()
        stop = asyncio.Event()
        try:
            s = h.session()
            recorder = Recorder()
            s.scheduler.add_sink(recorder)
            await asyncio.sleep(0.3)
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            got_video: list = []
            got_audio: list = []
            tasks = []

            @pc.on("track")
            def on_track(track):
                tasks.append(asyncio.create_task(_receive(track, got_video if track.kind == "video" else got_audio,
                                                          stop)))

            await pc.setLocalDescription(await pc.createOffer())
            async with aiohttp.ClientSession() as http:
                r = await http.post(f"{h.base_url}/v1/sessions/default/whep?token={s.viewer_token}",
                                    data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"})
                assert r.status == 201, await r.text()
                location = r.headers["Location"]
                assert "m=video" in (answer := await r.text()) and "VP8" in answer and "opus" in answer.lower()
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

                # silence: frames keep coming and the picture is alive (idle motion), never frozen
                await asyncio.sleep(2.0)
                idle_frames = len(got_video)
                assert idle_frames >= 25, idle_frames
                thumbs = [t for _, t in got_video[-25:]]
                changes = [np.abs(a - b).mean() for a, b in zip(thumbs, thumbs[1:])]
                assert sum(c > 0.01 for c in changes) >= 12, changes

                async with IngestClient(f"ws://127.0.0.1:{h.port}/v1/sessions/default/ingest",
                                        s.ingest_token) as c:
                    await c.start(24000)
                    await c.send_audio(pcm, realtime=True, speed=1.5)
                    await c.speech_end()
                    await c.wait_for("playback.finished", timeout=10)
                await asyncio.sleep(0.6)
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)

                r = await http.delete(f"{h.base_url}{location}?token={s.viewer_token}")
                assert r.status == 200
                assert len(s.viewers) == 0

            assert len(got_video) > 80 and len(got_audio) > 150
            # video: which emitted frame does each decoded frame show? (speech frames are the distinctive ones)
            sent_pts = np.array([p for p, _ in recorder.video])
            sent = np.stack([t for _, t in recorder.video])
            # emitted frames that carry speech (their audio slice is loud) are the distinctive ones to match
            audio_at = {pts: a for pts, a in recorder.audio}
            loud = np.array([float(np.sqrt(np.mean(audio_at.get(round(p * 48000 / 90000), np.zeros(1)) ** 2)))
                             > 0.02 for p in sent_pts])
            assert loud.sum() > 10
            offsets_v = []
            for pts, thumb in got_video[idle_frames:]:
                err = np.abs(sent - thumb).mean(axis=(1, 2))
                best = int(np.argmin(err))
                if loud[best]:
                    offsets_v.append(sent_pts[best] / 90000.0 - pts / 90000.0)
            assert len(offsets_v) > 10
            offset_v = float(np.median(offsets_v))
            # the decoded frames map onto the emitted ones at one constant offset (no drift, no skipped frames;
            # a neighbour frame with a near-identical mouth may win the match now and then)
            assert np.mean(np.abs(np.array(offsets_v) - offset_v) < 1.5 / FPS) > 0.8

            # audio: cross-correlate the decoded and the emitted envelopes (5 ms hops)
            sent_a0 = recorder.audio[0][0]
            sent_audio = np.concatenate([a for _, a in recorder.audio])
            got_a0 = got_audio[0][0]
            got = np.zeros(got_audio[-1][0] - got_a0 + len(got_audio[-1][1]), np.float32)
            for pts, a in got_audio:
                got[pts - got_a0: pts - got_a0 + len(a)] = a
            e_sent, e_got = _envelope(sent_audio), _envelope(got)
            assert e_got.max() > 0.02  # the speech came through
            best_lag, best_score = 0, -1.0
            for lag in range(0, len(e_sent) - len(e_got) // 2):
                seg = e_sent[lag: lag + len(e_got)]
                m = min(len(seg), len(e_got))
                score = float(np.dot(seg[:m] - seg[:m].mean(), e_got[:m] - e_got[:m].mean()))
                if score > best_score:
                    best_lag, best_score = lag, score
            offset_a = (sent_a0 + best_lag * 240) / 48000.0 - got_a0 / 48000.0
            av_offset_ms = (offset_a - offset_v) * 1000.0
            print(f"receiver A/V offset {av_offset_ms:+.1f} ms (audio vs video, Opus delay included)")
            assert abs(av_offset_ms) <= 30.0, av_offset_ms
            assert s.stats()["av_drift_ms"] < 0.1
        finally:
            stop.set()
            await pc.close()
            await h.close()

    asyncio.run(asyncio.wait_for(body(), 120))
