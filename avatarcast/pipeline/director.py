"""The directors: turn speech, its transcript and a free-text instruction into a plan for the avatar.

- ``RuleDirector`` (the offline default) writes a ``Storyboard`` deterministically and without any network: speech
  and silence segments from voice activity, emotions from the instruction (or, when it names none, from the
  transcript's sentiment), instructed actions at their anchors (start, end, after N seconds, on a quoted phrase's
  word times), small nods and brow raises on prosodic emphasis, blinks and gaze shifts at pauses, and a natural,
  seeded blink plan.
- ``LiveDirector`` plans keyframes a little ahead of playback for the live server: cheap (pure Python, no audio
  analysis beyond an RMS), continuous across calls, deterministic for a seed.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from avatarcast.errors import AudioError
from avatarcast.pipeline.instructions import ActionCue, Anchor, EmotionCue, ParsedInstruction, parse_instruction
from avatarcast.pipeline.storyboard import (
    ACTION_OFFSETS,
    DEFAULT_ACTION_DURATION_S,
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
from avatarcast.pipeline.types import AUDIO_RATE_HZ, AvatarState, Keyframe

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
    from avatarcast.pipeline.vad import speech_regions

    return [(float(a), float(b)) for a, b in speech_regions(samples, rate_hz)]


def _align(samples: np.ndarray, rate_hz: int, transcript: str) -> list[Any] | None:
    try:
        from avatarcast.pipeline.alignment import align_transcript
    except ImportError:
        return None
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

    def storyboard(self, audio: Any, transcript: str | None = None, instruction: str | None = None,
                   words: list[Any] | None = None) -> Storyboard:
        samples, rate_hz = _samples_of(audio)
        duration = len(samples) / float(rate_hz)
        if duration <= 0.05:
            raise AudioError(f"the audio is {duration:.3f} s long; the director needs at least 0.05 s of audio")
        warnings: list[str] = []
        parsed = parse_instruction(instruction)
        warnings.extend(parsed.warnings)
        regions = _speech_regions(samples, rate_hz)
        words = self._words(samples, rate_hz, transcript, words, regions, parsed, warnings)

        from avatarcast.pipeline.prosody import analyze_prosody

        prosody = analyze_prosody(samples, rate_hz, regions)
        rng = random.Random(self.seed)

        segments = self._segments(duration, regions, words, transcript, parsed, prosody, warnings)
        actions = self._actions(duration, regions, words, parsed, prosody, warnings)
        gaze = self._gaze(duration, prosody.pauses, regions, rng)
        blinks = natural_blinks(duration, prosody.pauses, rng)
        for w in warnings:
            log.warning("director: %s", w)
        return Storyboard(
            duration_s=round(duration, 4), segments=segments, actions=actions, gaze=gaze, blink_times_s=blinks,
            director="rules", instruction=instruction, warnings=warnings[:200],
        )

    # -- inputs --
    def _words(self, samples, rate_hz, transcript, words, regions, parsed: ParsedInstruction,
               warnings: list[str]) -> list[Any]:
        if words:
            return sorted(words, key=lambda w: w.start_s)
        if not transcript or not transcript.strip():
            if any(c.anchor.kind == "phrase" for c in [*parsed.emotions, *parsed.actions]):
                warnings.append("the instruction quotes a phrase but neither a transcript nor word timings were "
                                "given; pass --transcript so phrases can be found")
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
                  warnings: list[str]) -> list[Segment]:
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
    def _actions(self, duration, regions, words, parsed: ParsedInstruction, prosody,
                 warnings: list[str]) -> list[Action]:
        instructed: list[Action] = []
        first_speech = regions[0][0] if regions else 0.0
        for cue in parsed.actions:
            instructed.extend(self._place(cue, duration, first_speech, regions, words, prosody, warnings))
        parts_busy = [(a.body_part, a.time_s - 0.3, a.end_s + 0.3) for a in instructed]
        prosodic: list[Action] = []
        if self.prosody_actions:
            last_nod = -10.0
            for e in prosody.emphasis:
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

    def _place(self, cue: ActionCue, duration, first_speech, regions, words, prosody,
               warnings: list[str]) -> list[Action]:
        dur = DEFAULT_ACTION_DURATION_S[cue.kind]
        if cue.intensity >= 0.85 and cue.kind in (ActionKind.nod, ActionKind.shake):
            dur *= 1.2
        dur = min(dur, duration)
        k = cue.anchor.kind

        def at(t: float) -> Action:
            t = min(max(0.0, t), max(0.0, duration - dur))
            return Action(kind=cue.kind, time_s=round(t, 3), duration_s=round(dur, 3), intensity=cue.intensity)

        if k == "start" or k == "none":
            return [at(min(START_ACTION_S, first_speech + START_ACTION_S))]
        if k == "end":
            last_speech_end = regions[-1][1] if regions else duration
            return [at(min(duration - END_MARGIN_S, last_speech_end) - dur)]
        if k == "time":
            t = float(cue.anchor.time_s or 0.0)
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
        times = [e.time_s - dur / 2 for e in prosody.emphasis]
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
    def _gaze(duration, pauses, regions, rng: random.Random) -> list[GazeShift]:
        shifts: list[GazeShift] = [GazeShift(time_s=0.0, x=0.0, y=0.0)]
        gaps = list(pauses)
        if regions:
            if regions[0][0] > GAZE_PAUSE_MIN_S:
                gaps.insert(0, (0.0, regions[0][0]))
            if duration - regions[-1][1] > GAZE_PAUSE_MIN_S:
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
LIVE_RMS_REF = 0.08
"""RMS of normal speech at 16 kHz float; louder audio makes the speaking motion a little larger."""

LISTENING_STATE = AvatarState(head_roll_deg=3.0, head_pitch_deg=1.5, head_scale=1.02, smile=0.15, brow_raise=0.1)
"""Attentive: slight tilt, slight lean in, a soft smile, eyes on the viewer."""


class LiveDirector:
    """Plans keyframes and blinks ahead of playback for the live path (well under a millisecond per call).

    Keyframes come every 0.6-1.0 s while speaking and 1.2-2 s when idle, with a pose change within 0.35 s when
    speech starts or stops, and extra keyframes at the peaks of instructed actions. Every keyframe returned is
    committed: the next plan continues from the last one. Each call returns at least one keyframe (when nothing
    is due inside the window, the point on the way to the next one, at ``t0 + horizon``), so the caller can always
    render up to its horizon. The same seed and the same calls give the same plans.

    Instructions: "at the start" means the next utterance's start (or now, if one is under way); "after N seconds"
    counts from that start; "at the end" is when speech stops; "when you say 'X'" fires on the incoming words;
    emotions without an anchor hold until the next instruction.
    """

    def __init__(self, instruction: str | None = None, seed: int = 0) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self._parsed = ParsedInstruction(text="")
        self._pending_instruction: str | None = instruction
        self.warnings: list[str] = []
        self._anchor = Keyframe(0.0, LISTENING_STATE)
        self._history: deque[Keyframe] = deque([self._anchor], maxlen=16)
        self._next: Keyframe | None = None
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

    # -- public API --
    def set_instruction(self, text: str | None) -> None:
        """Use this instruction from the next plan on (it replaces the previous one)."""
        self._pending_instruction = text or ""

    def interrupt(self, t_s: float) -> None:
        """Barge-in: drop what was planned after ``t_s`` and move to the listening pose over a short transition."""
        here = self.state_on_path(t_s)
        while self._history and self._history[-1].time_s >= t_s:
            self._history.pop()
        self._anchor = Keyframe(t_s, here)
        self._history.append(self._anchor)
        self._next = Keyframe(t_s + INTERRUPT_TRANSITION_S, self._pose(t_s + INTERRUPT_TRANSITION_S, False, True))
        self._next_mode = False
        self._speaking = False
        self._utterance_start = None
        self._actions = [a for a in self._actions if a.end_s <= t_s]
        self._emotion_spans = [s for s in self._emotion_spans if s.end_s <= t_s]

    def apply_storyboard(self, storyboard: Storyboard, offset_s: float) -> None:
        """Adopt a storyboard (e.g. an LLM plan that arrived in time) for an utterance starting at ``offset_s``:
        its actions and emotions replace the live director's own from the next keyframe on."""
        now = self._anchor.time_s
        self._actions = [a for a in self._actions if a.time_s < now]
        for a in storyboard.actions:
            if a.kind != ActionKind.blink and offset_s + a.time_s >= now:
                self._actions.append(a.model_copy(update={"time_s": round(offset_s + a.time_s, 4)}))
        self._actions.sort(key=lambda x: x.time_s)
        self._emotion_spans = [s for s in self._emotion_spans if s.end_s <= now] + [
            _Span(offset_s + s.start_s, offset_s + s.end_s, s.emotion, s.intensity) for s in storyboard.segments]

    def plan_next(self, t0_s: float, horizon_s: float, speaking: bool, audio: np.ndarray | None = None,
                  words: list[Any] | None = None) -> Plan:
        """Keyframes (times in ``(t0_s, t0_s + horizon_s]``) and blink onsets for the next stretch."""
        end = t0_s + max(0.0, horizon_s)
        if self._pending_instruction is not None:
            self._apply_instruction(self._pending_instruction)
            self._pending_instruction = None
        if audio is not None and len(audio):
            rms = float(np.sqrt(np.mean(np.square(np.asarray(audio, dtype=np.float32)))))
            self._loudness = 0.7 * self._loudness + 0.3 * min(1.0, rms / LIVE_RMS_REF)
        self._on_speaking(t0_s, speaking)
        if words:
            self._on_words(words)
        if self._throughout and speaking:
            self._schedule_throughout(t0_s, end)
        if self._anchor.time_s < t0_s - 2.0 * LIVE_IDLE_SPACING_S[1]:
            # The caller skipped ahead (a gap in calls): continue from the pose the path would have reached.
            self._anchor = Keyframe(t0_s, self.state_on_path(t0_s))
            self._history.append(self._anchor)
            self._next = None
        if self._next is None or (self._next_mode != speaking and self._next.time_s > t0_s + LIVE_MODE_SWITCH_S):
            t = max(self._anchor.time_s + 0.25, t0_s + (LIVE_MODE_SWITCH_S if self._next is not None else
                                                       self._spacing(speaking)))
            self._next = Keyframe(t, self._pose(t, speaking))
            self._next_mode = speaking
        out: list[Keyframe] = []
        while self._next.time_s <= end:
            if self._next.time_s > t0_s:
                out.append(self._next)
            self._anchor = self._next
            self._history.append(self._anchor)
            self._next = self._make_next(self._anchor.time_s, speaking)
            self._next_mode = speaking
        if not out and end > t0_s and end > self._anchor.time_s:
            if self._next.time_s - end < LIVE_MIN_SPACING_S:
                # The next keyframe is due just after the window: bring it forward rather than leave a sliver.
                kf = Keyframe(round(end, 4), self._next.state)
                self._next = self._make_next(end, speaking)
            else:
                span = self._next.time_s - self._anchor.time_s
                u = (end - self._anchor.time_s) / span if span > 0 else 1.0
                kf = Keyframe(round(end, 4), self._anchor.state.lerp(self._next.state, u))
            out.append(kf)
            self._anchor = kf
            self._history.append(kf)
        blinks: list[float] = []
        while self._next_blink <= end:
            if self._next_blink > t0_s:
                blinks.append(round(self._next_blink, 4))
                self._last_blink = self._next_blink
            lo, hi = (2.5, 5.0) if speaking else (BLINK_MIN_GAP_S, BLINK_MAX_GAP_S)
            self._next_blink += self._rng.uniform(lo, hi)
        self._history_trim(t0_s)
        return Plan(keyframes=out, blink_times_s=blinks)

    # -- internals --
    def _apply_instruction(self, text: str) -> None:
        parsed = parse_instruction(text)
        self._parsed = parsed
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
        if self._speaking and self._utterance_start is not None:
            # An utterance is under way: "at the start" means now.
            self._fire_start(self._anchor.time_s)

    def _on_speaking(self, t0: float, speaking: bool) -> None:
        if speaking and not self._speaking:
            self._utterance_start = t0
            self._fire_start(t0)
        elif not speaking and self._speaking:
            for cue in self._await_end:
                self._add_cue(cue, t0 + 0.1)
            self._utterance_start = None
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

    def _make_next(self, after: float, speaking: bool) -> Keyframe:
        t = after + self._spacing(speaking)
        # An action peak between now and then gets its own keyframe, so gestures are not skipped.
        for a in self._actions:
            if a.kind == ActionKind.blink:
                continue
            peak = a.time_s + a.duration_s / 2
            if after + 0.2 < peak < t:
                t = peak
                break
            # The pose just after an action ends (back to rest) when the regular keyframe would fall inside it.
            if a.time_s < after < a.end_s < t and a.end_s > after + 0.2:
                t = a.end_s + 0.05
                break
        return Keyframe(round(t, 4), self._pose(t, speaking))

    def _pose(self, t: float, speaking: bool, listening: bool = False) -> AvatarState:
        r = self._rng
        if speaking and not listening:
            amp = 0.6 + 0.8 * self._loudness
            values = {
                "head_yaw_deg": r.uniform(-4.0, 4.0) * amp, "head_pitch_deg": r.uniform(-2.5, 3.0) * amp,
                "head_roll_deg": r.uniform(-2.5, 2.5) * amp, "head_scale": 1.0 + r.uniform(-0.005, 0.015),
                "gaze_x": r.uniform(-0.08, 0.08) if r.random() < 0.8 else r.choice((-1, 1)) * r.uniform(0.2, 0.35),
                "gaze_y": r.uniform(-0.06, 0.06), "brow_raise": r.uniform(0.0, 0.15) * amp,
                "smile": 0.0, "eye_open_left": 1.0, "eye_open_right": 1.0,
            }
        else:
            base = LISTENING_STATE
            glance = r.random() < 0.3 and not listening
            values = {
                "head_yaw_deg": r.uniform(-2.0, 2.0) if not listening else 0.0,
                "head_pitch_deg": base.head_pitch_deg + (r.uniform(-1.0, 1.0) if not listening else 0.0),
                "head_roll_deg": base.head_roll_deg + (r.uniform(-1.5, 1.5) if not listening else 0.0),
                "head_scale": base.head_scale, "smile": base.smile, "brow_raise": base.brow_raise,
                "gaze_x": r.choice((-1, 1)) * r.uniform(0.2, 0.4) if glance else
                (0.0 if listening else r.uniform(-0.05, 0.05)),
                "gaze_y": r.uniform(-0.1, 0.05) if glance else 0.0,
                "eye_open_left": 1.0, "eye_open_right": 1.0,
            }
        emotion, level = self._base_emotion
        for s in self._emotion_spans:
            if s.start_s <= t < s.end_s:
                emotion, level = s.emotion, s.intensity
        for k, v in EMOTION_OFFSETS[emotion].items():
            values[k] = values.get(k, 0.0) + v * level
        for a in self._actions:
            if a.time_s < t < a.end_s:
                shape = _action_shape(a, t) * a.intensity
                for k, v in ACTION_OFFSETS[a.kind].items():
                    values[k] = values.get(k, 0.0) + v * shape
        for k, (lo, hi) in STATE_LIMITS.items():
            if k in values:
                values[k] = min(hi, max(lo, values[k]))
        return AvatarState(**values)

    def state_on_path(self, t: float) -> AvatarState:
        """The state the committed keyframes (and the one planned next) describe at ``t``, by interpolation."""
        path = list(self._history)
        if self._next is not None:
            path.append(self._next)
        if not path or t <= path[0].time_s:
            return path[0].state if path else self._anchor.state
        for a, n in zip(path[:-1], path[1:]):
            if a.time_s <= t <= n.time_s:
                span = n.time_s - a.time_s
                return a.state.lerp(n.state, (t - a.time_s) / span) if span > 0 else n.state
        return path[-1].state

    def _history_trim(self, t0: float) -> None:
        keep = t0 - 5.0
        self._actions = [a for a in self._actions if a.end_s > keep]
        self._emotion_spans = [s for s in self._emotion_spans if s.end_s > keep]
