"""What an avatar engine hands the Pipecat service: one ordered stream of typed media messages.

Both engines (``InProcessAvatar``, ``RemoteAvatar``) call one handler, in order, with these messages. Positions are
samples of the session's 48 kHz media clock (``avatarcast.live.mediaclock``): video frame ``k`` starts at the
sample where its audio starts, so a frame and the audio that follows it up to the next frame belong together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from avatarcast.live.mediaclock import PLAYOUT_RATE_HZ

MEDIA_RATE_HZ = PLAYOUT_RATE_HZ
"""The rate of the audio the engines hand over, and of the positions (48 kHz)."""


@dataclass(frozen=True)
class VideoOut:
    """One video frame: yuv420p planes as one ``(height * 3 / 2, width)`` uint8 array, starting at ``sample``."""

    yuv: np.ndarray
    width: int
    height: int
    sample: int


@dataclass(frozen=True)
class AudioOut:
    """PCM16 mono at ``MEDIA_RATE_HZ`` starting at ``sample`` (speech, or the silence between utterances)."""

    pcm: np.ndarray
    sample: int


@dataclass(frozen=True)
class SpeechStarted:
    """The first frame of an utterance was just handed over; it starts at ``sample``."""

    utterance: int
    sample: int


@dataclass(frozen=True)
class SpeechFinished:
    """An utterance's last audio was just handed over (or it was cut by an interrupt)."""

    utterance: int
    position_ms: float
    interrupted: bool


MediaHandler = Callable[[object], None]


class AvatarEngine(Protocol):
    """What the service drives: the in-process engine or a remote server, with the same behaviour.

    Speech goes in as utterances: ``push_audio`` opens one when none is open, ``end_speech`` closes it. Each
    utterance gets a number (``push_audio`` returns it) that ``SpeechStarted`` and ``SpeechFinished`` carry.
    """

    fps: float
    width: int
    height: int

    async def start(self, on_media: MediaHandler) -> None: ...

    async def push_audio(self, pcm: bytes, rate_hz: int) -> int: ...

    async def add_words(self, words: list) -> None: ...

    async def end_speech(self) -> None: ...

    async def interrupt(self) -> None: ...

    async def set_instruction(self, text: str | None) -> None: ...

    async def stop(self) -> None: ...


class UtteranceLedger:
    """Numbers the utterances an engine was given and matches its playback events to them by order.

    Utterances play in the order they were given and an interrupt ends them all, so the next ``started`` is the
    oldest one not started yet and the next ``finished`` the oldest one not finished. (The engine's own utterance
    ids are not used: speech dropped by an interrupt before the engine saw it never gets one.)
    """

    def __init__(self) -> None:
        self._next = 1
        self.open: int | None = None
        self._not_started: list[int] = []
        self._not_finished: list[int] = []

    def audio(self) -> int:
        """The number of the open utterance, opening one when none is open."""
        if self.open is None:
            self.open = self._next
            self._next += 1
            self._not_started.append(self.open)
            self._not_finished.append(self.open)
        return self.open

    def end(self) -> None:
        self.open = None

    def started(self) -> int | None:
        return self._not_started.pop(0) if self._not_started else None

    def finished(self) -> int | None:
        n = self._not_finished.pop(0) if self._not_finished else None
        if n is not None and n in self._not_started:  # finished without a frame (shorter than one frame)
            self._not_started.remove(n)
        return n

    def cut_all(self) -> list[int]:
        """An interrupt: every utterance not finished yet ends."""
        cut, self._not_finished, self._not_started, self.open = self._not_finished, [], [], None
        return cut

    @property
    def pending(self) -> int:
        """Utterances given and not finished."""
        return len(self._not_finished)
