"""The ``--demo`` feeder: loops the bundled speech clip into a session at real-time pace, with pauses between."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from avatarcast.audio.io import float_to_pcm16, load_audio
from avatarcast.core.types import AUDIO_RATE_HZ
from avatarcast.live.session import Session

log = logging.getLogger(__name__)

DEMO_SPEECH = Path(__file__).resolve().parents[1] / "assets" / "demo_speech.flac"
DEMO_PAUSE_S = 2.5
"""Silence between repetitions: the avatar idles and listens."""
DEMO_CHUNK_S = 0.02


async def run_demo(session: Session, path: Path = DEMO_SPEECH, pause_s: float = DEMO_PAUSE_S) -> None:
    """Push the clip as PCM16 at 16 kHz through the session's ingest path, forever (cancel to stop)."""

    audio = load_audio(path)
    pcm = float_to_pcm16(audio.samples)
    chunk = int(DEMO_CHUNK_S * AUDIO_RATE_HZ) * 2
    scheduler = session.scheduler
    await asyncio.sleep(1.0)
    while True:
        if session.ingest_active:  # a real client is speaking: stay out of its way
            await asyncio.sleep(pause_s)
            continue
        t0 = time.monotonic()
        for i, pos in enumerate(range(0, len(pcm), chunk)):
            if session.ingest_active:
                break
            scheduler.push_audio(pcm[pos:pos + chunk], AUDIO_RATE_HZ)
            await scheduler.wait_for_space()
            delay = t0 + (i + 1) * DEMO_CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        scheduler.end_utterance()
        await asyncio.sleep(float(np.ceil(audio.duration_s)) - (time.monotonic() - t0) + pause_s)
