"""``AvatarcastVideoService``: a Pipecat video service that sits after the TTS and turns its speech into a talking
avatar, in this process (``InProcessAvatar``) or on an avatarcast server (``RemoteAvatar``).

Like Pipecat's Simli, Tavus and HeyGen services, it swallows the TTS audio and sends the avatar's media on instead:

- in: ``TTSAudioRawFrame`` at any rate (mono or stereo), ``TTSStartedFrame``/``TTSStoppedFrame`` (one utterance
  each), ``TTSTextFrame`` with word timestamps (``pts``) when the TTS gives them (they reach the director as
  alignment), ``InterruptionFrame`` (barge-in), ``AvatarInstructionFrame`` (free-text direction for the director);
- out: one ``OutputImageRawFrame`` per video frame at the session's frame rate, each followed by its own audio
  (``TTSAudioRawFrame`` while the avatar speaks, ``OutputAudioRawFrame`` silence between utterances), all from the
  engine's one media clock and paced by it (in real time). Images carry ``sync_with_audio``: an output transport
  shows each one when the audio before it has been played, so picture and sound leave together. The TTS audio is
  played once, inside the avatar's stream, never twice and never dropped (except what an interruption cuts).
- ``TTSStartedFrame``, the word ``TTSTextFrame``s and ``TTSStoppedFrame`` are held and sent on where the utterance
  starts and ends in that stream; the words' ``pts`` move by the time the utterance waited for its first frame, so
  a transport that times them (captions, context aggregation) stays with the picture.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    ControlFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

from avatarcast.audio.alignment import Word
from avatarcast.audio.io import StreamResampler
from avatarcast.integrations.pipecat.media import (
    MEDIA_RATE_HZ,
    AudioOut,
    AvatarEngine,
    SpeechFinished,
    SpeechStarted,
    VideoOut,
)

DRAIN_TIMEOUT_S = 60.0
"""On ``EndFrame`` the service waits for the speech still queued to be played, at most this long."""
LAST_WORD_S = 0.3
"""The length given to an utterance's last word when the TTS gives word starts only (Pipecat's word timestamps)."""
NS_PER_S = 1_000_000_000


@dataclass
class AvatarInstructionFrame(ControlFrame):
    """Free-text direction for the avatar's director ("speak warmly, nod at the start"); ``None`` clears it.

    It takes effect in order with the speech around it and survives interruptions."""

    text: str | None = None
    interruptible: bool = field(default=False, init=False)


@dataclass
class _Utterance:
    n: int
    context_id: str | None
    in_ns: int  # pipeline clock when its first audio arrived
    start_frame: TTSStartedFrame | None = None
    held: list[Frame] = field(default_factory=list)  # word frames waiting for the first video frame
    shift_ns: int | None = None  # how much later than it came in its audio leaves (known once it starts)
    stop_frame: TTSStoppedFrame | None = None
    audio_s: float = 0.0
    word: tuple[str, float] | None = None  # the last word, waiting for the next one's start as its end


@dataclass(frozen=True)
class _Pass:
    """A frame to send on in order with the media."""

    frame: Frame


class AvatarcastVideoService(AIService):
    """An avatarcast avatar as a Pipecat video service (see the module's docstring).

    ``engine``: ``InProcessAvatar(...)`` or ``RemoteAvatar(...)``. ``audio_out_sample_rate``: the rate of the audio
    it sends on; by default the engine's own 48 kHz in 20 ms frames, which output transports convert to their rate
    (a streaming resampler here would hand the audio on in uneven lumps: soxr's gives 0 and 830 samples for
    alternate 20 ms ticks at 24 kHz). Latency figures: ``first_frame_ms`` (per utterance: its
    first TTS audio in -> its first video frame out, on the pipeline clock).
    """

    def __init__(self, engine: AvatarEngine, *, audio_out_sample_rate: int | None = None,
                 drain_timeout_s: float = DRAIN_TIMEOUT_S, **kwargs) -> None:
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        self.engine = engine
        self._out_rate = audio_out_sample_rate or MEDIA_RATE_HZ
        self._resampler: StreamResampler | None = None
        self.drain_timeout_s = drain_timeout_s
        self._media: asyncio.Queue = asyncio.Queue()
        self._pusher: asyncio.Task | None = None
        self._engine_running = False
        self._live = False  # StartFrame has gone downstream: media may follow
        self._open: _Utterance | None = None
        self._utterances: dict[int, _Utterance] = {}
        self._next_start_frame: TTSStartedFrame | None = None
        self._speaking: _Utterance | None = None
        self._video_pushed: deque[tuple[int, int]] = deque(maxlen=64)  # (media sample, pipeline clock ns)
        self._idle = asyncio.Event()
        self._idle.set()
        self.first_frame_ms: list[float] = []
        self.video_frames_out = 0
        self.audio_samples_out = 0

    # ------------------------------------------------------------------------------------------ lifecycle

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        if self._out_rate != MEDIA_RATE_HZ:
            self._resampler = StreamResampler(MEDIA_RATE_HZ, self._out_rate)
        self._pusher = self.create_task(self._push_media(), name=f"{self}::media")
        t0 = time.monotonic()
        try:
            await self.engine.start(self._on_media)  # the avatar and its render process: seconds, once
        except Exception as exc:
            await self.push_error(error_msg=f"the avatar could not start: {exc}", exception=exc, fatal=True)
            return
        self._engine_running = True
        logger.info(f"{self}: avatar ready in {time.monotonic() - t0:.1f} s "
                    f"({self.engine.width}x{self.engine.height} at {self.engine.fps:g} fps)")

    async def stop(self, frame: EndFrame) -> None:
        """``EndFrame``: the speech already given is played to its end (at most ``drain_timeout_s``), then the
        avatar stops."""
        await super().stop(frame)
        if self._engine_running:
            if self._open is not None:
                await self._end_utterance(None)
            try:
                await asyncio.wait_for(self._idle.wait(), self.drain_timeout_s)
            except asyncio.TimeoutError:
                logger.warning(f"{self}: speech still playing after {self.drain_timeout_s:g} s; stopping anyway")
        await self._shutdown()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._shutdown()

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._live = False
        if self._engine_running:
            self._engine_running = False
            await self.engine.stop()
        if self._pusher is not None:
            await self.cancel_task(self._pusher)
            self._pusher = None

    # ------------------------------------------------------------------------------------------ control

    async def set_instruction(self, text: str | None) -> None:
        """Free-text direction for the director, from its next plan on (the same as an ``AvatarInstructionFrame``,
        but at once rather than in order with the frames)."""
        if self._engine_running:
            await self.engine.set_instruction(text)

    # ------------------------------------------------------------------------------------------ frames in

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
        elif isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._live = True
        elif isinstance(frame, TTSAudioRawFrame):
            await self._tts_audio(frame)
        elif isinstance(frame, TTSStartedFrame):
            if self._open is not None:
                await self._end_utterance(None)
            self._next_start_frame = frame
        elif isinstance(frame, TTSStoppedFrame):
            await self._end_utterance(frame)
        elif isinstance(frame, TTSTextFrame) and frame.pts and self._open is not None:
            await self._word(frame, self._open)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, AvatarInstructionFrame):
            if self._engine_running:
                await self.engine.set_instruction(frame.text)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _tts_audio(self, frame: TTSAudioRawFrame) -> None:
        if not self._engine_running or not frame.audio:
            return
        u = self._open
        if u is not None and frame.context_id is not None and u.context_id is not None \
                and frame.context_id != u.context_id:
            await self._end_utterance(None)  # a new TTS context without a stop frame between
            u = None
        pcm = frame.audio
        if frame.num_channels > 1:
            x = np.frombuffer(pcm, np.int16).reshape(-1, frame.num_channels).mean(axis=1)
            pcm = np.round(x).astype(np.int16).tobytes()
        n = await self.engine.push_audio(pcm, frame.sample_rate)
        if u is None:
            u = self._open = _Utterance(n, frame.context_id, self.get_clock().get_time(),
                                        start_frame=self._next_start_frame)
            self._next_start_frame = None
            self._utterances[n] = u
            self._idle.clear()
        u.audio_s += len(pcm) / 2 / frame.sample_rate

    async def _word(self, frame: TTSTextFrame, u: _Utterance) -> None:
        """A word with its start (Pipecat's word timestamps: ``pts`` = the TTS's first audio + the word's start)."""
        u.in_ns = min(u.in_ns, frame.pts)  # the TTS's baseline is a little before its audio reached us
        start_s = (frame.pts - u.in_ns) / NS_PER_S
        if u.word is not None:
            text, s = u.word
            await self.engine.add_words([Word(text, s, max(s, start_s))])
        u.word = (frame.text.strip(), start_s)
        self._pass_word(frame, u)

    def _pass_word(self, frame: Frame, u: _Utterance) -> None:
        if u.shift_ns is None:
            u.held.append(frame)
        else:
            frame.pts += u.shift_ns
            self._media.put_nowait(_Pass(frame))

    async def _end_utterance(self, stop_frame: TTSStoppedFrame | None) -> None:
        u, self._open = self._open, None
        if u is None:  # a TTS response without audio: its frames go on as they came
            if self._next_start_frame is not None:
                self._media.put_nowait(_Pass(self._next_start_frame))
                self._next_start_frame = None
            if stop_frame is not None:
                self._media.put_nowait(_Pass(stop_frame))
            return
        if u.word is not None:
            text, s = u.word
            await self.engine.add_words([Word(text, s, max(s + 0.05, min(s + LAST_WORD_S, u.audio_s)))])
            u.word = None
        u.stop_frame = stop_frame
        await self.engine.end_speech()

    async def _interrupt(self) -> None:
        # what the engine handed over and is not sent yet is speech from before the interruption: dropped, as the
        # transport drops what it holds; events and frames passed on stay
        kept = []
        while not self._media.empty():
            m = self._media.get_nowait()
            if not isinstance(m, (AudioOut, VideoOut)):
                kept.append(m)
        for m in kept:
            self._media.put_nowait(m)
        self._open = None
        self._next_start_frame = None
        if self._engine_running:
            await self.engine.interrupt()  # SpeechFinished(interrupted) for every utterance cut

    # ------------------------------------------------------------------------------------------ media out

    def _on_media(self, message: object) -> None:
        self._media.put_nowait(message)

    async def _push_media(self) -> None:
        while True:
            m = await self._media.get()
            if isinstance(m, VideoOut):
                if self._live:
                    await self._push_video(m)
            elif isinstance(m, AudioOut):
                if self._live:
                    await self._push_audio(m)
            elif isinstance(m, SpeechStarted):
                await self._speech_started(m)
            elif isinstance(m, SpeechFinished):
                await self._speech_finished(m)
            elif isinstance(m, _Pass):
                await self.push_frame(m.frame)

    async def _push_video(self, m: VideoOut) -> None:
        rgb = cv2.cvtColor(m.yuv, cv2.COLOR_YUV2RGB_I420)
        frame = OutputImageRawFrame(image=rgb.tobytes(), size=(m.width, m.height), format="RGB")
        frame.sync_with_audio = True  # shown once the audio before it has played: paired with its own audio
        await self.push_frame(frame)
        self._video_pushed.append((m.sample, self.get_clock().get_time()))
        self.video_frames_out += 1

    async def _push_audio(self, m: AudioOut) -> None:
        pcm = m.pcm
        if self._resampler is not None:
            x = self._resampler.push(pcm.astype(np.float32) / 32768.0)
            pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
        if not len(pcm):
            return
        u = self._speaking
        if u is not None:
            frame = TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=self._out_rate, num_channels=1,
                                     context_id=u.context_id)
        else:
            frame = OutputAudioRawFrame(audio=pcm.tobytes(), sample_rate=self._out_rate, num_channels=1)
        await self.push_frame(frame)
        self.audio_samples_out += len(pcm)

    async def _speech_started(self, m: SpeechStarted) -> None:
        u = self._utterances.get(m.utterance)
        if u is None:
            return
        now = self.get_clock().get_time()
        out_ns = next((t for s, t in reversed(self._video_pushed) if s == m.sample), now)
        self.first_frame_ms.append((out_ns - u.in_ns) / 1e6)
        u.shift_ns = max(0, out_ns - u.in_ns)
        self._speaking = u
        if u.start_frame is not None:
            await self.push_frame(u.start_frame)
        for frame in u.held:
            frame.pts += u.shift_ns
            await self.push_frame(frame)
        u.held.clear()

    async def _speech_finished(self, m: SpeechFinished) -> None:
        u = self._utterances.pop(m.utterance, None)
        if u is not None and self._speaking is u:
            self._speaking = None
        if u is not None and not m.interrupted:
            if u.shift_ns is None:  # shorter than one frame: it never started
                if u.start_frame is not None:
                    await self.push_frame(u.start_frame)
                for frame in u.held:
                    await self.push_frame(frame)
            if u.stop_frame is not None:
                await self.push_frame(u.stop_frame)
        if not self._utterances and self._open is None:
            self._idle.set()
