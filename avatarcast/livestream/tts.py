"""Local text-to-speech for the studio's "speak by typing": espeak-ng (and flite or festival when installed), with
word and phone timings from forced alignment of the text to the synthesized audio (pocketsphinx's bundled English
model), sent to the session as alignment the way a TTS service sends its own.

Nothing here reaches the network: each engine is a local program run with the text as an argument (never through a
shell) and a time limit.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarcast.errors import AvatarcastError

TTS_RATE_HZ = 22050
"""Rate the speech is handed to the session at (one of the ingest's supported rates)."""
TTS_TIMEOUT_S = 30.0
ALIGN_RATE_HZ = 16000


class TtsError(AvatarcastError):
    def __init__(self, message: str, voice: bool = False) -> None:
        super().__init__(message)
        self.voice = voice


@dataclass(frozen=True)
class Voice:
    id: str  # "engine:voice"
    engine: str
    name: str
    label: str

    def info(self) -> dict[str, str]:
        return {"id": self.id, "engine": self.engine, "label": self.label}


ESPEAK_VOICES = (("en-us", "English (US)"), ("en-gb", "English (UK)"), ("en-us+f3", "English (US), higher"))


def available_voices() -> list[Voice]:
    """The voices of the engines installed on this machine, espeak-ng first."""
    voices: list[Voice] = []
    if shutil.which("espeak-ng"):
        voices += [Voice(f"espeak-ng:{v}", "espeak-ng", v, f"espeak-ng {label}") for v, label in ESPEAK_VOICES]
    if shutil.which("flite"):
        voices.append(Voice("flite:slt", "flite", "slt", "flite (slt)"))
    if shutil.which("text2wave"):
        voices.append(Voice("festival:default", "festival", "default", "festival"))
    return voices


@dataclass
class Speech:
    pcm: bytes  # PCM16 LE mono at rate_hz
    rate_hz: int
    words: list  # alignment.Word, seconds from the start
    phones: list  # alignment.Phone
    voice: str
    tts_ms: float

    @property
    def duration_ms(self) -> float:
        return round(len(self.pcm) / 2 / self.rate_hz * 1000.0, 1)


def _run(cmd: list[str], what: str) -> bytes:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=TTS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise TtsError(f"{what} took longer than {TTS_TIMEOUT_S:g} s; type a shorter text") from None
    except OSError as exc:
        raise TtsError(f"cannot run {what}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        raise TtsError(f"{what} failed: {proc.stderr.decode('utf-8', 'replace')[-300:].strip()}")
    return proc.stdout


def _synthesize(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if voice.engine == "espeak-ng":
        wav = _run(["espeak-ng", "-v", voice.name, "--stdout", "--", text], "espeak-ng")
    else:
        with tempfile.TemporaryDirectory(prefix="avatarcast-tts-") as tmp:
            out = Path(tmp) / "speech.wav"
            if voice.engine == "flite":
                _run(["flite", "-voice", voice.name, "-t", text, "-o", str(out)], "flite")
            else:
                src = Path(tmp) / "text.txt"
                src.write_text(text, encoding="utf-8")
                _run(["text2wave", str(src), "-o", str(out)], "festival")
            wav = out.read_bytes()
    try:
        samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    except Exception as exc:
        raise TtsError(f"{voice.engine} wrote no readable audio ({exc})") from None
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if not len(samples):
        raise TtsError(f"{voice.engine} produced no audio for this text")
    return samples.astype(np.float32), int(rate)


def synthesize_with_timings(text: str, voice_id: str | None = None) -> Speech:
    """Speak ``text`` with a local engine; word and phone timings by forced alignment (empty when it fails: the
    audio alone then drives the mouth). Blocking: run it off the event loop."""
    from avatarcast.pipeline.alignment import align_transcript, phones_from_words
    from avatarcast.pipeline.audio import float_to_pcm16, resample

    voices = available_voices()
    if not voices:
        raise TtsError("no local TTS engine is installed: install espeak-ng (Debian: apt install espeak-ng)")
    if voice_id is None:
        voice = voices[0]
    else:
        match = [v for v in voices if v.id == voice_id]
        if not match:
            raise TtsError(f"voice {voice_id[:64]!r} is not installed here; choose one of: "
                           f"{', '.join(v.id for v in voices)}", voice=True)
        voice = match[0]
    t0 = time.monotonic()
    text = " ".join(text.split())
    samples, rate = _synthesize(text, voice)
    samples = resample(samples, rate, TTS_RATE_HZ) if rate != TTS_RATE_HZ else samples
    words, phones = [], []
    try:
        words, phones = align_transcript(resample(samples, TTS_RATE_HZ, ALIGN_RATE_HZ), ALIGN_RATE_HZ, text)
        if words and not phones:
            phones = phones_from_words(words)
    except Exception:  # timings are side information: the audio drives the mouth without them
        words, phones = [], []
    return Speech(float_to_pcm16(samples), TTS_RATE_HZ, list(words), list(phones), voice.id,
                  round((time.monotonic() - t0) * 1000.0, 1))
