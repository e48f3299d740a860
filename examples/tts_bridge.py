"""Speak text through a live avatar: espeak-ng synthesizes it, word timings go along as alignment.

    avatarcast serve &
    python examples/tts_bridge.py "Ask not what your country can do for you." --token INGEST_TOKEN

espeak-ng (Debian package) writes 22.05 kHz WAV; the word timings come from forced alignment of the text to that
audio (pocketsphinx, bundled English model), and are sent as an ``alignment`` message before the audio, the way
TTS services send theirs. Each sentence is one utterance.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import shutil
import subprocess

import numpy as np
import soundfile as sf

from avatarcast.audio.alignment import align_transcript
from avatarcast.audio.io import float_to_pcm16, resample
from avatarcast.live.client import IngestClient

RATE_HZ = 22050


def synthesize(text: str, voice: str) -> tuple[np.ndarray, int]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (Debian: apt install espeak-ng)")
    wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return (samples if samples.ndim == 1 else samples.mean(axis=1)), rate


async def main(args: argparse.Namespace) -> None:
    url = args.url or f"ws://127.0.0.1:{args.port}/v1/sessions/{args.session}/ingest"
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(args.text).strip()) if s]
    async with IngestClient(url, args.token) as client:
        if args.instruction:
            await client.instruction(args.instruction)
        await client.start(RATE_HZ)
        for sentence in sentences:
            samples, rate = synthesize(sentence, args.voice)
            samples = resample(samples, rate, RATE_HZ)
            try:
                words, _ = align_transcript(resample(samples, RATE_HZ, 16000), 16000, sentence)
                await client.alignment(words=[{"word": w.text, "start_ms": round(w.start_s * 1000, 1),
                                               "end_ms": round(w.end_s * 1000, 1)} for w in words])
            except Exception as exc:  # timings are side information: speak without them
                print(f"no word timings for {sentence!r}: {exc}")
            await client.send_audio(float_to_pcm16(samples), realtime=not args.fast)
            await client.speech_end()
            done = await client.wait_for("playback.finished", timeout=60)
            print(f"{done.utterance_id}: {sentence!r} ({done.position_ms:.0f} ms)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="+", help="what to say")
    p.add_argument("--token", required=True, help="the session's ingest token (printed by avatarcast serve)")
    p.add_argument("--url", default=None, help="ingest WebSocket URL (default: built from --port and --session)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--session", default="default")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice")
    p.add_argument("--fast", action="store_true", help="send each sentence as fast as the server accepts")
    p.add_argument("--instruction", default=None, help="free-text direction, e.g. 'speak warmly, nod at the start'")
    asyncio.run(main(p.parse_args()))
