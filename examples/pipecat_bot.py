"""A Pipecat bot with an avatarcast face, watched in a browser: espeak-ng speaks, the avatar moves its lips.

    pip install 'avatarcast[pipecat]'              # and: apt install espeak-ng
    python examples/pipecat_bot.py                 # the avatar in this process; open http://127.0.0.1:7860
    avatarcast serve --token SECRET &              # or the avatar on an avatarcast server:
    python examples/pipecat_bot.py --server http://127.0.0.1:8080 --token SECRET

The page connects to the bot over WebRTC (Pipecat's SmallWebRTC transport); the bot says its lines, and whatever
you type in the page's box interrupts it (a barge-in, as a user's voice would) and is said instead. The pipeline:

    transport.input() -> EspeakTTSService -> AvatarcastVideoService -> transport.output()

There is no speech recognition or LLM here (they need models or network): put your STT and LLM in front of the TTS
and the avatar service stays where it is, right after the TTS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from pipecat.frames.frames import InterruptionFrame, TTSSpeakFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

from avatarcast.integrations.pipecat import (
    AvatarcastVideoService,
    AvatarInstructionFrame,
    InProcessAvatar,
    RemoteAvatar,
)
from avatarcast.integrations.pipecat.espeak import EspeakTTSService
from avatarcast.live.outputs.whep import use_loopback_candidates
from avatarcast.live.session import parse_size

LINES = [
    "Hello! I am an avatar inside a voice bot.",
    "Everything you see and hear is made on this computer's processor.",
    "Type something in the box below, and I will stop and say it.",
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>avatarcast + Pipecat</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;text-align:center}video{max-width:90vw;
background:#000}input{width:30em}</style></head>
<body><h3>avatarcast in a Pipecat pipeline</h3>
<video id="v" autoplay playsinline></video><br>
<button id="go">Connect</button>
<input id="say" placeholder="type, then Enter: the bot stops and says it" disabled>
<p id="state"></p>
<script>
const v = document.getElementById('v'), say = document.getElementById('say'), state = document.getElementById('state');
document.getElementById('go').onclick = async () => {
  const pc = new RTCPeerConnection();
  const stream = new MediaStream();
  pc.ontrack = e => { stream.addTrack(e.track); v.srcObject = stream; };
  pc.addTransceiver('audio', {direction: 'sendrecv'});
  pc.addTransceiver('video', {direction: 'sendrecv'});
  const dc = pc.createDataChannel('chat');
  dc.onopen = () => { say.disabled = false; setInterval(() => dc.send('ping'), 1000); };
  say.onkeydown = e => { if (e.key === 'Enter' && say.value) {
    dc.send(JSON.stringify({type: 'say', text: say.value})); say.value = ''; } };
  pc.onconnectionstatechange = () => state.textContent = pc.connectionState;
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => { if (pc.iceGatheringState === 'complete') r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
  const resp = await fetch('/api/offer', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})});
  await pc.setRemoteDescription(await resp.json());
};
</script></body></html>
"""


def make_engine(args: argparse.Namespace) -> Any:
    if args.server:
        return RemoteAvatar(args.server, args.session, token=args.token)
    w, h = parse_size(args.size)
    return InProcessAvatar(args.avatar, size=(w, h), fps=args.fps, instruction=args.instruction)


def build_worker(transport: Any, engine: Any) -> PipelineWorker:
    """The bot's pipeline: the avatar right after the TTS, before the output transport."""
    avatar = AvatarcastVideoService(engine)
    pipeline = Pipeline([transport.input(), EspeakTTSService(), avatar, transport.output()])
    # 48 kHz out: the avatar's own audio rate, so the transport plays it as it comes
    return PipelineWorker(pipeline, params=PipelineParams(audio_out_sample_rate=48000), enable_rtvi=False,
                          setup_timeout_secs=60, idle_timeout_secs=None)


async def run_bot(connection: SmallWebRTCConnection, args: argparse.Namespace) -> None:
    engine = make_engine(args)
    w, h = parse_size(args.size)
    transport = SmallWebRTCTransport(connection, TransportParams(
        audio_in_enabled=False, audio_out_enabled=True, audio_out_sample_rate=48000,
        # the avatar's pictures travel with its audio (sync_with_audio): the transport takes each one when the audio
        # before it has been sent, and sends the latest one at video_out_framerate. Its loop sleeps a frame period
        # after each send, so it runs slower than that rate (22 fps for 25 measured here): a rate a little above
        # the avatar's lets every picture out
        video_out_enabled=True, video_out_is_live=False, video_out_width=w, video_out_height=h,
        video_out_framerate=int(round(args.fps)) + 5))
    worker = build_worker(transport, engine)

    @transport.event_handler("on_client_connected")
    async def _connected(transport: Any, client: Any) -> None:
        if args.instruction and args.server:
            await worker.queue_frame(AvatarInstructionFrame(args.instruction))
        await worker.queue_frames([TTSSpeakFrame(line) for line in LINES])

    @transport.event_handler("on_app_message")
    async def _message(transport: Any, message: Any, sender: Any = None) -> None:
        if isinstance(message, dict) and message.get("type") == "say" and str(message.get("text", "")).strip():
            await worker.queue_frames([InterruptionFrame(), TTSSpeakFrame(str(message["text"]))])

    @transport.event_handler("on_client_disconnected")
    async def _gone(transport: Any, client: Any) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="where the page is served (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="page port (default 7860)")
    p.add_argument("--server", default=None, help="an avatarcast server (http://HOST:PORT): the remote mode; "
                   "default: the avatar runs in this process")
    p.add_argument("--token", default=None, help="the server's admin token (remote mode)")
    p.add_argument("--session", default="default", help="the server's session id (remote mode, default 'default')")
    p.add_argument("--avatar", default=None, help="portrait image or prepared avatar folder (in-process mode; "
                   "default: the bundled portrait)")
    p.add_argument("--size", default="512x512", help="video size in-process (default 512x512)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate in-process (default 25)")
    p.add_argument("--instruction", default="speak warmly, smile", help="direction for the avatar's director")
    p.add_argument("--loopback", action="store_true",
                   help="offer only 127.0.0.1 as WebRTC candidate (a machine with no other network)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.loopback:
        use_loopback_candidates(True)
    bots: set[asyncio.Task] = set()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        connection = SmallWebRTCConnection()
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        task = asyncio.create_task(run_bot(connection, args))
        bots.add(task)
        task.add_done_callback(bots.discard)
        return web.Response(text=json.dumps(connection.get_answer()), content_type="application/json")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_post("/api/offer", offer)
    print(f"open http://{args.host}:{args.port} and press Connect")
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
