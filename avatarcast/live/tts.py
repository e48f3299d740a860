"""Local text-to-speech for the studio's "speak by typing": espeak-ng (and flite or festival when installed), with
word timings sent to the session as alignment the way a TTS service sends its own.

- **espeak-ng** runs through its C library (``libespeak-ng.so.1``, ctypes) when it is there: the library reports
  each word's start in the audio it synthesizes, so the timings are the engine's own. Without the library the
  ``espeak-ng`` program is used like the other engines.
- **flite**, **festival** and the ``espeak-ng`` program write a WAV file; the word timings then come from forced
  alignment of the text to that audio (pocketsphinx's bundled English model; when it fails, the alignment module
  spreads the words over the speech regions).

Nothing here reaches the network: each engine is a local library or program (run with the text as an argument,
never through a shell, with a time limit).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarcast.audio.alignment import Word, align_transcript, phones_from_words
from avatarcast.audio.io import float_to_pcm16, resample
from avatarcast.core.errors import AvatarcastError

TTS_RATE_HZ = 22050
"""Rate the speech is handed to the session at (one of the ingest's supported rates)."""
TTS_TIMEOUT_S = 30.0
ALIGN_RATE_HZ = 16000
ESPEAK_RATE_WPM = 165
"""espeak-ng's speaking rate (its default, 175, is brisk for an avatar)."""
WORD_END_SILENCE_RMS = 0.01
"""A word ends where its audio last rises above this level (10 ms frames) before the next word starts."""


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


ESPEAK_VOICES = (("en-us", "English (US)"), ("en", "English (UK)"), ("en-us+f3", "English (US), higher"))


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


# ---------------------------------------------------------------------------------------------- espeak-ng library


class _EspeakEvent(ctypes.Structure):
    """``espeak_EVENT`` (speak_lib.h)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_PARAM_RATE = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_EspeakEvent))


class EspeakLibrary:
    """espeak-ng's C library in synchronous mode: audio and word events of one text at a time (the library has one
    global state: use one instance, from one thread)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self.lib = ctypes.CDLL(name)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.rate_hz = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0)
        if self.rate_hz <= 0:
            raise TtsError("espeak-ng's library did not start (is espeak-ng-data installed?)")
        self._samples: list[np.ndarray] = []
        self._words: list[tuple[int, int, int]] = []  # (ms, text position, length)
        self._callback = _CALLBACK(self._on_synth)  # kept referenced while the library may call it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]

    def _on_synth(self, wav, n: int, events) -> int:
        if n > 0 and wav:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _EVENT_WORD:
                self._words.append((e.audio_position, e.text_position, e.length))
            i += 1
        return 0

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
        """Samples (float32), their rate, and ``(words, start_s)`` for each word event of the engine: the text's
        words from that event's word to the next event's (espeak-ng reports "from the" as one word event)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise TtsError(f"espeak-ng has no voice {voice!r}", voice=True)
        self.lib.espeak_SetParameter(_PARAM_RATE, ESPEAK_RATE_WPM, 0)
        self._samples, self._words = [], []
        data = text.encode("utf-8")
        if self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise TtsError("espeak-ng could not speak this text")
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._samples) if self._samples else np.zeros(0, np.float32)
        return samples, self.rate_hz, _words_from_events(text, self._words)


def _words_from_events(text: str, events: list[tuple[int, int, int]]) -> list[tuple[list[str], float]]:
    """Group the text's words by the word event they were spoken in (``events``: ms, 1-based character position,
    length); words before the first event join it."""
    import re

    tokens = [(m.start(), m.group()) for m in re.finditer(r"[^\W_]+(?:['’][^\W_]+)*", text)]
    groups: list[tuple[list[str], float]] = []
    starts = sorted((pos - 1, ms / 1000.0) for ms, pos, length in events if length > 0)
    for i, (pos, start_s) in enumerate(starts):
        nxt = starts[i + 1][0] if i + 1 < len(starts) else len(text) + 1
        lo = pos if i else -1
        words = [w for p, w in tokens if lo <= p < nxt or (lo <= p + len(w) - 1 < nxt and p < lo)]
        if words:
            groups.append((words, start_s))
    return groups


_espeak: EspeakLibrary | None = None


def _espeak_library() -> EspeakLibrary | None:
    global _espeak
    if _espeak is None:
        try:
            _espeak = EspeakLibrary()
        except (OSError, AttributeError, TtsError):
            return None
    return _espeak


def _word_spans(samples: np.ndarray, rate_hz: int,
                starts: list[tuple[list[str], float]]) -> list[tuple[str, float, float]]:
    """Each word event from its start to where its audio last rises above ``WORD_END_SILENCE_RMS`` before the next
    one starts (a pause after a comma is not part of the word); an event of several words is shared among them by
    their letters."""
    hop = rate_hz // 100
    n = len(samples) // hop
    rms = np.sqrt(np.mean(np.square(samples[:n * hop].reshape(n, hop)), axis=1)) if n else np.zeros(0)
    loud = np.flatnonzero(rms > WORD_END_SILENCE_RMS)
    out = []
    duration = len(samples) / rate_hz
    for i, (text, start) in enumerate(starts):
        nxt = starts[i + 1][1] if i + 1 < len(starts) else duration
        inside = loud[(loud >= int(start * 100)) & (loud < int(nxt * 100))]
        end = (inside[-1] + 1) / 100.0 if len(inside) else nxt
        end = min(max(end, start + 0.05), max(nxt, start + 0.05))
        letters = np.cumsum([0] + [len(w) for w in text])
        for j, word in enumerate(text):
            a = start + (end - start) * letters[j] / letters[-1]
            b = start + (end - start) * letters[j + 1] / letters[-1]
            out.append((word, round(float(a), 4), round(float(b), 4)))
    return out


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
        wav = _run(["espeak-ng", "-v", voice.name, "-s", str(ESPEAK_RATE_WPM), "--stdout", "--", text], "espeak-ng")
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
    library = _espeak_library() if voice.engine == "espeak-ng" else None
    words, phones = [], []
    if library is not None:
        samples, rate, starts = library.synthesize(text, voice.name)
        if not len(samples):
            raise TtsError("espeak-ng produced no audio for this text")
        spans = _word_spans(samples, rate, starts)
        words = [Word(w, s, e) for w, s, e in spans]
        phones = phones_from_words(words)
        samples = resample(samples, rate, TTS_RATE_HZ) if rate != TTS_RATE_HZ else samples
    else:
        samples, rate = _synthesize(text, voice)
        samples = resample(samples, rate, TTS_RATE_HZ) if rate != TTS_RATE_HZ else samples
        try:
            words, phones = align_transcript(resample(samples, TTS_RATE_HZ, ALIGN_RATE_HZ), ALIGN_RATE_HZ, text)
            if words and not phones:
                phones = phones_from_words(words)
        except Exception:  # timings are side information: the audio drives the mouth without them
            words, phones = [], []
    return Speech(float_to_pcm16(samples), TTS_RATE_HZ, list(words), list(phones), voice.id,
                  round((time.monotonic() - t0) * 1000.0, 1))
