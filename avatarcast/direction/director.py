"""The directors: turn speech, its transcript and a free-text instruction into a plan for the avatar.

- ``RuleDirector`` (the offline default) writes a ``Storyboard`` deterministically and without any network: speech
  and silence segments from voice activity, emotions from the instruction (or, when it names none, from the
  transcript's sentiment), instructed actions at their anchors (start, end, after N seconds, on a quoted phrase's
  word times), small nods and brow raises on prosodic emphasis, blinks and gaze shifts at pauses, and a natural,
  seeded blink plan. ``RuleDirector.plan`` takes a ``PlanWindow``: what is known of a stretch of the timeline (the
  audio so far, words, instruction, whether the audio is complete). Offline calls it once over the whole recording
  (``storyboard``); live calls it again and again while an utterance streams in (``LiveDirector.stream``), so both
  place the same actions and emotions.
- ``LiveDirector`` plans keyframes a little ahead of playback for the live server: cheap (pure Python, no audio
  analysis beyond an RMS), continuous across calls, deterministic for a seed.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import uuid
from collections import deque
import multiprocessing
import os
import time
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from avatarcast.audio.alignment import align_transcript
from avatarcast.audio.prosody import (
    EMPHASIS_MIN_GAP_S,
    EMPHASIS_THRESHOLD_Z,
    PROSODY_STEP_S,
    Emphasis,
    _contours,
    _smooth,
)
from avatarcast.audio.prosody import Prosody, analyze_prosody
from avatarcast.audio.vad import speech_regions
from avatarcast.blueprint import build_blueprint
from avatarcast.core.errors import AudioError
from avatarcast.core.realtime import demote
from avatarcast.core.trajectory import interpolate_keyframes, linear
from avatarcast.core.types import AUDIO_RATE_HZ, AvatarState, Keyframe
from avatarcast.direction.instructions import ActionCue, Anchor, EmotionCue, ParsedInstruction, parse_instruction
from avatarcast.direction.storyboard import (
    ACTION_OFFSETS,
    ACTION_RAMP_S,
    DEFAULT_ACTION_DURATION_S,
    SHAKE_CYCLES,
    _BUMP_ACTIONS,
    EMOTION_OFFSETS,
    STATE_LIMITS,
    Action,
    ActionKind,
    Emotion,
    GazeShift,
    Segment,
    SegmentKind,
    Storyboard,
    _action_shape,
    resolve_action_overlaps,
)

log = logging.getLogger(__name__)

START_ACTION_S = 0.25
"""An action anchored "at the start" begins here (so it is visible in the first ~1.5 s)."""
END_MARGIN_S = 0.2
ANCHORED_EMOTION_S = 2.5
"""An emotion anchored at the start, the end or a time lasts this long."""
PHRASE_LEAD_S = 0.15
PHRASE_TAIL_S = 0.35
THROUGHOUT_ACTION_GAP_S = 3.0
PROSODIC_NOD_MIN_GAP_S = 1.4
PROSODIC_NOD_MIN_STRENGTH = 0.35
PROSODIC_BROW_MIN_STRENGTH = 0.6
BLINK_MIN_GAP_S = 2.0
BLINK_MAX_GAP_S = 6.0
BLINK_PAUSE_MIN_S = 0.25
GAZE_PAUSE_MIN_S = 0.4
EMPHASIS_CONTEXT_S = 0.5
"""Audio after an emphasis peak that decides it (the score's smoothing, the next frame, a stronger peak within
``EMPHASIS_MIN_GAP_S``). A plan over audio that is still arriving takes a peak only once this much audio after it
is known, so it finds the peaks that the plan over the whole recording finds."""
PLAN_AHEAD_S = 3.0
"""A window whose audio is still arriving is planned this far past its audio (or a second past its last known
word), so actions anchored there ("at the start", "after N seconds") keep their times instead of being squeezed
into the audio known so far."""
EMPHASIS_WARMUP_S = 0.5
"""Speech (voiced pitch and intensity frames) needed before the running baseline of the emphasis score is used:
no prosodic gesture before it."""
SENTIMENT_THRESHOLD = 0.3
"""|VADER compound| above which the transcript's sentiment sets the emotion when the instruction names none."""


@dataclass(frozen=True)
class TimedWord:
    """A word with its times, the shape of ``alignment.Word`` (used when word timings must be estimated)."""

    text: str
    start_s: float
    end_s: float


def _norm_token(text: str) -> str:
    return re.sub(r"[^a-z0-9']+", "", text.lower().replace("’", "'")).strip("'")


def _tokens(text: str) -> list[str]:
    return [t for t in (_norm_token(w) for w in text.split()) if t]


def find_phrase(words: Sequence[Any], phrase: str, after_s: float = -1.0) -> tuple[float, float] | None:
    """Start and end time of the first occurrence of ``phrase`` in ``words`` (case and punctuation ignored)."""
    target = _tokens(phrase)
    if not target:
        return None
    toks = [_norm_token(w.text) for w in words]
    n = len(target)
    for i in range(len(toks) - n + 1):
        if toks[i:i + n] == target and words[i].start_s >= after_s:
            return float(words[i].start_s), float(words[i + n - 1].end_s)
    return None


def estimate_word_times(transcript: str, regions: list[tuple[float, float]]) -> list[TimedWord]:
    """Spread the transcript's words over the speech regions in proportion to their length (a rough fallback
    when no forced alignment is available)."""
    raw = transcript.split()
    if not raw or not regions:
        return []
    weights = np.array([len(_norm_token(w)) + 1.0 for w in raw])
    total_speech = sum(b - a for a, b in regions)
    cum = np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * total_speech

    def to_time(s: float) -> float:
        acc = 0.0
        for a, b in regions:
            if s <= acc + (b - a) + 1e-9:
                return a + (s - acc)
            acc += b - a
        return regions[-1][1]

    return [TimedWord(w, round(to_time(cum[i]), 3), round(to_time(cum[i + 1]), 3)) for i, w in enumerate(raw)]


def _samples_of(audio: Any) -> tuple[np.ndarray, int]:
    if hasattr(audio, "samples"):
        return np.asarray(audio.samples, dtype=np.float32), int(getattr(audio, "rate_hz", AUDIO_RATE_HZ))
    return np.asarray(audio, dtype=np.float32).reshape(-1), AUDIO_RATE_HZ


def _speech_regions(samples: np.ndarray, rate_hz: int) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in speech_regions(samples, rate_hz)]


def _align(samples: np.ndarray, rate_hz: int, transcript: str) -> list[Any] | None:
    words, _phones = align_transcript(samples, rate_hz, transcript)
    return list(words)


def _sentiment(text: str) -> float:
    """VADER compound score in [-1, 1] (0 when vaderSentiment is missing or the text is empty)."""
    if not text.strip():
        return 0.0
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:  # pragma: no cover - a declared dependency
        return 0.0
    global _VADER
    if _VADER is None:
        _VADER = SentimentIntensityAnalyzer()
    return float(_VADER.polarity_scores(text)["compound"])


_VADER = None


CONTOUR_CONTEXT_S = 1.0
"""A growing window's new audio is analysed with this much audio before it (as the offline analysis joins its
30 s pieces: 1 s of overlap); frames within ``CONTOUR_REDO_S`` of the old end are measured again."""
CONTOUR_REDO_S = 0.5
_CONTOUR_CACHE: dict[Any, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}
_CONTOUR_CACHE_SIZE = 32


def _stream_contours(key: Any, samples: np.ndarray, rate_hz: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pitch and intensity contours of ``samples`` (see ``prosody._contours``), measured only on what is new
    since the last call with the same ``key`` when ``samples`` extends what that call had."""
    import parselmouth  # a declared dependency, imported where prosody imports it

    n = len(samples)
    cached = _CONTOUR_CACHE.pop(key, None)
    if cached is not None and cached[0] <= n and cached[0] > int(CONTOUR_CONTEXT_S * rate_hz):
        n0, t0, f00, db0 = cached
        split = n0 / rate_hz - CONTOUR_REDO_S
        lo = max(0, n0 - int((CONTOUR_REDO_S + CONTOUR_CONTEXT_S) * rate_hz))
        t1, f01, db1 = _contours(parselmouth, samples[lo:], rate_hz)
        t1 = t1 + lo / rate_hz
        old, new = t0 < split, t1 >= split
        out = (np.concatenate([t0[old], t1[new]]), np.concatenate([f00[old], f01[new]]),
               np.concatenate([db0[old], db1[new]]))
    else:
        out = _contours(parselmouth, samples, rate_hz)
    _CONTOUR_CACHE[key] = (n, *out)
    while len(_CONTOUR_CACHE) > _CONTOUR_CACHE_SIZE:
        _CONTOUR_CACHE.pop(next(iter(_CONTOUR_CACHE)))
    return out


def _running_z(x: np.ndarray, mask: np.ndarray, warmup: int) -> np.ndarray:
    """Each frame's z-score against the frames before it (and itself) where ``mask`` holds: a baseline that only
    looks back, so it is the same whether the audio after the frame is known or not. 0 until ``warmup`` frames."""
    ok = mask & np.isfinite(x)
    v = np.where(ok, x, 0.0).astype(np.float64)
    n = np.cumsum(ok)
    mean = np.cumsum(v) / np.maximum(n, 1)
    var = np.cumsum(v * v) / np.maximum(n, 1) - mean * mean
    sd = np.sqrt(np.maximum(var, 0.0))
    sd[sd < 1e-6] = 1.0
    z = (x - mean) / sd
    z[n < warmup] = 0.0
    return np.where(np.isfinite(z), z, 0.0)


def stream_emphasis(prosody: Any, regions: Sequence[tuple[float, float]],
                    known_until_s: float | None = None) -> list[Emphasis]:
    """Emphasis peaks (pitch and intensity both above the speaker's baseline) that do not depend on audio later
    than ``EMPHASIS_CONTEXT_S`` after them: the baseline is the speech before each frame, and a peak yields only to a
    stronger one within ``EMPHASIS_MIN_GAP_S``. ``known_until_s`` (audio still arriving): only peaks decided by the
    audio up to then."""
    times = np.asarray(prosody.times_s, np.float64)
    if len(times) < 3:
        return []
    in_speech = np.zeros(len(times), dtype=bool)
    for a, b in regions:
        in_speech |= (times >= a) & (times < b)
    f0 = np.asarray(prosody.f0_hz, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        semitones = 12.0 * np.log2(f0 / 100.0)
    warmup = int(round(EMPHASIS_WARMUP_S / PROSODY_STEP_S))
    z_pitch = _running_z(semitones, in_speech, warmup // 2)
    z_int = _running_z(np.asarray(prosody.intensity_db, np.float64), in_speech, warmup)
    score = _smooth(0.5 * z_pitch + 0.5 * z_int, 9)
    score[~in_speech] = -np.inf
    last = len(times) - 2
    if known_until_s is not None:
        last = min(last, int(np.searchsorted(times, known_until_s - EMPHASIS_CONTEXT_S, side="right")) - 1)
    cand = [i for i in range(1, last + 1)
            if score[i] >= EMPHASIS_THRESHOLD_Z and score[i] >= score[i - 1] and score[i] > score[i + 1]]
    out: list[Emphasis] = []
    for i in cand:
        near = [j for j in cand if j != i and abs(times[j] - times[i]) < EMPHASIS_MIN_GAP_S]
        if any(score[j] > score[i] or (score[j] == score[i] and j < i) for j in near):
            continue
        out.append(Emphasis(float(times[i]), float(np.clip((score[i] - EMPHASIS_THRESHOLD_Z) / 2.0 + 0.3, 0.0, 1.0))))
    return out


@dataclass
class PlanWindow:
    """What is known of a stretch of the timeline, for ``RuleDirector.plan``.

    ``audio`` runs from the window's time 0 to what has arrived; ``final`` says it is complete (offline: always;
    live: once ``speech.end`` came). ``words`` may reach past the audio (TTS word timings arrive ahead of it). While
    the audio is not complete, "at the end" waits, prosodic gestures wait until ``EMPHASIS_CONTEXT_S`` of audio
    after them is known, nothing is reported as missing yet, and the plan reaches ``PLAN_AHEAD_S`` past the
    audio."""

    audio: Any
    transcript: str | None = None
    instruction: str | None = None
    words: list[Any] | None = None
    final: bool = True
    start_s: float | None = None
    """Where "at the start" and "after N seconds" count from (default: the recording's start; live: the time an
    instruction given mid-utterance arrived)."""
    key: Any = None
    """Names a window that grows (live: one utterance): the pitch and intensity of the audio planned before are
    kept, and only the new audio (with ``CONTOUR_CONTEXT_S`` before it) is analysed again."""
    one_shot: bool = True
    """False: leave out the instruction's one-time cues (start, end, a time): live, they apply to the first
    utterance after the instruction only."""


# ---- the offline director -----------------------------------------------------------------------------------------

@dataclass
class _Span:
    start_s: float
    end_s: float
    emotion: Emotion
    intensity: float


class RuleDirector:
    """Deterministic, offline storyboard writer (see the module docstring)."""

    def __init__(self, seed: int = 0, prosody_actions: bool = True) -> None:
        self.seed = seed
        self.prosody_actions = prosody_actions
        self._start_s: float | None = None

    def storyboard(self, audio: Any, transcript: str | None = None, instruction: str | None = None,
                   words: list[Any] | None = None) -> Storyboard:
        """The plan for a whole recording (``plan`` over one complete window)."""
        return self.plan(PlanWindow(audio=audio, transcript=transcript, instruction=instruction, words=words))

    def plan(self, window: PlanWindow) -> Storyboard:
        """Segments, actions, gaze and blinks for what is known of a stretch of the timeline (see ``PlanWindow``).
        A window whose audio is still arriving gets a storyboard that reaches a little past the last known word."""
        samples, rate_hz = _samples_of(window.audio)
        known = len(samples) / float(rate_hz)
        final = window.final
        if final and known <= 0.05:
            raise AudioError(f"the audio is {known:.3f} s long; the director needs at least 0.05 s of audio")
        transcript, instruction = window.transcript, window.instruction
        warnings: list[str] = []
        parsed = parse_instruction(instruction)
        warnings.extend(parsed.warnings)
        if not window.one_shot:
            keep = lambda c: c.anchor.kind in ("phrase", "throughout") or (  # noqa: E731
                isinstance(c, EmotionCue) and c.anchor.kind == "none")
            parsed = ParsedInstruction(text=parsed.text, emotions=[c for c in parsed.emotions if keep(c)],
                                       actions=[c for c in parsed.actions if keep(c)], warnings=parsed.warnings)
        self._start_s = window.start_s
        regions = _speech_regions(samples, rate_hz) if known > 0.05 else []
        if final:
            words = self._words(samples, rate_hz, transcript, window.words, regions, parsed, warnings)
        else:  # no forced alignment of a partial recording: only the words given
            words = sorted(window.words or [], key=lambda w: w.start_s)
        duration = known if final else max(known + PLAN_AHEAD_S,
                                           max((float(w.end_s) for w in words), default=0.0) + 1.0)

        contours = _stream_contours(window.key, samples, rate_hz) if window.key is not None and known >= 0.1 else None
        prosody = analyze_prosody(samples, rate_hz, regions, contours) if known >= 0.1 else \
            Prosody(np.zeros(0), np.zeros(0), np.zeros(0))
        emphasis = stream_emphasis(prosody, regions, None if final else known)
        rng = random.Random(self.seed)

        segments = self._segments(duration, regions, words, transcript, parsed, prosody, warnings, final)
        actions = self._actions(duration, regions, words, parsed, prosody, emphasis, warnings, final)
        gaze = self._gaze(duration, prosody.pauses, regions, rng, final)
        blinks = natural_blinks(duration, prosody.pauses, rng)
        if final:
            for w in warnings:
                log.warning("director: %s", w)
        return Storyboard(
            duration_s=round(duration, 4), segments=segments, actions=actions, gaze=gaze, blink_times_s=blinks,
            director="rules", instruction=instruction, warnings=warnings[:200] if final else [],
        )

    # -- inputs --
    def _words(self, samples, rate_hz, transcript, words, regions, parsed: ParsedInstruction,
               warnings: list[str]) -> list[Any]:
        if words:
            return sorted(words, key=lambda w: w.start_s)
        if not transcript or not transcript.strip():
            if any(c.anchor.kind == "phrase" for c in [*parsed.emotions, *parsed.actions]):
                warnings.append("the instruction quotes a phrase but neither a transcript nor word timings were "
                                "given; give the `transcript` so phrases can be found")
            return []
        try:
            aligned = _align(samples, rate_hz, transcript)
        except Exception as exc:  # alignment is best effort: the estimate below still places phrases
            aligned = None
            warnings.append(f"forced alignment failed ({exc}); word times are estimated from the transcript")
        if aligned:
            return aligned
        if aligned is None and not any("forced alignment failed" in w for w in warnings):
            warnings.append("forced alignment is not available; word times are estimated from the transcript")
        return estimate_word_times(transcript, regions)

    # -- segments and emotions --
    def _segments(self, duration, regions, words, transcript, parsed: ParsedInstruction, prosody,
                  warnings: list[str], final: bool = True) -> list[Segment]:
        base = [c for c in parsed.emotions if c.anchor.kind in ("throughout", "none")]
        anchored = [c for c in parsed.emotions if c.anchor.kind not in ("throughout", "none")]
        # Speech/silence timeline.
        pieces: list[tuple[float, float, SegmentKind]] = []
        t = 0.0
        for a, b in regions:
            a, b = max(a, t), min(b, duration)
            if b - a <= 1e-3:
                continue
            if a - t > 1e-3:
                pieces.append((t, a, SegmentKind.silence))
            pieces.append((a, b, SegmentKind.speech))
            t = b
        if duration - t > 1e-3:
            pieces.append((t, duration, SegmentKind.silence))
        if not pieces:
            pieces = [(0.0, duration, SegmentKind.silence)]
        # Emotion overlays from anchored cues: their spans split the timeline.
        overlays: list[_Span] = []
        for cue in anchored:
            span = self._anchor_span(cue.anchor, duration, words, warnings, f"emotion '{cue.emotion.value}'")
            if cue.anchor.kind == "end" and not final:
                span = None
            if span is not None:
                overlays.append(_Span(span[0], span[1], cue.emotion, cue.intensity))
        cuts = sorted({round(x, 4) for s in overlays for x in (s.start_s, s.end_s) if 0.0 < x < duration})
        split: list[tuple[float, float, SegmentKind]] = []
        for a, b, kind in pieces:
            edges = [a] + [c for c in cuts if a + 0.05 < c < b - 0.05] + [b]
            split.extend((edges[i], edges[i + 1], kind) for i in range(len(edges) - 1))
        segments: list[Segment] = []
        text_energy = prosody.energy
        for a, b, kind in split:
            text = self._text_between(words, a, b) if kind == SegmentKind.speech else ""
            emotion, level = self._base_emotion(base, text, transcript)
            for ov in overlays:
                if ov.start_s <= (a + b) / 2 < ov.end_s:
                    emotion, level = ov.emotion, ov.intensity
            # Energy scales how strongly the emotion shows (0.8x quiet .. 1.1x loud); silence shows it softer.
            local = prosody.energy_between(a, b) if kind == SegmentKind.speech else text_energy
            intensity = level * (0.8 + 0.3 * local) * (1.0 if kind == SegmentKind.speech else 0.75)
            segments.append(Segment(start_s=round(a, 4), end_s=round(b, 4), kind=kind, text=text[:4000],
                                    emotion=emotion, intensity=round(min(1.0, max(0.0, intensity)), 3)))
        segments[0] = segments[0].model_copy(update={"start_s": 0.0})
        segments[-1] = segments[-1].model_copy(update={"end_s": round(duration, 4)})
        return segments

    @staticmethod
    def _text_between(words: Sequence[Any], a: float, b: float) -> str:
        return " ".join(w.text for w in words if a <= (w.start_s + w.end_s) / 2 < b)

    @staticmethod
    def _base_emotion(base: list[EmotionCue], text: str, transcript: str | None) -> tuple[Emotion, float]:
        if base:
            cue = max(base, key=lambda c: c.intensity)
            return cue.emotion, cue.intensity
        score = _sentiment(text or "")
        if abs(score) < SENTIMENT_THRESHOLD and transcript and not text:
            score = _sentiment(transcript)
        if score >= SENTIMENT_THRESHOLD:
            return Emotion.happy, 0.25 + 0.4 * score
        if score <= -SENTIMENT_THRESHOLD:
            return Emotion.sad, 0.25 + 0.4 * -score
        return Emotion.neutral, 0.4

    def _anchor_span(self, anchor: Anchor, duration: float, words, warnings: list[str],
                     what: str) -> tuple[float, float] | None:
        if anchor.kind == "start":
            return 0.0, min(ANCHORED_EMOTION_S, duration)
        if anchor.kind == "end":
            return max(0.0, duration - ANCHORED_EMOTION_S), duration
        if anchor.kind == "time":
            t = float(anchor.time_s or 0.0)
            if t >= duration:
                warnings.append(f"{what} at {t:g} s is past the end of the audio ({duration:.2f} s); ignored")
                return None
            return t, min(duration, t + ANCHORED_EMOTION_S)
        if anchor.kind == "phrase":
            found = find_phrase(words, anchor.phrase or "")
            if found is None:
                warnings.append(f"phrase '{anchor.phrase}' for {what} was not found in the words; ignored")
                return None
            return max(0.0, found[0] - PHRASE_LEAD_S), min(duration, found[1] + PHRASE_TAIL_S)
        return 0.0, duration

    # -- actions --
    def _actions(self, duration, regions, words, parsed: ParsedInstruction, prosody, emphasis: list[Emphasis],
                 warnings: list[str], final: bool = True) -> list[Action]:
        instructed: list[Action] = []
        first_speech = regions[0][0] if regions else 0.0
        for cue in parsed.actions:
            if not final and (cue.anchor.kind == "end" or (cue.anchor.kind in ("start", "none") and not regions)):
                continue  # the end is not known yet; "at the start" waits for the first speech
            instructed.extend(self._place(cue, duration, first_speech, regions, words, emphasis, warnings))
        parts_busy = [(a.body_part, a.time_s - 0.3, a.end_s + 0.3) for a in instructed]
        prosodic: list[Action] = []
        if self.prosody_actions:
            last_nod = -10.0
            for e in emphasis:
                if e.strength >= PROSODIC_BROW_MIN_STRENGTH:
                    kind, dur = ActionKind.raise_brows, 0.6
                elif e.strength >= PROSODIC_NOD_MIN_STRENGTH and e.time_s - last_nod >= PROSODIC_NOD_MIN_GAP_S:
                    kind, dur = ActionKind.nod, 0.5
                    last_nod = e.time_s
                else:
                    continue
                start = max(0.0, e.time_s - dur / 2)
                if start + dur > duration:
                    continue
                a = Action(kind=kind, time_s=round(start, 3), duration_s=dur,
                           intensity=round(min(0.5, 0.15 + 0.3 * e.strength) * (0.7 + 0.6 * prosody.energy), 3))
                if any(p == a.body_part and a.time_s < e1 and a.end_s > s0 for p, s0, e1 in parts_busy):
                    continue
                prosodic.append(a)
        resolved, notes = resolve_action_overlaps(instructed + prosodic, duration)
        for n in notes:
            log.debug("director: %s", n)
        warnings.extend(n for n in notes if n.startswith("dropped"))
        return resolved

    def _place(self, cue: ActionCue, duration, first_speech, regions, words, emphasis: list[Emphasis],
               warnings: list[str]) -> list[Action]:
        dur = DEFAULT_ACTION_DURATION_S[cue.kind]
        if cue.intensity >= 0.85 and cue.kind in (ActionKind.nod, ActionKind.shake):
            dur *= 1.2
        dur = min(dur, duration)
        k = cue.anchor.kind

        def at(t: float) -> Action:
            t = min(max(0.0, t), max(0.0, duration - dur))
            return Action(kind=cue.kind, time_s=round(t, 3), duration_s=round(dur, 3), intensity=cue.intensity)

        start = getattr(self, "_start_s", None)
        if k == "start" or k == "none":
            return [at(min(START_ACTION_S, first_speech + START_ACTION_S) if start is None else start + START_ACTION_S)]
        if k == "end":
            last_speech_end = regions[-1][1] if regions else duration
            return [at(min(duration - END_MARGIN_S, last_speech_end) - dur)]
        if k == "time":
            t = float(cue.anchor.time_s or 0.0) + (start or 0.0)
            if t >= duration:
                warnings.append(f"{cue.kind.value} at {t:g} s is past the end of the audio ({duration:.2f} s); "
                                "ignored")
                return []
            return [at(t)]
        if k == "phrase":
            found = find_phrase(words, cue.anchor.phrase or "")
            if found is None:
                warnings.append(f"phrase '{cue.anchor.phrase}' for {cue.kind.value} was not found in the words; "
                                "ignored")
                return []
            # Peak on the phrase's first word: start the gesture a little before it.
            lead = dur / 2 if cue.kind in (ActionKind.nod, ActionKind.raise_brows, ActionKind.wink) else 0.1
            return [at(found[0] - lead + 0.1)]
        # throughout: on emphasis peaks inside speech, at least THROUGHOUT_ACTION_GAP_S apart (or evenly spaced).
        times = [e.time_s - dur / 2 for e in emphasis]
        if not times:
            times = [a + 0.3 for a, _b in regions]
        out: list[Action] = []
        last = -1e9
        for t in sorted(times) or [START_ACTION_S]:
            if t - last >= THROUGHOUT_ACTION_GAP_S and 0 <= t <= duration - dur:
                out.append(at(t))
                last = t
        if not out:
            out.append(at(START_ACTION_S))
        return out

    # -- gaze --
    @staticmethod
    def _gaze(duration, pauses, regions, rng: random.Random, final: bool = True) -> list[GazeShift]:
        shifts: list[GazeShift] = [GazeShift(time_s=0.0, x=0.0, y=0.0)]
        gaps = list(pauses)
        if regions:
            if regions[0][0] > GAZE_PAUSE_MIN_S:
                gaps.insert(0, (0.0, regions[0][0]))
            if final and duration - regions[-1][1] > GAZE_PAUSE_MIN_S:
                gaps.append((regions[-1][1], duration))
        for a, b in gaps:
            if b - a < GAZE_PAUSE_MIN_S:
                continue
            x = rng.choice((-1, 1)) * rng.uniform(0.15, 0.3)
            y = rng.uniform(-0.12, 0.05)
            shifts.append(GazeShift(time_s=round(a + 0.05, 3), x=round(x, 3), y=round(y, 3)))
            back = b - 0.1
            if back < duration - 0.05 and back > a + 0.2:
                shifts.append(GazeShift(time_s=round(back, 3), x=0.0, y=0.0))
        shifts.sort(key=lambda g: g.time_s)
        return shifts[:5000]


def natural_blinks(duration_s: float, pauses: Iterable[tuple[float, float]], rng: random.Random,
                   start_s: float = 0.0) -> list[float]:
    """Blink onsets every 2-6 s (seeded), plus one at each pause, never two within 0.6 s."""
    times: list[float] = []
    for a, b in pauses:
        if b - a >= BLINK_PAUSE_MIN_S:
            times.append(a + min(0.08, (b - a) / 3))
    t = start_s + rng.uniform(0.5, 2.5)
    while t < duration_s - 0.2:
        times.append(t)
        t += rng.uniform(BLINK_MIN_GAP_S, BLINK_MAX_GAP_S)
    out: list[float] = []
    for t in sorted(times):
        if 0.0 <= t < duration_s - 0.15 and (not out or t - out[-1] >= 0.6):
            out.append(round(t, 3))
    return out


# ---- the live director ----------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """Keyframes in ``(t0, t0 + horizon]`` and blink onsets in the same window, on the session timeline."""

    keyframes: list[Keyframe] = field(default_factory=list)
    blink_times_s: list[float] = field(default_factory=list)


LIVE_SPEAKING_SPACING_S = (0.6, 1.0)
LIVE_IDLE_SPACING_S = (1.2, 2.0)
LIVE_MODE_SWITCH_S = 0.35
"""When speech starts or stops, the next keyframe (the new pose) comes this soon."""
INTERRUPT_TRANSITION_S = 0.3
LIVE_MIN_SPACING_S = 0.35
LIVE_WORD_MEMORY = 64
LIVE_KEYFRAME_GAP_S = 0.04
"""Closest two keyframes of the live plan may be (an action's onset, peak and end each get one)."""
LIVE_REPLAN_S = 0.4
"""New audio of the utterance being played that makes the live director plan it again (words, an instruction or
the end of the speech do so at once)."""
LIVE_PLAN_WINDOW_S = 30.0
"""The live plan of a longer utterance covers its last this many seconds (a plan's cost grows with its audio)."""
LIVE_BUSY_REPLAN_S = 1.2
"""The same while the machine is short of CPU (plans cost tens of milliseconds of a core each)."""
LIVE_LATE_S = 0.1
"""A planned action whose start has been committed already (its audio or words came late) still starts at the
first frame not yet committed, if its peak is at most this far behind it; else it is dropped."""
LIVE_LLM_DEADLINE_S = 10.0
"""How long an utterance's LLM plan may take to still be used (it replaces only what is not committed yet)."""
LIVE_RMS_REF = 0.08
"""RMS of normal speech at 16 kHz float; louder audio makes the speaking motion a little larger."""
LIVE_LOUDNESS_STEP_S = 0.2
"""The loudness estimate moves 30 % of the way to the loudness of each this much speech a plan is given (a plan over
a longer window moves it further)."""

LISTENING_STATE = AvatarState(head_roll_deg=3.0, head_pitch_deg=1.5, head_scale=1.02, smile=0.15, brow_raise=0.1)
"""Attentive: slight tilt, slight lean in, a soft smile, eyes on the viewer."""


class LiveDirector:
    """Plans keyframes and blinks ahead of playback for the live path (well under a millisecond per call).

    Keyframes come every 0.6-1.0 s while speaking and 1.2-2 s when idle (the base motion), with a pose change within
    0.35 s when speech starts or stops, plus a keyframe at every action's onset, peak(s) and end, so no gesture can
    fall between two keyframes. A keyframe's state is worked out when it is committed, from the actions and emotions
    known then. Every keyframe returned is committed: the next plan continues from the last one (``rewind`` takes
    back the ones after a time, when the caller has not used them yet). Each call returns at least one keyframe
    (when nothing is due inside the window, the point on the way to the next one, at ``t0 + horizon``), so the
    caller can always render up to its horizon. The same seed and the same calls give the same plans.

    The utterance being played (``stream``): the rule director's ``plan`` runs on what is known of it (its audio so
    far, its words, the instruction) again and again as it arrives, in a worker process, and each new plan replaces
    the actions and emotions of the part not committed yet: prosodic nods and brow raises, sentiment, instruction
    anchors, exactly as offline. Without ``stream``, instructions act on the words given to ``plan_next``:
    "at the start" means the next utterance's start (or now, if one is under way); "after N seconds" counts from
    that start; "at the end" is when speech stops; "when you say 'X'" fires on the incoming words; emotions without
    an anchor hold until the next instruction.
    """

    def __init__(self, instruction: str | None = None, seed: int = 0, *, background: bool = True,
                 prosody_actions: bool = True, llm: Any = None, llm_deadline_s: float = LIVE_LLM_DEADLINE_S,
                 fps: float = 25.0) -> None:
        """``llm``: an ``LLMPlanner`` (an ``LLMDirector`` asked in the background), asked once an utterance's
        first plan is made; its plan replaces the rule-based one for the part not yet committed when it arrives within
        ``llm_deadline_s``, and the utterance keeps it."""
        self.seed = seed
        self.fps = float(fps)
        self.background = background
        self.llm = llm
        self.llm_deadline_s = llm_deadline_s
        self._rules = RuleDirector(seed=seed, prosody_actions=prosody_actions)
        self._rng = random.Random(seed)
        self._parsed = ParsedInstruction(text="")
        self._pending_instruction: str | None = instruction
        self._instruction_text: str | None = None
        self.warnings: list[str] = []
        self._anchor = Keyframe(0.0, LISTENING_STATE)
        self._anchor_base: dict[str, float] = _state_values(LISTENING_STATE)
        self._history: deque[Keyframe] = deque([self._anchor], maxlen=16)
        self._next: _Pending | None = None
        self._next_mode: bool | None = None
        self._speaking = False
        self._utterance_start: float | None = None
        self._actions: list[Action] = []  # absolute times, sorted
        self._emotion_spans: list[_Span] = []
        self._base_emotion: tuple[Emotion, float] = (Emotion.neutral, 0.0)
        self._await_start: list[ActionCue | EmotionCue] = []
        self._await_end: list[ActionCue | EmotionCue] = []
        self._phrase_cues: list[ActionCue | EmotionCue] = []
        self._words: deque[Any] = deque(maxlen=LIVE_WORD_MEMORY)
        self._seen_words: set[tuple[str, float]] = set()
        self._fired: set[tuple[int, float]] = set()
        self._next_blink = self._rng.uniform(1.0, 3.0)
        self._last_blink = -10.0
        self._loudness = 0.5
        self._instruction_epoch = 0
        self._throughout: list[ActionCue] = []
        self._last_throughout = -1e9
        self._stream: _Stream | None = None
        self._stream_serial = 0
        self._token = uuid.uuid4().hex  # names its utterances in the planner's contour cache
        self._one_shot_epoch = -1  # the instruction whose one-time cues an utterance has used
        self._mid_start_s: float | None = None  # session time an instruction came in mid-utterance
        self._rewind_overlay: tuple[float, dict[str, float]] | None = None
        self.plans_adopted = 0
        self.llm_requests = 0  # utterances the model was asked about
        self.llm_plans_adopted = 0  # of them, those whose answer came in time and was used
        self._blueprint_times: list[float] = []  # the live horizon's blueprint keyframes (session times)
        if background:
            _planner_pool()

    # -- public API --
    def info(self) -> dict[str, Any]:
        """Who plans (``rules``, or ``llm`` with the rule plan until the model's answer), and how often."""
        info: dict[str, Any] = {"kind": "llm" if self.llm is not None else "rules", "plans": self.plans_adopted}
        if self.llm is not None:
            info |= {"llm_requests": self.llm_requests, "llm_plans": self.llm_plans_adopted}
        return info

    def set_instruction(self, text: str | None) -> None:
        """Use this instruction from the next plan on (it replaces the previous one)."""
        self._pending_instruction = text or ""

    @property
    def actions(self) -> list[Action]:
        """The actions planned on the session timeline (recent and upcoming), in time order."""
        return list(self._actions)

    def emotion_at(self, t_s: float) -> tuple[Emotion, float]:
        """The emotion (and its intensity) the plan shows at ``t_s``."""
        emotion, level = self._base_emotion
        for s in self._emotion_spans:
            if s.start_s <= t_s < s.end_s:
                emotion, level = s.emotion, s.intensity
        return emotion, level

    def interrupt(self, t_s: float) -> None:
        """Barge-in: drop what was planned after ``t_s`` and move to the listening pose over a short transition."""
        here = self.state_on_path(t_s)
        while self._history and self._history[-1].time_s >= t_s:
            self._history.pop()
        self._anchor = Keyframe(t_s, here)
        self._anchor_base = _state_values(here)
        self._history.append(self._anchor)
        self._next = _Pending(t_s + INTERRUPT_TRANSITION_S, self._base(False, True), listening=True)
        self._next_mode = False
        self._speaking = False
        self._utterance_start = None
        self._actions = [a for a in self._actions if a.end_s <= t_s]
        self._emotion_spans = [s for s in self._emotion_spans if s.end_s <= t_s]
        self._stream = None

    def apply_storyboard(self, storyboard: Storyboard, offset_s: float) -> None:
        """Adopt a storyboard (e.g. an LLM plan that arrived in time) for an utterance starting at ``offset_s``:
        its actions and emotions replace the live director's own from the next keyframe on."""
        self._adopt(storyboard, offset_s, self._anchor.time_s)

    def stream(self, key: Any, offset_s: float, audio16: np.ndarray, words: Sequence[Any] | None, ended: bool,
               committed_s: float, busy: bool = False) -> float | None:
        """What is known of the utterance being played: ``key`` names it, it started at session time
        ``offset_s``, ``audio16`` is its 16 kHz audio so far, ``words`` its word timings (utterance times),
        ``ended`` says the audio is complete; the caller has used the plan up to ``committed_s``; ``busy``: the
        machine is short of CPU, new audio alone makes a new plan only every ``LIVE_BUSY_REPLAN_S``.

        Plans the utterance again when enough is new (see ``LIVE_REPLAN_S``; on a worker thread unless the director
        was made with ``background=False``: in a worker process) and adopts a finished plan. Returns the time after which the caller
        must drop the keyframes it has and call ``rewind`` (a new plan changed what the director had committed after
        ``committed_s``), or None."""
        if self._pending_instruction is not None:
            self._apply_instruction(self._pending_instruction)
            self._pending_instruction = None
        st = self._stream
        if st is None or st.key != key:
            one_shot = self._one_shot_epoch != self._instruction_epoch
            self._one_shot_epoch = self._instruction_epoch
            self._stream_serial += 1
            st = self._stream = _Stream(key, float(offset_s), one_shot=one_shot, serial=self._stream_serial)
            if self.llm is not None:
                self.llm.cancel()  # an answer for the utterance before is of no use now
            self._await_start, self._await_end = [], []  # the plan places them
        words = list(words or [])
        n = len(audio16)
        if st.llm is not None:
            sb = st.llm.poll()
            if sb is not None and not st.llm_used:
                st.llm_used = True  # the utterance keeps the model's plan: no more rule-based plans for it
                self.llm_plans_adopted += 1
                return self._adopt(sb, st.offset_s + st.llm_shift, committed_s)
            if st.llm_used:
                return None
        changed = (len(words) != st.words or ended != st.ended or self._instruction_epoch != st.epoch)
        step = LIVE_BUSY_REPLAN_S if busy else LIVE_REPLAN_S
        enough = n - st.samples >= step * AUDIO_RATE_HZ or (st.samples == 0 and n >= 0.1 * AUDIO_RATE_HZ)
        if (st.job is None and (changed or enough) and (n >= 0.1 * AUDIO_RATE_HZ or ended or words)
                and time.monotonic() >= _PLANNER_DOWN_UNTIL[0]):
            start = None
            if self._mid_start_s is not None and st.epoch_started == self._instruction_epoch:
                start = self._mid_start_s - st.offset_s
            # a long utterance is planned on its last LIVE_PLAN_WINDOW_S (the plan's cost stays bounded)
            w0 = max(0, n - int(LIVE_PLAN_WINDOW_S * AUDIO_RATE_HZ))
            shift = w0 / float(AUDIO_RATE_HZ)
            in_window = words if not w0 else [
                TimedWord(str(w.text), float(w.start_s) - shift, float(w.end_s) - shift)
                for w in words if float(w.end_s) > shift]
            one_shot = (st.one_shot or start is not None) and not w0
            window = PlanWindow(audio=np.asarray(audio16[w0:n], np.float32), words=in_window,
                                instruction=self._instruction_text, final=ended,
                                start_s=None if start is None or w0 else start, one_shot=one_shot,
                                key=(self._token, st.serial, w0))
            st.samples, st.words, st.ended, st.epoch = n, len(words), ended, self._instruction_epoch
            st.window, st.shift = window, shift
            if self.background:
                try:
                    st.job = _planner_pool().submit(plan_with_keyframes, self._rules, window, self.fps)
                except Exception as exc:  # the worker process is gone: a new one, after a pause
                    _planner_failed(exc)
            else:
                return self._adopt_safely(lambda: plan_with_keyframes(self._rules, window, self.fps),
                                          st.offset_s + shift, committed_s)
        if st.job is not None and st.job.done():
            job, st.job = st.job, None
            return self._adopt_safely(job.result, st.offset_s + st.shift, committed_s)
        return None

    def _ask_llm(self, st: "_Stream", draft: Storyboard) -> None:
        """Ask the model once per utterance, with the words it has (TTS timings come ahead of the audio)."""
        if self.llm is None or st.llm is not None or st.window is None or not (st.window.words or st.window.final):
            return
        st.llm, st.llm_shift = self.llm, st.shift
        self.llm_requests += 1
        st.llm.submit_window(st.window, draft, self.llm_deadline_s)

    def rewind(self, t_s: float, state: AvatarState) -> None:
        """Take back the keyframes after ``t_s`` (the caller has not used them): the plan goes on from ``state`` at
        ``t_s``, with the actions and emotions known now."""
        while len(self._history) > 1 and self._history[-1].time_s >= t_s - 1e-9:
            self._history.pop()
        old = self._rewind_overlay[1] if self._rewind_overlay is not None else self._overlay(t_s)
        self._rewind_overlay = None
        values = _state_values(state)
        self._anchor = Keyframe(t_s, state)
        self._anchor_base = {k: v - old.get(k, 0.0) for k, v in values.items()}
        self._history.append(self._anchor)
        if self._next is not None and self._next.time_s <= t_s + LIVE_KEYFRAME_GAP_S:
            self._next = self._make_next(t_s, self._speaking)

    def plan_next(self, t0_s: float, horizon_s: float, speaking: bool, audio: np.ndarray | None = None,
                  words: list[Any] | None = None) -> Plan:
        """Keyframes (times in ``(t0_s, t0_s + horizon_s]``) and blink onsets for the next stretch."""
        end = t0_s + max(0.0, horizon_s)
        if self._pending_instruction is not None:
            self._apply_instruction(self._pending_instruction)
            self._pending_instruction = None
        if audio is not None and len(audio):
            rms = float(np.sqrt(np.mean(np.square(np.asarray(audio, dtype=np.float32)))))
            keep = 0.7 ** (len(audio) / 16000.0 / LIVE_LOUDNESS_STEP_S)
            self._loudness = keep * self._loudness + (1.0 - keep) * min(1.0, rms / LIVE_RMS_REF)
        self._on_speaking(t0_s, speaking)
        if words and self._stream is None:
            self._on_words(words)
        if self._throughout and speaking and self._stream is None:
            self._schedule_throughout(t0_s, end)
        if self._anchor.time_s < t0_s - 2.0 * LIVE_IDLE_SPACING_S[1]:
            # The caller skipped ahead (a gap in calls): continue from the pose the path would have reached.
            here = self.state_on_path(t0_s)
            self._anchor = Keyframe(t0_s, here)
            self._anchor_base = _state_values(here)
            self._history.append(self._anchor)
            self._next = None
        if self._next is None or (self._next_mode != speaking and self._next.time_s > t0_s + LIVE_MODE_SWITCH_S):
            t = max(self._anchor.time_s + 0.25, t0_s + (LIVE_MODE_SWITCH_S if self._next is not None else
                                                       self._spacing(speaking)))
            self._next = _Pending(t, self._base(speaking))
            self._next_mode = speaking
        out: list[Keyframe] = []
        while True:
            kf, regular = self._upcoming()
            if kf.time_s > end:
                break
            if kf.time_s > t0_s:
                out.append(kf)
            self._commit(kf, regular, speaking)
        if not out and end > t0_s and end > self._anchor.time_s:
            kf, regular = self._upcoming()
            if regular and kf.time_s - end < LIVE_MIN_SPACING_S:
                # The next keyframe is due just after the window: bring it forward rather than leave a sliver.
                kf = Keyframe(round(end, 4), self._pose(end, self._next.base))
                self._commit(kf, True, speaking)
            else:
                span = kf.time_s - self._anchor.time_s
                u = (end - self._anchor.time_s) / span if span > 0 else 1.0
                base = self._lerp_base(end)
                kf = Keyframe(round(end, 4), self._anchor.state.lerp(kf.state, u))
                self._anchor = kf
                self._anchor_base = base
                self._history.append(kf)
            out.append(kf)
        blinks: list[float] = []
        while self._next_blink <= end:
            if self._next_blink > t0_s:
                blinks.append(round(self._next_blink, 4))
                self._last_blink = self._next_blink
            lo, hi = (2.5, 5.0) if speaking else (BLINK_MIN_GAP_S, BLINK_MAX_GAP_S)
            self._next_blink += self._rng.uniform(lo, hi)
        self._history_trim(t0_s)
        return Plan(keyframes=out, blink_times_s=blinks)

    # -- internals: the rolling plan --
    def _adopt_safely(self, make: Any, offset_s: float, committed_s: float) -> float | None:
        try:
            sb, times = make()
        except BrokenExecutor as exc:
            _planner_failed(exc)
            return None
        except Exception:  # a planning failure must not stop the stream: the plan so far stays
            log.exception("live plan of the utterance failed; keeping the previous one")
            return None
        if self._stream is not None:
            self._ask_llm(self._stream, sb)
        return self._adopt(sb, offset_s, committed_s, times)

    def _adopt(self, sb: Storyboard, offset_s: float, committed_s: float,
               keyframe_times: Sequence[float] | None = None) -> float | None:
        """Replace the actions and emotions after ``committed_s`` with those of ``sb`` (utterance times from
        ``offset_s``), and the keyframe times with ``keyframe_times`` (the blueprint's placement on the window,
        if given); an action that should have started before ``committed_s`` and is not there starts at
        ``committed_s`` if it is at most ``LIVE_LATE_S`` late at its peak."""
        commit = float(committed_s)
        kept = [a for a in self._actions if a.time_s < commit]
        new: list[Action] = []
        for a in sb.actions:
            if a.kind == ActionKind.blink:
                continue
            t = round(offset_s + a.time_s, 4)
            if t < commit:
                if any(k.kind == a.kind and abs(k.time_s - t) < 0.25 for k in kept):
                    continue  # already on screen
                if t + a.duration_s / 2 < commit - LIVE_LATE_S:
                    continue
                t = round(commit, 4)
            new.append(a.model_copy(update={"time_s": t}))
        merged, _notes = resolve_action_overlaps(kept + new, 1e9)
        before = [(a.kind, a.time_s, a.duration_s) for a in self._actions if a.time_s >= commit]
        after = [(a.kind, a.time_s, a.duration_s) for a in merged if a.time_s >= commit]
        if keyframe_times is not None:
            self._blueprint_times = [t for t in self._blueprint_times if commit - 5.0 < t < commit] + sorted(
                round(offset_s + t, 4) for t in keyframe_times if offset_s + t >= commit)
        old_overlay = self._overlay(commit)
        self._actions = merged
        self._emotion_spans = [s for s in self._emotion_spans if s.end_s <= commit] + [
            _Span(max(commit, offset_s + s.start_s), offset_s + s.end_s, s.emotion, s.intensity)
            for s in sb.segments if offset_s + s.end_s > commit]
        self.plans_adopted += 1
        if before != after and self._anchor.time_s > commit + 1e-9:
            self._rewind_overlay = (commit, old_overlay)
            return commit
        return None

    # -- internals: keyframes --
    def _upcoming(self) -> tuple[Keyframe, bool]:
        """The next keyframe to commit: an action's onset, peak or end before the regular next keyframe, or that
        one. Its state is worked out now, from what is known now."""
        assert self._next is not None
        lo, hi = self._anchor.time_s + LIVE_KEYFRAME_GAP_S, self._next.time_s - LIVE_KEYFRAME_GAP_S
        best = next((t for t in self._blueprint_times if lo < t < hi), None)
        for a in self._actions:
            if a.time_s > hi:
                break
            for t in _action_anchor_times(a):
                if lo < t < hi and (best is None or t < best):
                    best = t
        if best is not None:
            return Keyframe(round(best, 4), self._pose(best, self._lerp_base(best))), False
        return Keyframe(round(self._next.time_s, 4), self._pose(self._next.time_s, self._next.base)), True

    def _commit(self, kf: Keyframe, regular: bool, speaking: bool) -> None:
        base = self._next.base if regular else self._lerp_base(kf.time_s)
        self._anchor = kf
        self._anchor_base = base
        self._history.append(kf)
        if regular:
            self._next = self._make_next(kf.time_s, speaking)
            self._next_mode = speaking

    def _lerp_base(self, t: float) -> dict[str, float]:
        """The base motion (before emotions and actions) at ``t`` between the last keyframe and the next regular
        one."""
        a, b = self._anchor, self._next
        span = b.time_s - a.time_s
        u = min(1.0, max(0.0, (t - a.time_s) / span)) if span > 0 else 1.0
        return {k: v + (b.base.get(k, v) - v) * u for k, v in self._anchor_base.items()}

    # -- internals: instructions without a stream --
    def _apply_instruction(self, text: str) -> None:
        parsed = parse_instruction(text)
        self._parsed = parsed
        self._instruction_text = text
        self.warnings = list(parsed.warnings)
        self._instruction_epoch += 1
        self._base_emotion = (Emotion.neutral, 0.0)
        self._await_start, self._await_end, self._phrase_cues, self._throughout = [], [], [], []
        for cue in [*parsed.emotions, *parsed.actions]:
            k = cue.anchor.kind
            if isinstance(cue, EmotionCue) and k in ("throughout", "none"):
                self._base_emotion = (cue.emotion, cue.intensity)
            elif isinstance(cue, ActionCue) and k == "throughout":
                self._throughout.append(cue)
            elif k in ("start", "none", "time"):
                self._await_start.append(cue)
            elif k == "end":
                self._await_end.append(cue)
            elif k == "phrase":
                self._phrase_cues.append(cue)
        self._mid_start_s = None
        if self._speaking and self._utterance_start is not None:
            # An utterance is under way: "at the start" means now.
            if self._stream is not None:
                self._mid_start_s = self._anchor.time_s
                self._stream.epoch_started = self._instruction_epoch
                self._one_shot_epoch = self._instruction_epoch  # its one-time cues act in this utterance
                self._await_start, self._await_end = [], []
            else:
                self._fire_start(self._anchor.time_s)

    def _on_speaking(self, t0: float, speaking: bool) -> None:
        if speaking and not self._speaking:
            self._utterance_start = t0
            if self._stream is None:
                self._fire_start(t0)
        elif not speaking and self._speaking:
            if self._stream is None:
                for cue in self._await_end:
                    self._add_cue(cue, t0 + 0.1)
            self._utterance_start = None
            self._stream = None
            if t0 - self._last_blink > 1.0 and self._next_blink > t0 + 0.3:
                self._next_blink = t0 + 0.15  # a blink as speech stops
        self._speaking = speaking

    def _fire_start(self, t0: float) -> None:
        for cue in self._await_start:
            offset = float(cue.anchor.time_s or 0.0) if cue.anchor.kind == "time" else START_ACTION_S
            self._add_cue(cue, t0 + offset)
        self._await_start = []

    def _on_words(self, words: list[Any]) -> None:
        for w in words:
            key = (w.text, round(float(w.start_s), 3))
            if key not in self._seen_words:
                self._seen_words.add(key)
                self._words.append(w)
        if len(self._seen_words) > 4 * LIVE_WORD_MEMORY:
            self._seen_words = {(w.text, round(float(w.start_s), 3)) for w in self._words}
        ordered = sorted(self._words, key=lambda w: w.start_s)
        for i, cue in enumerate(self._phrase_cues):
            found = find_phrase(ordered, cue.anchor.phrase or "")
            if found is None:
                continue
            key = (hash((self._instruction_epoch, i)), round(found[0], 3))
            if key in self._fired:
                continue
            self._fired.add(key)
            if isinstance(cue, EmotionCue):
                self._add_cue(cue, found[0] - PHRASE_LEAD_S, found[1] + PHRASE_TAIL_S)
            else:
                dur = DEFAULT_ACTION_DURATION_S[cue.kind]
                self._add_cue(cue, found[0] - dur / 2 + 0.1)

    def _schedule_throughout(self, t0: float, end: float) -> None:
        for cue in self._throughout:
            t = max(t0 + 0.2, self._last_throughout + THROUGHOUT_ACTION_GAP_S + self._rng.uniform(0.0, 1.0))
            if t <= end:
                self._add_cue(cue, t)
                self._last_throughout = t

    def _add_cue(self, cue: ActionCue | EmotionCue, t: float, t_end: float | None = None) -> None:
        t = max(t, self._anchor.time_s)
        if isinstance(cue, EmotionCue):
            self._emotion_spans.append(_Span(t, t_end or t + ANCHORED_EMOTION_S, cue.emotion, cue.intensity))
            return
        dur = DEFAULT_ACTION_DURATION_S[cue.kind]
        a = Action(kind=cue.kind, time_s=round(t, 4), duration_s=dur, intensity=cue.intensity)
        busy = [b for b in self._actions if b.body_part == a.body_part and b.time_s < a.end_s and b.end_s > a.time_s]
        if busy:
            a = a.model_copy(update={"time_s": round(max(b.end_s for b in busy), 4)})
        self._actions.append(a)
        self._actions.sort(key=lambda x: x.time_s)

    def _spacing(self, speaking: bool) -> float:
        lo, hi = LIVE_SPEAKING_SPACING_S if speaking else LIVE_IDLE_SPACING_S
        return self._rng.uniform(lo, hi)

    def _make_next(self, after: float, speaking: bool) -> _Pending:
        return _Pending(round(after + self._spacing(speaking), 4), self._base(speaking))

    def _base(self, speaking: bool, listening: bool = False) -> dict[str, float]:
        """A random pose of the base motion (speaking or idle; ``listening``: the plain listening pose)."""
        r = self._rng
        if speaking and not listening:
            amp = 0.6 + 0.8 * self._loudness
            return {
                "head_yaw_deg": r.uniform(-4.0, 4.0) * amp, "head_pitch_deg": r.uniform(-2.5, 3.0) * amp,
                "head_roll_deg": r.uniform(-2.5, 2.5) * amp, "head_scale": 1.0 + r.uniform(-0.005, 0.015),
                "gaze_x": r.uniform(-0.08, 0.08) if r.random() < 0.8 else r.choice((-1, 1)) * r.uniform(0.2, 0.35),
                "gaze_y": r.uniform(-0.06, 0.06), "brow_raise": r.uniform(0.0, 0.15) * amp,
                "smile": 0.0, "eye_open_left": 1.0, "eye_open_right": 1.0,
            }
        base = LISTENING_STATE
        glance = r.random() < 0.3 and not listening
        return {
            "head_yaw_deg": r.uniform(-2.0, 2.0) if not listening else 0.0,
            "head_pitch_deg": base.head_pitch_deg + (r.uniform(-1.0, 1.0) if not listening else 0.0),
            "head_roll_deg": base.head_roll_deg + (r.uniform(-1.5, 1.5) if not listening else 0.0),
            "head_scale": base.head_scale, "smile": base.smile, "brow_raise": base.brow_raise,
            "gaze_x": r.choice((-1, 1)) * r.uniform(0.2, 0.4) if glance else
            (0.0 if listening else r.uniform(-0.05, 0.05)),
            "gaze_y": r.uniform(-0.1, 0.05) if glance else 0.0,
            "eye_open_left": 1.0, "eye_open_right": 1.0,
        }

    def _overlay(self, t: float) -> dict[str, float]:
        """What the emotion and the actions at ``t`` add to the base motion."""
        out: dict[str, float] = {}
        emotion, level = self._base_emotion
        for s in self._emotion_spans:
            if s.start_s <= t < s.end_s:
                emotion, level = s.emotion, s.intensity
        for k, v in EMOTION_OFFSETS[emotion].items():
            out[k] = out.get(k, 0.0) + v * level
        for a in self._actions:
            if a.time_s > t:
                break
            if a.time_s < t < a.end_s:
                shape = _action_shape(a, t) * a.intensity
                for k, v in ACTION_OFFSETS[a.kind].items():
                    out[k] = out.get(k, 0.0) + v * shape
        return out

    def _pose(self, t: float, base: dict[str, float]) -> AvatarState:
        values = dict(base)
        for k, v in self._overlay(t).items():
            values[k] = values.get(k, 0.0) + v
        for k, (lo, hi) in STATE_LIMITS.items():
            if k in values:
                values[k] = min(hi, max(lo, values[k]))
        return AvatarState(**values)

    def state_on_path(self, t: float) -> AvatarState:
        """The state the committed keyframes (and the one planned next) describe at ``t``, by interpolation."""
        path = list(self._history)
        if self._next is not None:
            path.append(Keyframe(self._next.time_s, self._pose(self._next.time_s, self._next.base)))
        if not path:
            return self._anchor.state
        return interpolate_keyframes(path, t, ease=linear)

    def _history_trim(self, t0: float) -> None:
        keep = t0 - 5.0
        self._actions = [a for a in self._actions if a.end_s > keep]
        self._emotion_spans = [s for s in self._emotion_spans if s.end_s > keep]


def plan_with_keyframes(rules: RuleDirector, window: PlanWindow, fps: float) -> tuple[Storyboard, list[float]]:
    """``rules.plan(window)`` and where the blueprint puts keyframes on it (``build_blueprint``'s placement:
    segment borders, action onsets, peaks and ends, at least every 2 s, off blinks; the mouth track is not known
    ahead of the audio live, so it plays no part here)."""
    sb = rules.plan(window)
    n = max(1, int(round(sb.duration_s * fps)))
    bp = build_blueprint(sb, np.zeros((n + 1, 3), np.float32), fps, n_frames=n)
    return sb, [k.time_s for k in bp.keyframes]


@dataclass
class _Pending:
    """The next regular keyframe of the base motion: its time and base pose (its state is worked out when it is
    committed)."""

    time_s: float
    base: dict[str, float]
    listening: bool = False


@dataclass
class _Stream:
    """The utterance the live director plans with the rule director."""

    key: Any
    offset_s: float
    one_shot: bool = True
    serial: int = 0
    samples: int = 0
    words: int = 0
    ended: bool = False
    epoch: int = -1
    epoch_started: int = -2  # the instruction that came in while this utterance played
    job: Any = None
    window: Any = None  # the last window planned
    shift: float = 0.0  # where it starts in the utterance
    llm_shift: float = 0.0
    llm: Any = None  # its LLMPlanner, once asked
    llm_used: bool = False


def _state_values(state: AvatarState) -> dict[str, float]:
    return {name: float(getattr(state, name)) for name in AvatarState.field_names()}


def _action_anchor_times(a: Action) -> list[float]:
    """Where an action needs keyframes: its onset, peak(s) and end (a held one: where it reaches and leaves its
    hold; a shake: each swing's extreme)."""
    if a.kind == ActionKind.blink:
        return []
    if a.kind == ActionKind.shake:
        swings = int(round(2 * SHAKE_CYCLES))
        inner = [a.time_s + a.duration_s * (2 * k + 1) / (2 * swings) for k in range(swings)]
    elif a.kind in _BUMP_ACTIONS:
        inner = [a.time_s + a.duration_s / 2]
    else:
        ramp = min(ACTION_RAMP_S, a.duration_s / 2)
        inner = [a.time_s + ramp, a.end_s - ramp]
    return [a.time_s, *inner, a.end_s]


_POOL = None
_POOL_LOCK = threading.Lock()


PLANNER_NICE = 10
"""The planner's worker process runs at this lower priority: when the CPUs are short, rendering and the playout
clock go first and a plan comes later (the previous plan holds meanwhile)."""


def _worker_init() -> None:
    demote()  # planning is not on a frame's deadline (the process may have been started by a real-time thread)
    try:
        os.nice(PLANNER_NICE)
    except OSError:  # not permitted here: plan at normal priority
        pass


def _warm() -> bool:
    return True


def _planner_pool() -> ProcessPoolExecutor:
    """One worker process that plans the live utterances of all sessions. A plan takes tens of milliseconds, most
    of it in Praat's pitch tracker, which holds the interpreter lock: in a thread of the server it would stall the
    event loop and the render threads for that long."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_worker_init)
            _POOL.submit(_warm)
        return _POOL


_PLANNER_DOWN_UNTIL = [0.0]
PLANNER_RETRY_S = 10.0
"""After the planner's worker process failed, live plans pause this long before a new one is started."""


def _planner_failed(exc: BaseException) -> None:
    log.warning("the live planner's worker process failed (%s); utterances keep their last plan, a new worker "
                "starts in %.0f s", exc or type(exc).__name__, PLANNER_RETRY_S)
    _PLANNER_DOWN_UNTIL[0] = time.monotonic() + PLANNER_RETRY_S
    _reset_pool()


def _reset_pool() -> None:
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
