"""Trajectories: easing, and interpolation along keyframes. Every room that moves the face between two states uses
these (the blueprint, the live scheduler, the directors, the generators, the rig and the warp), so they agree to
the bit.

- ``smoothstep(t)``: ``3t^2 - 2t^3`` on ``t`` clamped to [0, 1]: zero velocity at both ends. Floats or arrays.
- ``smoothstep_range(lo, hi, x)``: the same ramp from ``lo`` to ``hi`` (GLSL's ``smoothstep(edge0, edge1, x)``).
- ``ease_between(a, b, u)``: the state a fraction ``u`` of the way from ``a`` to ``b``, eased.
- ``interpolate_keyframes(keyframes, t_s)``: the state at ``t_s`` on the path through time-sorted keyframes, eased
  between the two around it, held before the first and after the last.
- ``clip_state(clip, i)``: the state a sub-clip shows at its frame ``i`` (before blinks): its first keyframe eased
  towards its last, with the clip's mouth row. The generators render it; live mode reads it back for what it shows.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Callable, Sequence, TypeVar

import numpy as np

from avatarcast.core.types import MOUTH_FIELDS, AvatarState, ClipSpec, Keyframe

Number = TypeVar("Number", float, np.ndarray)


def smoothstep(t: Number) -> Number:
    """``3t^2 - 2t^3`` of ``t`` clamped to [0, 1] (a float for a float, an array for an array)."""
    if isinstance(t, np.ndarray):
        t = np.clip(t, 0.0, 1.0)
    else:
        t = min(max(t, 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def smoothstep_range(lo: float, hi: float, x: Number) -> Number:
    """0 at ``x <= lo``, 1 at ``x >= hi``, smoothstep in between."""
    return smoothstep(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def linear(t: float) -> float:
    """No easing: ``t`` clamped to [0, 1]."""
    return min(max(t, 0.0), 1.0)


def ease_between(a: AvatarState, b: AvatarState, u: float,
                 ease: Callable[[float], float] = smoothstep) -> AvatarState:
    """The state ``ease(u)`` of the way from ``a`` to ``b`` (``a`` itself at ``u <= 0``, ``b`` at ``u >= 1``)."""
    return a.lerp(b, ease(u))


def interpolate_keyframes(keyframes: Sequence[Keyframe], t_s: float,
             ease: Callable[[float], float] = smoothstep) -> AvatarState:
    """The state at ``t_s`` on the path through ``keyframes`` (sorted by time, at least one): the first keyframe's
    before it, the last one's after it, and between the keyframes ``a`` and ``b`` around ``t_s``
    (``a.time_s <= t_s < b.time_s``) ``a`` eased towards ``b``."""
    i = bisect_right(keyframes, t_s, key=_time) - 1
    if i < 0:
        return keyframes[0].state
    if i >= len(keyframes) - 1:
        return keyframes[-1].state
    a, b = keyframes[i], keyframes[i + 1]
    return a.state.lerp(b.state, ease((t_s - a.time_s) / (b.time_s - a.time_s)))


def _time(k: Keyframe) -> float:
    return k.time_s


def clip_state(clip: ClipSpec, i: int) -> AvatarState:
    """The state frame ``i`` of ``clip`` shows before blinks: ``clip.first.state`` at frame 0, eased towards
    ``clip.last.state`` (reached at frame ``clip.n_frames``), the three mouth fields from ``clip.mouth[i]`` when the
    clip has mouth rows (the same as ``interpolate_keyframes`` of the two keyframes at the frame's time when they lie
    on the frame grid)."""
    state = ease_between(clip.first.state, clip.last.state, i / clip.n_frames) if i else clip.first.state
    if clip.mouth is not None:
        state = state.with_(**dict(zip(MOUTH_FIELDS, (float(x) for x in clip.mouth[i]))))
    return state
