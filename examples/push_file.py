"""Push a speech recording into a live avatarcast session, the way a TTS service would.

    avatarcast serve --demo &                      # prints the ingest URL and token
    python examples/push_file.py speech.wav --token INGEST_TOKEN [--rate 24000] [--speed 1 | --fast]
        [--repeat N] [--interrupt-after S [--out-of-band]]

Any format load_audio reads (WAV, FLAC, MP3, OGG; any rate and channel count) is resampled to the declared rate and
sent as PCM16 in 20 ms messages, at real-time pace (or --speed times faster, or --fast: as fast as the server's
backpressure allows). ``--repeat`` sends the recording N times over as one utterance (a long answer);
``--interrupt-after`` barges in S seconds after playback starts and prints how long the server took to say the
speech stopped. Prints the server's events.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from avatarcast.audio.io import float_to_pcm16, load_audio, resample
from avatarcast.live.client import IngestClient


async def main(args: argparse.Namespace) -> None:
    audio = load_audio(args.path)
    pcm = float_to_pcm16(resample(audio.samples, audio.rate_hz, args.rate)) * max(1, args.repeat)
    duration_s = len(pcm) / 2 / args.rate
    url = args.url or f"ws://127.0.0.1:{args.port}/v1/sessions/{args.session}/ingest"
    async with IngestClient(url, args.token) as client:
        print(f"connected: {client.ready.model_dump_json()}")
        if args.instruction:
            await client.instruction(args.instruction)
        await client.start(args.rate)
        t0 = time.monotonic()

        async def send() -> None:
            await client.send_audio(pcm, realtime=not args.fast, speed=args.speed)
            await client.speech_end()
            print(f"sent {duration_s:.2f} s of audio in {time.monotonic() - t0:.2f} s")

        sender = asyncio.create_task(send())
        t_interrupt = None
        async for event in client.events():
            if event.type != "stats" or args.stats:
                print(event.model_dump_json())
            if event.type == "playback.started" and args.interrupt_after is not None and t_interrupt is None:
                await asyncio.sleep(args.interrupt_after)
                t_interrupt = time.monotonic()
                await client.interrupt(out_of_band=args.out_of_band)
                print(f"interrupt sent at {t_interrupt - t0:.2f} s"
                      + (f" (the server answered in {(time.monotonic() - t_interrupt) * 1000:.0f} ms)"
                         if args.out_of_band else ""))
            if event.type == "playback.finished":
                if t_interrupt is not None:
                    print(f"interrupt -> playback.finished: {(time.monotonic() - t_interrupt) * 1000:.0f} ms "
                          f"(interrupted={event.interrupted}, at {event.position_ms / 1000:.2f} s of "
                          f"{duration_s:.2f} s)")
                break
        sender.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="speech file")
    p.add_argument("--token", required=True, help="the session's ingest token (printed by avatarcast serve)")
    p.add_argument("--url", default=None, help="ingest WebSocket URL (default: built from --port and --session)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--session", default="default")
    p.add_argument("--rate", type=int, default=16000, choices=(16000, 22050, 24000, 48000), help="declared rate")
    p.add_argument("--speed", type=float, default=1.0, help="pace: 1 = real time, 2 = twice as fast")
    p.add_argument("--fast", action="store_true", help="send as fast as the server accepts (TTS burst)")
    p.add_argument("--instruction", default=None, help="free-text direction sent before the speech")
    p.add_argument("--stats", action="store_true", help="print the periodic stats events too")
    p.add_argument("--repeat", type=int, default=1, help="send the recording this many times as one utterance")
    p.add_argument("--interrupt-after", type=float, default=None, metavar="S",
                   help="send an interrupt S seconds after playback starts")
    p.add_argument("--out-of-band", action="store_true",
                   help="send the interrupt over POST /v1/sessions/ID/interrupt instead of the socket")
    asyncio.run(main(p.parse_args()))
