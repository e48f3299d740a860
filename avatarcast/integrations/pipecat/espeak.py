"""A Pipecat TTS service over espeak-ng: speech with no network and no model download, for examples and tests.

espeak-ng (the Debian package) writes 22.05 kHz speech; word timestamps come from forced alignment of the text to
that audio (pocketsphinx's bundled English model, as in ``examples/tts_bridge.py``) and go out as Pipecat's word
timestamps (``TTSTextFrame`` with ``pts``), the way cloud TTS services report theirs.
"""

from __future__ import annotations

import asyncio
import io
import shutil
from typing import AsyncGenerator

import numpy as np
import soundfile as sf
from loguru import logger
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from avatarcast.live.tts import TtsError
from avatarcast.audio.alignment import align_transcript
from avatarcast.audio.io import float_to_pcm16, resample
from avatarcast.core.errors import MissingDependencyError

ESPEAK_RATE_HZ = 22050
CHUNK_S = 0.04
"""Audio frame length it yields (TTS services stream audio in chunks of tens of milliseconds)."""


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


async def synthesize(text: str, voice: str = "en-us", words_per_minute: int = 160) -> tuple[np.ndarray, int]:
    """Speech for ``text`` from espeak-ng: float32 mono samples and their rate."""
    if not espeak_available():
        raise MissingDependencyError("espeak-ng is not installed: apt install espeak-ng (Debian/Ubuntu)")
    proc = await asyncio.create_subprocess_exec(
        "espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    wav, err = await proc.communicate()
    if proc.returncode != 0:
        raise TtsError(f"espeak-ng failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return (samples if samples.ndim == 1 else samples.mean(axis=1)), int(rate)


def _word_times(samples: np.ndarray, rate_hz: int, text: str) -> list[tuple[str, float]]:
    words, _ = align_transcript(samples, rate_hz, text)
    return [(w.text, float(w.start_s)) for w in words]


class EspeakTTSService(TTSService):
    """Text to speech with espeak-ng. ``word_timestamps``: align each sentence and report its words' start times
    (costs a few percent of real time on one core). ``sample_rate``: the rate of the audio it yields (default:
    the pipeline's output rate)."""

    def __init__(self, *, voice: str = "en-us", words_per_minute: int = 160, word_timestamps: bool = True,
                 **kwargs) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True, push_text_frames=not word_timestamps,
                         settings=TTSSettings(model=None, voice=voice, language=None), **kwargs)
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.word_timestamps = word_timestamps

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        text = text.strip()
        if not text:
            return
        try:
            samples, rate = await synthesize(text, self.voice, self.words_per_minute)
        except Exception as exc:
            yield ErrorFrame(error=f"espeak-ng: {exc}")
            return
        words: list[tuple[str, float]] = []
        if self.word_timestamps:
            try:
                words = await asyncio.get_running_loop().run_in_executor(None, _word_times, samples, rate, text)
            except Exception as exc:  # timings are side information: speak without them
                logger.warning(f"{self}: no word timestamps for {text!r}: {exc}")
                words = []
        out_rate = self.sample_rate or rate
        pcm = float_to_pcm16(resample(samples, rate, out_rate))
        step = 2 * int(out_rate * CHUNK_S)
        await self.stop_ttfb_metrics()
        for pos in range(0, len(pcm), step):
            yield TTSAudioRawFrame(audio=pcm[pos:pos + step], sample_rate=out_rate, num_channels=1,
                                   context_id=context_id)
        if words:
            await self.add_word_timestamps(words, context_id)
