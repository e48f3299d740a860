"""The blueprint: low-rate keyframes over the whole timeline, the clip specs between them, and a cheap preview.

Keyframes are where the storyboard's intent is pinned down; everything between two keyframes is a sub-clip that a
generator fills with a first-last-frame strategy. Placement follows the paper's criteria for keyframes, adapted to
an avatar whose states come from a storyboard:

- **Structure**: a keyframe at the start, the end, every segment border, and every action's onset, peak(s) and end
  (without onset and end keyframes a 0.7 s nod would be smeared over the whole gap to the next keyframe).
- **Coverage**: at least one keyframe every ``max_spacing_s`` (2 s by default), so sub-clips stay short.
- **Clear, identity-faithful faces**: a keyframe is what a neural generator is conditioned on, so it should show
  the face plainly: no keyframe in mid-blink, none at an extreme mouth opening when a nearly closed mouth is within
  ``snap_tolerance_s``, and no needlessly extreme head pose. Segment borders and filler keyframes are moved within
  the tolerance to such times; action anchors keep their exact times (they *are* the intent).
- **Motion diversity**: a filler keyframe prefers the time where the storyboard's motion departs most from the
  straight line between its neighbours, i.e. where a keyframe adds the most motion information.
- **Quiet joins**: a keyframe is where one sub-clip ends and the next begins, so every keyframe avoids a frame that
  changes a lot from the one before (the jaw snapping open at a speech onset, a fast head movement): a change
  there would look like a seam even though the clips join exactly. Action anchors move at most
  ``ACTION_SNAP_S`` for this (a nod's onset, peak and end have no velocity, so a frame or two changes nothing
  visible; an onset moves only earlier and an end only later); segment borders and fillers weigh it with the
  clarity of the face.

All keyframe times lie on frame boundaries (``frame / fps``), so the clip specs partition the frames exactly.
Keyframe states are ``state_at(storyboard, t)`` with the three mouth fields taken from the global mouth track at
that frame, which is the same track the clips carry: a keyframe and the clip frame that shows it agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from avatarcast.core.errors import InvalidValueError
from avatarcast.core.trajectory import interpolate_keyframes
from avatarcast.core.types import AUDIO_RATE_HZ, MOUTH_FIELDS, AvatarState, ClipRun, ClipSpec, Keyframe, frame_rate
from avatarcast.direction.storyboard import Storyboard, action_peaks, blink_times, state_at

MAX_KEYFRAME_SPACING_S = 2.0
"""Longest allowed gap between consecutive keyframes (the longest sub-clip)."""
MIN_KEYFRAME_SPACING_S = 0.12
"""Anchors closer than this are merged (the more important one stays)."""
SNAP_TOLERANCE_S = 0.25
"""How far a segment-border or filler keyframe may move to find a clear face."""
BLINK_DURATION_S = 0.25
"""A blink's onset-to-reopened time: keyframes avoid ``[onset - 0.05, onset + BLINK_DURATION_S]``."""
BLINK_LOOKBACK_S = 0.5
"""A clip receives the blinks whose onset lies in ``[start - BLINK_LOOKBACK_S, end)``: one that began just before
its first frame may still be closing the eyes."""
ACTION_SNAP_S = 0.045
"""How far an action's onset, peak or end keyframe may move to a quieter frame (about two frames at 48 fps)."""
JOIN_CHANGE_WEIGHT = 4.0
"""Weight of the expected frame-to-frame change at a movable keyframe against its clarity cost."""
OPEN_MOUTH_LIMIT = 0.55
"""Mouth openness (see ``mouth_openness``) above which a keyframe counts as an extreme mouth opening."""

# Anchor priorities (higher wins when two anchors merge).
_PRIORITY_EDGE = 4
_PRIORITY_PEAK = 3
_PRIORITY_ACTION = 2  # onsets and ends
_PRIORITY_BORDER = 1

# Per-field scales that make state differences comparable (degrees are larger numbers than the unit fields).
_FIELD_SCALE = {"head_yaw_deg": 10.0, "head_pitch_deg": 10.0, "head_roll_deg": 10.0, "head_x": 0.1, "head_y": 0.1,
                "head_scale": 0.05}


@dataclass
class Blueprint:
    """Keyframes over ``[0, n_frames / fps]`` plus what the clips need to be rendered consistently."""

    keyframes: list[Keyframe]
    frames: list[int]  # keyframe i sits at frame frames[i]; frames[0] == 0, frames[-1] == n_frames
    fps: float
    n_frames: int
    blink_times_s: tuple[float, ...] = ()
    reasons: list[str] = field(default_factory=list)  # why each keyframe is there: start, end, border, action, fill

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.fps

    def state_at(self, t_s: float) -> AvatarState:
        """The keyframe trajectory at ``t_s``: eased interpolation between the surrounding keyframes."""
        return interpolate_keyframes(self.keyframes, t_s)


def mouth_openness(rows: np.ndarray) -> np.ndarray:
    """How open the mouth is, per mouth-track row: the jaw, plus a little for spread or rounded lips."""
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, 3)
    return rows[:, 0] + 0.3 * (rows[:, 1] + rows[:, 2])


def mouth_change(rows: np.ndarray, n: int | None = None) -> np.ndarray:
    """Per frame, how much the mouth changes from the frame before: the summed absolute change of jaw, spread and
    rounding (a rounded vowel after a spread one changes the picture as much as the jaw opening does, at the same
    opening). ``n`` pads with zeros (or cuts) to that many frames; frame 0 reads 0."""
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, 3)
    step = np.zeros(len(rows), np.float32)
    if len(rows) > 1:
        step[1:] = np.abs(np.diff(rows, axis=0)).sum(axis=1)
    if n is not None:
        step = np.concatenate([step, np.zeros(max(0, n - len(step)), np.float32)])[:n]
    return step


def _state_distance(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    return float(np.sqrt(np.sum(((a - b) / scale) ** 2)))


class _Timeline:
    """Per-frame quantities used to score keyframe times."""

    def __init__(self, storyboard: Storyboard, mouth: np.ndarray, fps: float, n_frames: int,
                 blinks: list[float]) -> None:
        self.storyboard = storyboard
        self.fps = fps
        self.n_frames = n_frames
        self.openness = np.zeros(n_frames + 1, np.float32)
        self.openness[:len(mouth)] = mouth_openness(mouth)[:n_frames + 1]
        self.mouth_step = mouth_change(mouth, n_frames + 1)
        t = np.arange(n_frames + 1) / fps
        self.in_blink = np.zeros(n_frames + 1, bool)
        for b in blinks:
            self.in_blink |= (t >= b - 0.05) & (t <= b + BLINK_DURATION_S)
        self.scale = np.array([_FIELD_SCALE.get(n, 1.0) for n in AvatarState.field_names()], np.float32)
        self._states: dict[int, np.ndarray] = {}

    def state(self, frame: int) -> np.ndarray:
        s = self._states.get(frame)
        if s is None:
            t = min(frame / self.fps, self.storyboard.duration_s)
            s = self._states[frame] = state_at(self.storyboard, t).to_array()
        return s

    def join_change(self, frame: int) -> float:
        """How much frame ``frame`` is expected to change from the frame before: the mouth track's change (see
        ``mouth_change``) plus the storyboard's motion over one frame (0 at the timeline's edges)."""
        if frame <= 0 or frame >= self.n_frames:
            return 0.0
        return float(self.mouth_step[frame]) + _state_distance(self.state(frame), self.state(frame - 1), self.scale)

    def clarity_cost(self, frame: int) -> float:
        """0 for a plain face; grows with mouth opening, blinks and extreme head poses."""
        cost = 0.0
        opening = float(self.openness[frame])
        cost += 2.0 * opening + (4.0 if opening > OPEN_MOUTH_LIMIT else 0.0)
        if self.in_blink[frame]:
            cost += 8.0
        s = self.state(frame)
        names = AvatarState.field_names()
        pose = abs(s[names.index("head_yaw_deg")]) + abs(s[names.index("head_pitch_deg")])
        cost += 0.02 * max(0.0, pose - 15.0)
        return cost


def _search_window(center: int, radius: int, lo: int, hi: int) -> range:
    return range(max(lo, center - radius), min(hi, center + radius) + 1)


def build_blueprint(storyboard: Storyboard, mouth: np.ndarray, fps: float, *, n_frames: int | None = None,
                    max_spacing_s: float = MAX_KEYFRAME_SPACING_S, min_spacing_s: float = MIN_KEYFRAME_SPACING_S,
                    snap_tolerance_s: float = SNAP_TOLERANCE_S) -> Blueprint:
    """Choose keyframes for ``storyboard`` (see the module docstring) on a timeline of ``n_frames`` frames.

    ``mouth`` is the global mouth track, ``(n_frames, 3)`` rows of jaw_open, mouth_wide, mouth_round.
    ``n_frames`` defaults to ``len(mouth)``.
    """
    if max_spacing_s <= 0 or min_spacing_s < 0 or snap_tolerance_s < 0:
        raise InvalidValueError("keyframe spacings and tolerance must be positive")
    mouth = np.asarray(mouth, dtype=np.float32).reshape(-1, 3)
    n_frames = int(n_frames if n_frames is not None else len(mouth))
    if n_frames < 1:
        raise InvalidValueError("the timeline needs at least one frame")
    blinks = blink_times(storyboard)
    tl = _Timeline(storyboard, mouth, fps, n_frames, blinks)
    to_frame = lambda t: int(min(n_frames, max(0, round(t * fps))))  # noqa: E731
    max_gap = max(1, int(math.floor(max_spacing_s * fps + 1e-9)))
    min_gap = max(1, int(round(min_spacing_s * fps)))
    snap = int(round(snap_tolerance_s * fps))
    action_snap = int(round(ACTION_SNAP_S * fps))

    def quiet(frame: int, side: int = 0) -> int:
        """The frame within ``action_snap`` of ``frame`` whose change from the frame before is smallest; ``side``
        -1 looks only earlier (an onset: the action has not started yet), +1 only later (an end)."""
        lo = frame - (action_snap if side <= 0 else 0)
        hi = frame + (action_snap if side >= 0 else 0)
        window = range(max(1, lo), min(n_frames - 1, hi) + 1)
        return min(window, key=lambda f: (tl.join_change(f) + 0.01 * abs(f - frame), abs(f - frame)), default=frame)

    # 1. Anchors: frame -> (priority, reason).
    anchors: dict[int, tuple[int, str]] = {}

    def add(frame: int, priority: int, reason: str) -> None:
        if frame not in anchors or anchors[frame][0] < priority:
            anchors[frame] = (priority, reason)

    add(0, _PRIORITY_EDGE, "start")
    add(n_frames, _PRIORITY_EDGE, "end")
    for a in storyboard.actions:
        if a.kind.value == "blink":
            continue
        add(quiet(to_frame(a.time_s), -1), _PRIORITY_ACTION, f"{a.kind.value} onset")
        add(quiet(to_frame(a.end_s), +1), _PRIORITY_ACTION, f"{a.kind.value} end")
    for t in action_peaks(storyboard):
        add(quiet(to_frame(t)), _PRIORITY_PEAK, "action peak")
    for seg in storyboard.segments[1:]:
        center = to_frame(seg.start_s)
        best = min(_search_window(center, snap, 1, n_frames - 1),
                   key=lambda f: (tl.clarity_cost(f) + JOIN_CHANGE_WEIGHT * tl.join_change(f)
                                  + 0.1 * abs(f - center) / max(1, snap), abs(f - center)),
                   default=center)
        add(best, _PRIORITY_BORDER, "segment border")

    # 2. Merge anchors closer than min_gap: keep the higher priority (the earlier one on ties); edges never move.
    kept: list[int] = []
    for f in sorted(anchors):
        if kept and f - kept[-1] < min_gap:
            prev = kept[-1]
            if f == n_frames:
                if prev == 0:
                    kept.append(f)  # a timeline shorter than min_gap: just the two edges
                else:
                    kept[-1] = f
            elif prev != 0 and anchors[f][0] > anchors[prev][0]:
                kept[-1] = f
            continue
        kept.append(f)

    # 3. Fill gaps longer than max_gap: evenly spaced targets, each moved within a window to the clearest face with
    #    the most motion information, the window small enough that no gap can exceed max_gap.
    frames = [kept[0]]
    reasons = [anchors.get(kept[0], (0, "start"))[1]]
    for a, b in zip(kept, kept[1:]):
        gap = b - a
        if gap > max_gap:
            k = math.ceil(gap / (0.8 * max_gap)) - 1  # inner keyframes; the 0.8 leaves room to move them
            k = max(k, math.ceil(gap / max_gap) - 1)
            spacing = gap / (k + 1)
            radius = max(0, min(snap, int((max_gap - spacing) // 2)))
            sa, sb = tl.state(a), tl.state(b)
            prev = a
            for j in range(1, k + 1):
                target = int(round(a + j * spacing))
                lo = max(prev + 1, b - (k - j + 1) * max_gap)  # leave the rest of the gap coverable
                hi = min(b - 1, prev + max_gap)
                target = min(hi, max(lo, target))
                window = _search_window(target, radius, lo, hi)

                def cost(f: int) -> float:
                    u = (f - a) / gap
                    straight = sa + (sb - sa) * u
                    novelty = _state_distance(tl.state(f), straight, tl.scale)
                    return (tl.clarity_cost(f) + JOIN_CHANGE_WEIGHT * tl.join_change(f) - 0.5 * min(novelty, 2.0)
                            + 0.2 * abs(f - target) / max(1, radius))

                best = min(window, key=lambda f: (cost(f), abs(f - target)))
                frames.append(best)
                reasons.append("fill")
                prev = best
        frames.append(b)
        reasons.append(anchors.get(b, (0, "end"))[1])

    keyframes = [Keyframe(f / fps, keyframe_state(storyboard, mouth, f, fps)) for f in frames]
    return Blueprint(keyframes=keyframes, frames=frames, fps=fps, n_frames=n_frames,
                     blink_times_s=tuple(blinks), reasons=reasons)


def keyframe_state(storyboard: Storyboard, mouth: np.ndarray, frame: int, fps: float) -> AvatarState:
    """``state_at(storyboard, frame / fps)`` with the mouth fields from the mouth track's row for that frame
    (the last row past the end: the final keyframe is only ever a target)."""
    state = state_at(storyboard, min(frame / fps, storyboard.duration_s))
    if len(mouth) == 0:
        return state
    row = mouth[min(frame, len(mouth) - 1)]
    return state.with_(**{name: float(v) for name, v in zip(MOUTH_FIELDS, row)})


def iter_clip_specs(blueprint: Blueprint, audio: np.ndarray, mouth: np.ndarray, *,
                    audio_rate_hz: int = AUDIO_RATE_HZ, seed: int = 0) -> Iterator[ClipSpec]:
    """The sub-clips between consecutive keyframes, in order, created lazily (audio and mouth are views).

    Clip ``i`` covers frames ``[frames[i], frames[i + 1])`` and the audio samples paired with them; together the
    clips cover every frame of the timeline exactly once. The last clip's audio is zero-padded past the end.
    """
    samples = getattr(audio, "samples", audio)
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    mouth = np.asarray(mouth, dtype=np.float32).reshape(-1, 3)
    fps = blueprint.fps
    rate = frame_rate(fps)
    blinks = np.asarray(blueprint.blink_times_s, dtype=np.float64)
    for i, (a, b) in enumerate(zip(blueprint.frames, blueprint.frames[1:])):
        s0 = int(a * audio_rate_hz / rate)
        s1 = int(b * audio_rate_hz / rate)
        clip_audio = samples[s0:s1]
        if len(clip_audio) < s1 - s0:
            clip_audio = np.concatenate([clip_audio, np.zeros(s1 - s0 - len(clip_audio), np.float32)])
        rows = mouth[a:b]
        if len(rows) < b - a:  # the mouth track may be a frame short of the video: hold the last row
            pad = np.repeat(rows[-1:] if len(rows) else np.zeros((1, 3), np.float32), b - a - len(rows), axis=0)
            rows = np.concatenate([rows, pad])
        start_s, end_s = a / fps, b / fps
        clip_blinks = tuple(float(t) for t in blinks[(blinks >= start_s - BLINK_LOOKBACK_S) & (blinks < end_s)])
        yield ClipSpec(index=i, first=blueprint.keyframes[i], last=blueprint.keyframes[i + 1], fps=fps,
                       start_frame=a, n_frames=b - a, audio=clip_audio, audio_rate_hz=audio_rate_hz, mouth=rows,
                       blink_times_s=clip_blinks, seed=seed)


RUN_MAX_S = 5.0
"""Longest run of sub-clips encoded into one segment (see ``ClipRun``)."""
RUN_TARGET_S = 3.0
"""The length a run aims at; it ends earlier or later where a keyframe shows less (see ``run_bounds``)."""
RUN_LENGTH_WEIGHT = 0.5
"""How much a run's departure from its target length costs against a keyframe in speech (see ``run_bounds``)."""


def run_bounds(blueprint: Blueprint, mouth: np.ndarray | None = None, *, max_run_s: float = RUN_MAX_S,
               target_s: float = RUN_TARGET_S) -> list[int]:
    """Where runs of sub-clips start: indices into the clips (``0`` first), for ``ClipRun`` grouping.

    Runs are at most ``max_run_s`` long (a clip longer than that is a run on its own). Each ends at the join that
    best trades ``target_s`` against where a new keyframe shows least: in a pause (the mouth closed and still),
    because the keyframe redraws the codec's noise. Runs therefore differ in length; a renderer balances its
    workers by starting the longest first (see ``longest_first``). The grouping depends on the
    blueprint alone, not on the number of workers, so the bytes are the same however the render is run.
    """
    frames = blueprint.frames
    n_clips = len(frames) - 1
    if n_clips < 1:
        return [0]
    have_mouth = mouth is not None and len(mouth) > 0
    openness = mouth_openness(mouth) if have_mouth else np.zeros(0, np.float32)
    step = mouth_change(mouth) if have_mouth else np.zeros(0, np.float32)

    def keyframe_cost(frame: int) -> float:
        """How visible a new keyframe at ``frame`` would be: least in a pause (a closed, still mouth)."""
        if frame <= 0 or frame >= len(openness):
            return 0.0
        return float(step[frame]) + 0.5 * (float(openness[frame - 1]) + float(openness[frame]))

    max_frames = max(1.0, max_run_s * blueprint.fps)
    target = max(1.0, min(max_frames, target_s * blueprint.fps))
    starts = [0]
    i = 0
    while i < n_clips:
        reach = [j for j in range(i + 1, n_clips + 1) if frames[j] - frames[i] <= max_frames] or [i + 1]

        def score(j: int) -> tuple[float, int]:
            length = frames[j] - frames[i]
            return keyframe_cost(frames[j]) + RUN_LENGTH_WEIGHT * ((length - target) / target) ** 2, j

        end = min(reach, key=score)
        if end < n_clips:
            starts.append(end)
        i = end
    return starts


def longest_first(runs: Iterable[ClipRun]) -> list[ClipRun]:
    """The runs in the order to render them in parallel: longest first, so the last to start are the shortest and
    the workers finish close together (ties keep timeline order)."""
    return sorted(runs, key=lambda r: (-r.n_frames, r.index))


def iter_clip_runs(clips: Iterable[ClipSpec], starts: list[int]) -> Iterator[ClipRun]:
    """Group the clips (in order) into runs that start at the clip indices ``starts`` (see ``run_bounds``)."""
    bounds = set(starts)
    run: list[ClipSpec] = []
    index = 0
    for clip in clips:
        if clip.index in bounds and run:
            yield ClipRun(index, tuple(run))
            index += 1
            run = []
        run.append(clip)
    if run:
        yield ClipRun(index, tuple(run))


def clip_specs(blueprint: Blueprint, audio: np.ndarray, mouth: np.ndarray, fps: float | None = None, *,
               audio_rate_hz: int = AUDIO_RATE_HZ, seed: int = 0) -> list[ClipSpec]:
    """All clip specs as a list (see ``iter_clip_specs``). ``fps``, when given, must match the blueprint's."""
    if fps is not None and abs(fps - blueprint.fps) > 1e-9:
        raise InvalidValueError(f"the blueprint was built at {blueprint.fps} fps, not {fps}")
    return list(iter_clip_specs(blueprint, audio, mouth, audio_rate_hz=audio_rate_hz, seed=seed))


PREVIEW_HEIGHT_PX = 256
PREVIEW_FPS = 8.0


def preview_frames(blueprint: Blueprint, render_state: Callable[[AvatarState, int], np.ndarray], mouth: np.ndarray,
                   preview_fps: float = PREVIEW_FPS) -> Iterator[np.ndarray]:
    """Frames of the blueprint preview: the eased keyframe trajectory with the mouth track's shapes, sampled at
    ``preview_fps``; a frame that falls on a keyframe gets a small white marker in its top-left corner."""
    n = max(1, math.ceil(blueprint.duration_s * preview_fps - 1e-9))
    key_times = np.array([k.time_s for k in blueprint.keyframes])
    half = 0.5 / preview_fps
    for i in range(n):
        t = i / preview_fps
        state = blueprint.state_at(t)
        video_frame = min(blueprint.n_frames - 1, int(round(t * blueprint.fps)))
        if len(mouth):
            row = mouth[min(video_frame, len(mouth) - 1)]
            state = state.with_(**{name: float(v) for name, v in zip(MOUTH_FIELDS, row)})
        frame = np.array(render_state(state, video_frame), copy=True)
        if np.any(np.abs(key_times - t) <= half):
            m = max(4, frame.shape[0] // 24)
            frame[m:2 * m, m:2 * m] = 255
        yield frame


def preview_size(size: tuple[int, int], height_px: int = PREVIEW_HEIGHT_PX) -> tuple[int, int]:
    """The preview's (width, height): ``height_px`` high (or less), same aspect as ``size``, both even."""
    w, h = size
    scale = min(1.0, height_px / h)
    return max(16, int(round(w * scale / 2)) * 2), max(16, int(round(h * scale / 2)) * 2)
