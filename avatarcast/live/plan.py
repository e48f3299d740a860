"""The live blueprint: the director's planned keyframes on a session's frame grid, and the sub-clips between them.

``PlanTimeline`` holds the keyframes the director returned for the stretch ahead of playback and its blink onsets.
Each pair of consecutive keyframes is one sub-clip (``subclip``: a first-last-frame ``ClipSpec`` from the first to
the last, the same object for all its frames while the plan around it stays, so a renderer keeps it open). A change
of plan cuts the timeline at a frame (``cut_after``) and the director goes on from there; ``new_subclips`` lists the
planned sub-clips not handed out before (for a generator that makes a whole sub-clip at once and wants it early).
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections import deque
from dataclasses import replace
from typing import Iterable, Iterator

from avatarcast.core.trajectory import clip_state
from avatarcast.core.types import NEUTRAL_STATE, AvatarState, ClipSpec, Keyframe

BLINK_WINDOW_S = 0.5
"""Blink onsets up to this long before a clip are passed to it (a blink lasts a few frames)."""

class PlanTimeline:
    """The director's planned keyframes on the session timeline (on its frame grid) and its blink onsets. Each pair of
    consecutive keyframes bounds one sub-clip."""

    def __init__(self, fps: float, state: AvatarState = NEUTRAL_STATE) -> None:
        self.fps = float(fps)
        self.keyframes: list[Keyframe] = [Keyframe(0.0, state)]
        self.blink_times_s: list[float] = []
        self._last: tuple[Keyframe, Keyframe, tuple[float, ...], ClipSpec] | None = None  # the latest sub-clip
        self._clip_ids = itertools.count(1)
        self._listed: deque[tuple[Keyframe, Keyframe]] = deque(maxlen=16)  # sub-clips handed to new_subclips

    @property
    def end_s(self) -> float:
        return self.keyframes[-1].time_s

    def add(self, keyframes: Iterable[Keyframe], blink_times_s: Iterable[float]) -> None:
        """Append keyframes after the plan's end, each moved to the nearest frame (a keyframe on the frame of the one
        before it is dropped)."""
        for kf in sorted(keyframes, key=lambda k: k.time_s):
            t = round(kf.time_s * self.fps) / self.fps
            if t > self.end_s + 1e-9:
                self.keyframes.append(kf if t == kf.time_s else replace(kf, time_s=t))
        self.blink_times_s.extend(b for b in blink_times_s if b > (self.blink_times_s[-1] if self.blink_times_s else -1))

    def segment(self, t_s: float) -> tuple[Keyframe, Keyframe]:
        """The keyframes ``a, b`` with ``a.time_s <= t_s < b.time_s`` (past the plan's end: its last state held for
        a frame)."""
        i = max(bisect_right(self.keyframes, t_s + 1e-9, key=_keyframe_time) - 1, 0)
        if i + 1 < len(self.keyframes):
            return self.keyframes[i], self.keyframes[i + 1]
        a = self.keyframes[i]
        return a, Keyframe((math.floor(t_s * self.fps + 1e-6) + 1) / self.fps, a.state)

    def cut_after(self, t_s: float, state: AvatarState, keep_blinks: bool = False) -> None:
        """Forget the plan after ``t_s`` and pin ``state`` there (and the blinks after it, unless ``keep_blinks``:
        the director goes on past the blinks it has planned)."""
        self.keyframes = [kf for kf in self.keyframes if kf.time_s < t_s - 1e-9] + [Keyframe(t_s, state)]
        if not keep_blinks:
            self.blink_times_s = [b for b in self.blink_times_s if b <= t_s]

    def prune_before(self, t_s: float) -> None:
        while len(self.keyframes) > 2 and self.keyframes[1].time_s < t_s:
            self.keyframes.pop(0)
        while self.blink_times_s and self.blink_times_s[0] < t_s - 2 * BLINK_WINDOW_S:
            self.blink_times_s.pop(0)

    def blinks_near(self, t0_s: float, t1_s: float) -> tuple[float, ...]:
        return tuple(b for b in self.blink_times_s if t0_s - BLINK_WINDOW_S <= b < t1_s)

    def subclip(self, k: int, seed: int) -> tuple[ClipSpec, int]:
        """The sub-clip that frame ``k`` belongs to and the frame's index in it. A sub-clip is the same object for
        all its frames while the plan around it stays (its keyframes and the blinks in it), so the renderer keeps it
        open; a changed plan makes a new one (a new ``index``)."""
        a, b = self.segment(k / self.fps)
        if not self._frame(a) <= k < self._frame(b):  # keyframes off the frame grid (not from this timeline)
            a, b = Keyframe(k / self.fps, a.state), Keyframe((k + 1) / self.fps, b.state)
        blinks = self.blinks_near(a.time_s, b.time_s)
        last = self._last
        if last is None or last[0] is not a or last[1] is not b or last[2] != blinks:
            self._last = last = (a, b, blinks, self._clip(a, b, seed, next(self._clip_ids), blinks))
        return last[3], k - self._frame(a)

    def state_at_frame(self, k: int) -> AvatarState:
        """The state the plan shows at frame ``k`` before blinks and mouth (its sub-clip's, ``clip_state``), without
        handing out a sub-clip."""
        a, b = self.segment(k / self.fps)
        if not self._frame(a) <= k < self._frame(b):
            return a.state
        return clip_state(self._clip(a, b), k - self._frame(a))

    def new_subclips(self, t_s: float, seed: int) -> Iterator[ClipSpec]:
        """The planned sub-clips that end after ``t_s`` and were not listed before (once each)."""
        kfs = self.keyframes
        for a, b in zip(kfs, kfs[1:]):
            if b.time_s <= t_s or any(a is p and b is q for p, q in self._listed):
                continue
            self._listed.append((a, b))
            if self._frame(b) > self._frame(a):
                yield self._clip(a, b, seed)

    def _frame(self, kf: Keyframe) -> int:
        return round(kf.time_s * self.fps)

    def _clip(self, a: Keyframe, b: Keyframe, seed: int = 0, index: int = 0,
              blinks: tuple[float, ...] = ()) -> ClipSpec:
        """The sub-clip from keyframe ``a`` to keyframe ``b``."""
        fa = self._frame(a)
        return ClipSpec(index=index, first=a, last=b, fps=self.fps, start_frame=fa, n_frames=self._frame(b) - fa,
                        blink_times_s=blinks, seed=seed)


def _keyframe_time(kf: Keyframe) -> float:
    return kf.time_s
