"""The core types shared by every stage: AvatarState, Keyframe, ClipSpec and the Generator protocol.

Conventions used everywhere in the project:

- Frames are RGB ``uint8`` arrays of shape ``(height, width, 3)``.
- Audio inside the engine is mono ``float32`` in [-1, 1] at ``AUDIO_RATE_HZ``.
- Frame ``i`` of a timeline shows time ``i / fps`` seconds and is paired with the audio samples
  ``[i * rate / fps, (i + 1) * rate / fps)``.
- A ``ClipSpec`` covers the frames ``[start_frame, start_frame + n_frames)``. Its state trajectory starts exactly at
  ``first.state`` (frame 0) and would reach exactly ``last.state`` at frame ``n_frames``, which is the first frame of
  the next clip. Joins are therefore seamless by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from avatarcast.core.errors import InputError, InvalidValueError

AUDIO_RATE_HZ = 16000
"""The one internal audio rate: every input is resampled to it."""


@dataclass(frozen=True)
class AvatarState:
    """One keyframe's pose and expression, as a small fixed set of named floats.

    Angles are in degrees, offsets in fractions of the face width; the rest are unitless in the stated range.
    A default-constructed state is the neutral, closed-mouth, eyes-open, looking-at-camera pose.
    """

    head_yaw_deg: float = 0.0  # + turns toward the viewer's right
    head_pitch_deg: float = 0.0  # + nods down
    head_roll_deg: float = 0.0  # + tilts clockwise as seen by the viewer
    head_x: float = 0.0  # horizontal offset, fraction of face width, + to the viewer's right
    head_y: float = 0.0  # vertical offset, fraction of face width, + down
    head_scale: float = 1.0  # 1.05 = leaning in by 5 %
    jaw_open: float = 0.0  # 0 closed .. 1 wide open
    mouth_wide: float = 0.0  # 0 neutral .. 1 lips spread (ee)
    mouth_round: float = 0.0  # 0 neutral .. 1 lips rounded (oo)
    smile: float = 0.0  # -1 frown .. 0 neutral .. 1 broad smile
    brow_raise: float = 0.0  # -1 furrowed .. 0 neutral .. 1 raised
    eye_open_left: float = 1.0  # 0 closed .. 1 normal .. 1.3 wide (the subject's left eye)
    eye_open_right: float = 1.0
    gaze_x: float = 0.0  # -1 .. 1, + toward the viewer's right
    gaze_y: float = 0.0  # -1 .. 1, + down

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_array(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in self.field_names()], dtype=np.float32)

    @classmethod
    def from_array(cls, values: np.ndarray) -> "AvatarState":
        names = cls.field_names()
        if len(values) != len(names):
            raise InvalidValueError(f"expected {len(names)} values for AvatarState, got {len(values)}")
        return cls(**{n: float(v) for n, v in zip(names, values)})

    def lerp(self, other: "AvatarState", t: float) -> "AvatarState":
        """Linear interpolation: ``t=0`` gives ``self``, ``t=1`` gives ``other`` exactly."""
        if t <= 0.0:
            return self
        if t >= 1.0:
            return other
        a, b = self.to_array(), other.to_array()
        return AvatarState.from_array(a + (b - a) * np.float32(t))

    def with_(self, **changes: float) -> "AvatarState":
        return replace(self, **changes)


NEUTRAL_STATE = AvatarState()
STATE_FIELDS = AvatarState.field_names()
MOUTH_FIELDS = ("jaw_open", "mouth_wide", "mouth_round")


@dataclass(frozen=True)
class Keyframe:
    """An avatar state at a time on the timeline (and, for neural generators, its rendered image)."""

    time_s: float
    state: AvatarState
    image: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ClipSpec:
    """The unit of parallel work: the frames between two consecutive keyframes and their audio.

    ``mouth`` holds per-frame ``(jaw_open, mouth_wide, mouth_round)`` derived from the whole utterance's audio
    (so smoothing has context across clip borders); a generator uses it in preference to re-analysing ``audio``.
    When ``mouth`` is given its rows override the three mouth fields at every frame, frame 0 included; the cascade
    fills the keyframes' mouth fields from the same track so both agree.
    ``blink_times_s`` are absolute times of blink onsets that fall inside (or just before) the clip.
    With ``mouth_streamed`` (live mode) the rows of ``mouth`` are written one at a time, each just before its frame is
    asked for (the speech arrives while the clip plays): a generator reads row ``i`` when it renders frame ``i``,
    never earlier.
    """

    index: int
    first: Keyframe
    last: Keyframe
    fps: float
    start_frame: int
    n_frames: int
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), compare=False, repr=False)
    audio_rate_hz: int = AUDIO_RATE_HZ
    mouth: np.ndarray | None = field(default=None, compare=False, repr=False)
    blink_times_s: tuple[float, ...] = ()
    seed: int = 0
    mouth_streamed: bool = False

    def __post_init__(self) -> None:
        if self.n_frames < 1:
            raise InvalidValueError(f"a clip needs at least one frame, got n_frames={self.n_frames}")
        if self.fps <= 0:
            raise InvalidValueError(f"fps must be positive, got {self.fps}")
        if self.mouth is not None and self.mouth.shape != (self.n_frames, 3):
            raise InvalidValueError(f"mouth must have shape ({self.n_frames}, 3), got {self.mouth.shape}")

    @property
    def start_s(self) -> float:
        return self.start_frame / self.fps

    @property
    def end_s(self) -> float:
        return (self.start_frame + self.n_frames) / self.fps

    def frame_time_s(self, i: int) -> float:
        return (self.start_frame + i) / self.fps


@dataclass(frozen=True)
class ClipRun:
    """Consecutive sub-clips encoded together into one segment (one keyframe, at the first clip's first frame).

    Each clip is still generated on its own from its two keyframes; encoding a run of them as one stream means the
    joins inside the run need no new keyframe, so the codec does not redraw its noise there (a keyframe requantises
    the whole picture, a change of about a grey level per pixel even where nothing moves) and the file is smaller.
    """

    index: int
    clips: tuple[ClipSpec, ...]

    def __post_init__(self) -> None:
        if not self.clips:
            raise InvalidValueError("a run needs at least one clip")
        for a, b in zip(self.clips, self.clips[1:]):
            if b.start_frame != a.start_frame + a.n_frames:
                raise InvalidValueError(f"the clips of a run must be consecutive: clip {b.index} starts at frame "
                                        f"{b.start_frame}, not {a.start_frame + a.n_frames}")

    @property
    def n_frames(self) -> int:
        return sum(c.n_frames for c in self.clips)

    @property
    def start_frame(self) -> int:
        return self.clips[0].start_frame

    @property
    def fps(self) -> float:
        return self.clips[0].fps


@runtime_checkable
class Generator(Protocol):
    """Renders the frames of one sub-clip. Implementations: parametric (CPU), neural (GPU)."""

    @property
    def size(self) -> tuple[int, int]:
        """Output ``(width, height)`` in pixels."""
        ...

    # Optional: ``changing_box: tuple[int, int, int, int]``, an ``(x0, y0, x1, y1)`` box outside which every
    # frame the generator renders is the same image. Encoders then convert only that box per frame.

    def render(self, clip: ClipSpec, *, start: int = 0) -> Iterator[np.ndarray]:
        """Yield RGB uint8 frames of shape ``(height, width, 3)``: frames ``start .. clip.n_frames - 1`` of the clip
        (a live session resumes a clip part-way, after frames it held or replaced).

        Frame 0 shows ``clip.first.state`` exactly; the trajectory would reach ``clip.last.state`` at frame
        ``clip.n_frames`` (the next clip's frame 0). Frame ``i`` is the same whatever ``start`` is. The output is
        deterministic given ``clip.seed``.
        """
        ...


def render_into_one_buffer(generator: Generator, clip: ClipSpec, start: int = 0) -> Iterator[np.ndarray]:
    """``generator``'s frames for ``clip`` from frame ``start`` on, all in one reused array where the generator offers
    that (optional: ``reuses_buffer = True`` and ``render(clip, reuse_buffer=True)``), which saves a whole-frame copy
    per frame; for a consumer that is done with each frame before it asks for the next (an encoder, a colour
    conversion)."""
    more = {"start": start} if start else {}
    if getattr(generator, "reuses_buffer", False):
        return generator.render(clip, reuse_buffer=True, **more)
    return generator.render(clip, **more)


def frame_rate(fps: float) -> Fraction:
    """The exact rational frame rate for ``fps`` (25 -> 25/1, 29.97 -> 2997/100, 29.97003 -> 30000/1001)."""
    if fps <= 0 or not math.isfinite(fps):
        raise InputError(f"the frame rate must be a positive number, got {fps}")
    rate = Fraction(fps).limit_denominator(1001)
    return rate
