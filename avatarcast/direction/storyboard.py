"""The storyboard: what the director decides, as a versioned, validated, JSON-serializable schema.

A storyboard covers the timeline ``[0, duration_s]`` with ordered, contiguous ``segments`` (speech or silence, the
text spoken, an emotion and its intensity), plus timed ``actions`` (nod, shake, look_left, wink, ...), a ``gaze``
plan (where the eyes rest between actions) and a blink plan (``blink_times_s``).

Conventions:

- Times are seconds from the start of the audio.
- ``left``/``right`` are screen directions, as the viewer sees them, matching ``AvatarState.gaze_x`` and
  ``head_yaw_deg`` (+ toward the viewer's right). ``wink`` closes the subject's left eye.
- Two actions on the same body part (see ``ACTION_BODY_PART``) may not overlap in a storyboard: loading one that
  does raises ``StoryboardError`` naming both actions. Directors (and the LLM repair step) call
  ``resolve_action_overlaps``, whose rule is: the earlier action keeps its time; a later action on the same body part
  is moved to begin when the earlier one ends, and dropped (with a note) if it no longer fits before the end.
- ``blink`` actions and ``blink_times_s`` are blinks for the generator (``blink_times``); ``state_at`` does not close
  the eyes for them, because blinks are shorter than the keyframe spacing.

``state_at(storyboard, t)`` maps the storyboard to ``AvatarState`` targets for keyframes (mouth fields stay neutral:
the audio drives them), and ``action_peaks(storyboard)`` gives the times where actions peak, so the blueprint can
place keyframes there.

Write the JSON Schema with ``avatarcast storyboard schema -o storyboard.schema.json``; check a
hand-written storyboard with ``avatarcast storyboard validate my_storyboard.json``.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from avatarcast.core.errors import StoryboardError
from avatarcast.core.trajectory import smoothstep
from avatarcast.core.types import AvatarState

STORYBOARD_VERSION = 1
"""Bump when a change would make an older reader misread a storyboard."""

MAX_DURATION_S = 6 * 3600.0
MAX_SEGMENTS = 5000
MAX_ACTIONS = 5000
MAX_GAZE_SHIFTS = 5000
MAX_BLINKS = 20000
MAX_TEXT_CHARS = 4000
MAX_WARNINGS = 200
MAX_ACTION_DURATION_S = 30.0
MIN_ACTION_DURATION_S = 0.1
TIME_TOLERANCE_S = 1e-3
"""Slack allowed where segments meet and at the end of the timeline (float rounding in hand-written files)."""

EMOTION_BLEND_S = 0.5
"""Emotions cross-fade over this window centred on a segment border."""
GAZE_MOVE_S = 0.25
"""A gaze shift moves the eyes to the new target over this time."""
ACTION_RAMP_S = 0.3
"""Held actions (look, smile, lean, ...) ease in and out over this time (raised-cosine ramps)."""


class Emotion(str, Enum):
    neutral = "neutral"
    happy = "happy"
    sad = "sad"
    angry = "angry"
    surprised = "surprised"
    thoughtful = "thoughtful"
    excited = "excited"
    calm = "calm"
    fearful = "fearful"
    disgusted = "disgusted"
    confident = "confident"
    curious = "curious"


class ActionKind(str, Enum):
    nod = "nod"
    shake = "shake"
    tilt_left = "tilt_left"
    tilt_right = "tilt_right"
    look_left = "look_left"
    look_right = "look_right"
    look_up = "look_up"
    look_down = "look_down"
    raise_brows = "raise_brows"
    frown = "frown"
    smile = "smile"
    wink = "wink"
    lean_in = "lean_in"
    lean_back = "lean_back"
    blink = "blink"


class SegmentKind(str, Enum):
    speech = "speech"
    silence = "silence"


ACTION_BODY_PART: dict[ActionKind, str] = {
    ActionKind.nod: "head_pitch",
    ActionKind.shake: "head_yaw",
    ActionKind.tilt_left: "head_roll",
    ActionKind.tilt_right: "head_roll",
    ActionKind.look_left: "gaze",
    ActionKind.look_right: "gaze",
    ActionKind.look_up: "gaze",
    ActionKind.look_down: "gaze",
    ActionKind.raise_brows: "brows",
    ActionKind.frown: "brows",
    ActionKind.smile: "mouth_corners",
    ActionKind.wink: "eyelids",
    ActionKind.blink: "eyelids",
    ActionKind.lean_in: "torso",
    ActionKind.lean_back: "torso",
}
"""The one body part each action moves; two actions on the same part must not overlap in time."""

DEFAULT_ACTION_DURATION_S: dict[ActionKind, float] = {
    ActionKind.nod: 0.7,
    ActionKind.shake: 1.0,
    ActionKind.tilt_left: 1.5,
    ActionKind.tilt_right: 1.5,
    ActionKind.look_left: 1.2,
    ActionKind.look_right: 1.2,
    ActionKind.look_up: 1.2,
    ActionKind.look_down: 1.2,
    ActionKind.raise_brows: 0.8,
    ActionKind.frown: 1.2,
    ActionKind.smile: 1.5,
    ActionKind.wink: 0.4,
    ActionKind.lean_in: 1.5,
    ActionKind.lean_back: 1.5,
    ActionKind.blink: 0.15,
}

# Offsets added to the neutral state at intensity 1 (scaled linearly by the segment's intensity).
EMOTION_OFFSETS: dict[Emotion, dict[str, float]] = {
    Emotion.neutral: {},
    Emotion.happy: {"smile": 0.6, "brow_raise": 0.15, "eye_open_left": -0.05, "eye_open_right": -0.05},
    Emotion.sad: {"smile": -0.35, "brow_raise": -0.2, "eye_open_left": -0.15, "eye_open_right": -0.15,
                  "head_pitch_deg": 3.0, "gaze_y": 0.15},
    Emotion.angry: {"brow_raise": -0.8, "smile": -0.3, "eye_open_left": 0.05, "eye_open_right": 0.05,
                    "head_pitch_deg": 2.0},
    Emotion.surprised: {"brow_raise": 0.9, "eye_open_left": 0.3, "eye_open_right": 0.3, "head_pitch_deg": -2.0},
    Emotion.thoughtful: {"brow_raise": -0.2, "gaze_x": 0.25, "gaze_y": -0.3, "head_roll_deg": 3.0, "smile": -0.05},
    Emotion.excited: {"smile": 0.8, "brow_raise": 0.5, "eye_open_left": 0.2, "eye_open_right": 0.2,
                      "head_scale": 0.02},
    Emotion.calm: {"smile": 0.15, "eye_open_left": -0.1, "eye_open_right": -0.1},
    Emotion.fearful: {"brow_raise": 0.6, "eye_open_left": 0.25, "eye_open_right": 0.25, "smile": -0.3,
                      "head_scale": -0.02},
    Emotion.disgusted: {"brow_raise": -0.5, "smile": -0.4, "eye_open_left": -0.2, "eye_open_right": -0.2},
    Emotion.confident: {"smile": 0.3, "brow_raise": 0.1, "head_pitch_deg": -2.0},
    Emotion.curious: {"brow_raise": 0.4, "head_roll_deg": 4.0, "eye_open_left": 0.1, "eye_open_right": 0.1},
}

# Offsets at the peak of each action at intensity 1.
ACTION_OFFSETS: dict[ActionKind, dict[str, float]] = {
    ActionKind.nod: {"head_pitch_deg": 8.0},
    ActionKind.shake: {"head_yaw_deg": 10.0},  # times an oscillation, see _action_shape
    ActionKind.tilt_left: {"head_roll_deg": -10.0},
    ActionKind.tilt_right: {"head_roll_deg": 10.0},
    ActionKind.look_left: {"gaze_x": -0.8, "head_yaw_deg": -6.0},
    ActionKind.look_right: {"gaze_x": 0.8, "head_yaw_deg": 6.0},
    ActionKind.look_up: {"gaze_y": -0.7, "head_pitch_deg": -4.0},
    ActionKind.look_down: {"gaze_y": 0.7, "head_pitch_deg": 5.0},
    ActionKind.raise_brows: {"brow_raise": 0.8, "eye_open_left": 0.1, "eye_open_right": 0.1},
    ActionKind.frown: {"brow_raise": -1.0, "smile": -0.3},
    ActionKind.smile: {"smile": 0.8},
    ActionKind.wink: {"eye_open_left": -1.0, "smile": 0.2},
    ActionKind.lean_in: {"head_scale": 0.08},
    ActionKind.lean_back: {"head_scale": -0.06},
    ActionKind.blink: {},
}

SHAKE_CYCLES = 2.0
"""A head shake swings left-right this many times over its duration."""
_BUMP_ACTIONS = {ActionKind.nod, ActionKind.shake, ActionKind.wink, ActionKind.raise_brows}
"""Actions that are one smooth bump (peak in the middle); the others ease in, hold, and ease out."""

STATE_LIMITS: dict[str, tuple[float, float]] = {
    "head_yaw_deg": (-30.0, 30.0),
    "head_pitch_deg": (-25.0, 25.0),
    "head_roll_deg": (-25.0, 25.0),
    "head_x": (-0.3, 0.3),
    "head_y": (-0.3, 0.3),
    "head_scale": (0.8, 1.25),
    "smile": (-1.0, 1.0),
    "brow_raise": (-1.0, 1.0),
    "eye_open_left": (0.0, 1.3),
    "eye_open_right": (0.0, 1.3),
    "gaze_x": (-1.0, 1.0),
    "gaze_y": (-1.0, 1.0),
}

Seconds = Annotated[float, Field(ge=0.0, le=MAX_DURATION_S, allow_inf_nan=False)]
Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Signed = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_default=True)


class Segment(_Model):
    """A stretch of the timeline: speech or silence, what is said, and the emotion shown."""

    start_s: Seconds = Field(description="start time in seconds")
    end_s: Seconds = Field(description="end time in seconds; greater than start_s")
    kind: SegmentKind = Field(default=SegmentKind.speech, description="speech or silence")
    text: str = Field(default="", max_length=MAX_TEXT_CHARS, description="the words spoken in this segment")
    emotion: Emotion = Field(default=Emotion.neutral, description="the emotion shown during the segment")
    intensity: Unit = Field(default=0.5, description="strength of the emotion, 0..1")

    @model_validator(mode="after")
    def _end_after_start(self) -> "Segment":
        if self.end_s <= self.start_s:
            raise ValueError(
                f"end_s ({self.end_s:g} s) must be greater than start_s ({self.start_s:g} s): "
                "swap them or drop the empty segment"
            )
        return self


class Action(_Model):
    """A timed gesture: it starts at ``time_s``, lasts ``duration_s`` and moves one body part."""

    kind: ActionKind = Field(description="what to do")
    time_s: Seconds = Field(description="start time in seconds")
    duration_s: Annotated[float, Field(gt=0.0, le=MAX_ACTION_DURATION_S, allow_inf_nan=False)] = Field(
        default=0.8, description="how long it lasts in seconds"
    )
    intensity: Unit = Field(default=0.6, description="strength, 0..1")

    @property
    def end_s(self) -> float:
        return self.time_s + self.duration_s

    @property
    def body_part(self) -> str:
        return ACTION_BODY_PART[self.kind]


class GazeShift(_Model):
    """From ``time_s`` on, the eyes rest at (x, y) until the next shift (-1..1, + right/down as seen)."""

    time_s: Seconds
    x: Signed = 0.0
    y: Signed = 0.0


class Storyboard(_Model):
    """The director's plan for one utterance or video: segments, actions, gaze and blinks over ``[0, duration_s]``."""

    version: Literal[1] = Field(default=STORYBOARD_VERSION, description="schema version")
    duration_s: Annotated[float, Field(gt=0.0, le=MAX_DURATION_S, allow_inf_nan=False)] = Field(
        description="length of the timeline (the audio) in seconds"
    )
    segments: list[Segment] = Field(
        min_length=1, max_length=MAX_SEGMENTS,
        description="ordered, contiguous, non-overlapping segments covering [0, duration_s]",
    )
    actions: list[Action] = Field(default_factory=list, max_length=MAX_ACTIONS,
                                  description="timed gestures; same-body-part actions must not overlap")
    gaze: list[GazeShift] = Field(default_factory=list, max_length=MAX_GAZE_SHIFTS,
                                  description="where the eyes rest, in time order")
    blink_times_s: list[Seconds] = Field(default_factory=list, max_length=MAX_BLINKS,
                                         description="blink onsets in seconds")
    director: str = Field(default="user", max_length=64, description="who wrote it: rules, llm, user")
    fallback: str | None = Field(
        default=None, max_length=500,
        description="set when the requested director failed and the rule-based one wrote this instead: why",
    )
    instruction: str | None = Field(default=None, max_length=MAX_TEXT_CHARS, description="the instruction given")
    warnings: list[Annotated[str, Field(max_length=500)]] = Field(
        default_factory=list, max_length=MAX_WARNINGS,
        description="what the director could not follow (unknown words, fallbacks)",
    )

    @model_validator(mode="after")
    def _check_timeline(self) -> "Storyboard":
        d = self.duration_s
        tol = TIME_TOLERANCE_S
        segs = self.segments
        if abs(segs[0].start_s) > tol:
            raise ValueError(f"segments[0].start_s is {segs[0].start_s:g} s: the first segment must start at 0")
        for i in range(1, len(segs)):
            prev, cur = segs[i - 1], segs[i]
            if cur.start_s < prev.end_s - tol:
                raise ValueError(
                    f"segments[{i}] starts at {cur.start_s:g} s, before segments[{i - 1}] ends at {prev.end_s:g} s: "
                    "segments must be in time order and must not overlap"
                )
            if cur.start_s > prev.end_s + tol:
                raise ValueError(
                    f"gap between segments[{i - 1}] (ends {prev.end_s:g} s) and segments[{i}] (starts "
                    f"{cur.start_s:g} s): segments must cover the whole timeline; add a silence segment"
                )
        if abs(segs[-1].end_s - d) > tol:
            raise ValueError(
                f"segments[{len(segs) - 1}].end_s is {segs[-1].end_s:g} s but duration_s is {d:g} s: "
                "the last segment must end at duration_s"
            )
        for i, a in enumerate(self.actions):
            if a.time_s > d + tol:
                raise ValueError(f"actions[{i}].time_s ({a.time_s:g} s) is past the end of the storyboard "
                                 f"(duration_s = {d:g} s): move it earlier or drop it")
            if a.end_s > d + tol:
                raise ValueError(f"actions[{i}] ({a.kind.value}) ends at {a.end_s:g} s, past the end of the "
                                 f"storyboard (duration_s = {d:g} s): shorten duration_s or start it earlier")
        for i, g in enumerate(self.gaze):
            if g.time_s > d + tol:
                raise ValueError(f"gaze[{i}].time_s ({g.time_s:g} s) is past the end (duration_s = {d:g} s)")
            if i and g.time_s < self.gaze[i - 1].time_s:
                raise ValueError(f"gaze[{i}].time_s ({g.time_s:g} s) is before gaze[{i - 1}].time_s: "
                                 "list gaze shifts in time order")
        for i, b in enumerate(self.blink_times_s):
            if b > d + tol:
                raise ValueError(f"blink_times_s[{i}] ({b:g} s) is past the end (duration_s = {d:g} s)")
        clash = find_action_overlap(self.actions)
        if clash is not None:
            i, j = clash
            a, b = self.actions[i], self.actions[j]
            raise ValueError(
                f"actions[{j}] ({b.kind.value} at {b.time_s:g}-{b.end_s:g} s) overlaps actions[{i}] "
                f"({a.kind.value} at {a.time_s:g}-{a.end_s:g} s) on the same body part ({a.body_part}): "
                "move one so it starts after the other ends, or shorten it"
            )
        # Stored in time order, so readers can scan them once.
        self.actions.sort(key=lambda x: x.time_s)
        return self

    # ---- conveniences -------------------------------------------------------------------------------------
    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    def segment_at(self, t_s: float) -> Segment:
        """The segment containing ``t_s`` (clamped to the timeline)."""
        return self.segments[_segment_index(self, t_s)]


# ---- action overlap -----------------------------------------------------------------------------------------

def find_action_overlap(actions: list[Action]) -> tuple[int, int] | None:
    """Indices ``(earlier, later)`` of the first pair of actions on one body part that overlap in time, or None."""
    last_by_part: dict[str, int] = {}
    for j in sorted(range(len(actions)), key=lambda k: (actions[k].time_s, k)):
        part = actions[j].body_part
        i = last_by_part.get(part)
        if i is not None and actions[j].time_s < actions[i].end_s - TIME_TOLERANCE_S:
            return i, j
        if i is None or actions[j].end_s > actions[i].end_s:
            last_by_part[part] = j
    return None


def resolve_action_overlaps(actions: list[Action], duration_s: float) -> tuple[list[Action], list[str]]:
    """Apply the overlap rule: earlier actions keep their time; a later one on the same body part starts when the
    earlier ends, and is dropped if it then no longer fits before ``duration_s``. Returns the actions (time order)
    and a note for each one moved or dropped."""
    notes: list[str] = []
    busy_until: dict[str, float] = {}
    out: list[Action] = []
    for a in sorted(actions, key=lambda x: x.time_s):
        start = max(a.time_s, busy_until.get(a.body_part, 0.0))
        dur = min(a.duration_s, duration_s - start)
        if dur < min(MIN_ACTION_DURATION_S, a.duration_s) - 1e-9:
            notes.append(f"dropped {a.kind.value} at {a.time_s:.2f} s: it overlaps another {a.body_part} action "
                         "and does not fit after it")
            continue
        if start > a.time_s + 1e-9:
            notes.append(f"moved {a.kind.value} from {a.time_s:.2f} s to {start:.2f} s: it overlapped another "
                         f"{a.body_part} action")
        b = a.model_copy(update={"time_s": round(start, 4), "duration_s": round(dur, 4)})
        busy_until[a.body_part] = b.end_s
        out.append(b)
    return out, notes


# ---- loading, errors and the JSON Schema ----------------------------------------------------------------------

def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_HINTS = {
    "enum": "use one of the listed values",
    "extra_forbidden": "remove it (the schema allows no extra fields; check the spelling)",
    "missing": "add it",
    "greater_than_equal": "use a value inside the allowed range",
    "less_than_equal": "use a value inside the allowed range",
    "greater_than": "use a value inside the allowed range",
    "too_long": "shorten the list or split the storyboard",
    "too_short": "add at least one entry",
    "float_parsing": "give a number",
    "literal_error": "use the version this avatarcast reads",
}


def format_validation_error(exc: ValidationError, source: str = "storyboard") -> str:
    """One readable message from pydantic's errors: the field location, what was wrong, and what to do."""
    lines = []
    for err in exc.errors(include_url=False)[:10]:
        loc = _format_loc(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        hint = _HINTS.get(str(err.get("type")), "")
        if err.get("type") == "enum" and "kind" in loc:
            hint = "use one of the listed actions (unknown actions are not allowed)"
        lines.append((f"{loc}: " if loc else "") + msg + (f" ({hint})" if hint else ""))
    more = exc.error_count() - len(lines)
    if more > 0:
        lines.append(f"... and {more} more")
    return f"invalid {source}: " + "; ".join(lines)


def parse_storyboard(text: str | bytes | dict, source: str = "storyboard") -> Storyboard:
    """Validate a storyboard given as JSON text or a dict; ``StoryboardError`` names the bad field and the fix."""
    if isinstance(text, (str, bytes)):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StoryboardError(
                f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                "fix the syntax (quotes, commas, brackets) and try again"
            ) from None
        except UnicodeDecodeError as exc:
            raise StoryboardError(f"{source} is not UTF-8 text ({exc.reason}); save it as UTF-8 JSON") from None
    else:
        data = text
    if not isinstance(data, dict):
        raise StoryboardError(f"{source} must be a JSON object with duration_s and segments, "
                              f"got a JSON {type(data).__name__}")
    try:
        return Storyboard.model_validate(data)
    except ValidationError as exc:
        raise StoryboardError(format_validation_error(exc, source)) from None


def load_storyboard(path: str | Path) -> Storyboard:
    """Read and validate a storyboard JSON file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise StoryboardError(f"cannot read storyboard {p}: {exc.strerror or exc}; check the path") from None
    return parse_storyboard(raw, source=f"storyboard {p}")


def storyboard_json_schema() -> dict[str, Any]:
    """The JSON Schema of ``Storyboard`` (draft 2020-12, as pydantic writes it)."""
    schema = Storyboard.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def write_json_schema(path: str | Path) -> Path:
    """Write the storyboard JSON Schema to ``path`` and return it."""
    p = Path(path)
    p.write_text(json.dumps(storyboard_json_schema(), indent=2) + "\n", encoding="utf-8")
    return p


# ---- storyboard -> avatar states --------------------------------------------------------------------------------

def _segment_index(sb: Storyboard, t_s: float) -> int:
    segs = sb.segments
    lo, hi = 0, len(segs) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if segs[mid].start_s <= t_s:
            lo = mid
        else:
            hi = mid - 1
    return lo




def _envelope(a: Action, t_s: float) -> float:
    """Raised-cosine envelope: a full bump for quick gestures, eased ramps around a hold for held ones."""
    if t_s <= a.time_s or t_s >= a.end_s:
        return 0.0
    u = t_s - a.time_s
    ramp = a.duration_s / 2 if a.kind in _BUMP_ACTIONS else min(ACTION_RAMP_S, a.duration_s / 2)
    if u < ramp:
        return 0.5 * (1.0 - math.cos(math.pi * u / ramp))
    if u > a.duration_s - ramp:
        return 0.5 * (1.0 - math.cos(math.pi * (a.duration_s - u) / ramp))
    return 1.0


def _action_shape(a: Action, t_s: float) -> float:
    env = _envelope(a, t_s)
    if env == 0.0:
        return 0.0
    if a.kind == ActionKind.shake:
        return env * math.sin(2.0 * math.pi * SHAKE_CYCLES * (t_s - a.time_s) / a.duration_s)
    return env


def emotion_offsets(emotion: Emotion, intensity: float) -> dict[str, float]:
    return {k: v * intensity for k, v in EMOTION_OFFSETS[emotion].items()}


def _emotion_at(sb: Storyboard, t_s: float) -> dict[str, float]:
    i = _segment_index(sb, t_s)
    seg = sb.segments[i]
    half = EMOTION_BLEND_S / 2
    w_prev = w_next = 0.0
    if i > 0 and t_s - seg.start_s < half:
        w_prev = 0.5 * (1.0 - smoothstep((t_s - seg.start_s + half) / (2 * half)))
    if i + 1 < len(sb.segments) and seg.end_s - t_s < half:
        w_next = 0.5 * (1.0 - smoothstep((seg.end_s - t_s + half) / (2 * half)))
    out: dict[str, float] = {}
    for s, w in ((seg, 1.0 - w_prev - w_next),
                 (sb.segments[i - 1] if w_prev else None, w_prev),
                 (sb.segments[i + 1] if w_next else None, w_next)):
        if s is None or w <= 0.0:
            continue
        for k, v in EMOTION_OFFSETS[s.emotion].items():
            out[k] = out.get(k, 0.0) + v * s.intensity * w
    return out


def gaze_at(sb: Storyboard, t_s: float) -> tuple[float, float]:
    """The gaze plan's (x, y) at ``t_s``: each shift moves the eyes from the previous target over GAZE_MOVE_S."""
    x = y = 0.0
    for g in sb.gaze:
        if g.time_s > t_s:
            break
        w = smoothstep((t_s - g.time_s) / GAZE_MOVE_S)
        x, y = x + (g.x - x) * w, y + (g.y - y) * w
    return x, y


def state_at(storyboard: Storyboard, t_s: float, base: AvatarState | None = None) -> AvatarState:
    """The avatar state the storyboard asks for at ``t_s``: emotion offsets scaled by intensity (blended across
    segment borders), gaze plan, and every active action as a raised-cosine bump, added to ``base`` (neutral by
    default) and clamped to ``STATE_LIMITS``. Mouth fields are left as in ``base``: the audio drives them."""
    base = base or AvatarState()
    values = {n: getattr(base, n) for n in STATE_LIMITS}
    for k, v in _emotion_at(storyboard, t_s).items():
        values[k] += v
    gx, gy = gaze_at(storyboard, t_s)
    values["gaze_x"] += gx
    values["gaze_y"] += gy
    for a in _sorted_actions(storyboard):
        if a.time_s >= t_s:
            break
        if a.end_s <= t_s:
            continue
        s = _action_shape(a, t_s) * a.intensity
        if s == 0.0:
            continue
        for k, v in ACTION_OFFSETS[a.kind].items():
            values[k] += v * s
    for k, (lo, hi) in STATE_LIMITS.items():
        values[k] = min(hi, max(lo, values[k]))
    return base.with_(**values)


def _sorted_actions(sb: Storyboard) -> list[Action]:
    acts = sb.actions
    if all(acts[i].time_s <= acts[i + 1].time_s for i in range(len(acts) - 1)):
        return acts
    return sorted(acts, key=lambda a: a.time_s)


def action_peaks(storyboard: Storyboard) -> list[float]:
    """Times where actions peak (and where held actions reach and leave their hold), sorted, for keyframe
    placement. A shake contributes each of its swings' extremes; blinks contribute nothing (the generator draws
    them)."""
    peaks: set[float] = set()
    for a in storyboard.actions:
        if a.kind == ActionKind.blink:
            continue
        if a.kind == ActionKind.shake:
            n = 1000
            best = [a.time_s + a.duration_s * (k + 0.5) / n for k in range(n)]
            vals = [_action_shape(a, t) for t in best]
            for k in range(1, n - 1):
                if abs(vals[k]) >= abs(vals[k - 1]) and abs(vals[k]) > abs(vals[k + 1]) and abs(vals[k]) > 0.05:
                    peaks.add(round(best[k], 4))
        elif a.kind in _BUMP_ACTIONS:
            peaks.add(round(a.time_s + a.duration_s / 2, 4))
        else:
            ramp = min(ACTION_RAMP_S, a.duration_s / 2)
            peaks.add(round(a.time_s + ramp, 4))
            peaks.add(round(a.end_s - ramp, 4))
    return sorted(peaks)


def blink_times(storyboard: Storyboard) -> list[float]:
    """All blink onsets: the blink plan plus ``blink`` actions, sorted and de-duplicated (within 50 ms)."""
    times = sorted(list(storyboard.blink_times_s) +
                   [a.time_s for a in storyboard.actions if a.kind == ActionKind.blink])
    out: list[float] = []
    for t in times:
        if not out or t - out[-1] > 0.05:
            out.append(t)
    return out


# ---- command line -----------------------------------------------------------------------------------------------
