"""The one easing and keyframe interpolation module gives, to the bit, what the copies it replaced gave."""

from __future__ import annotations

import numpy as np
import pytest

from avatarcast.core.trajectory import ease_between, interpolate_keyframes, linear, smoothstep, smoothstep_range
from avatarcast.core.types import NEUTRAL_STATE, Keyframe


def _old_smoothstep(t: float) -> float:  # as the generators, the scheduler and the storyboard wrote it
    t = min(max(t, 0.0), 1.0)
    return t * t * (3.0 - 2.0 * t)


def _old_rig_smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:  # as the face rig wrote it
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_match_the_old_copies_bit_for_bit(dtype):
    x = np.linspace(-0.5, 1.5, 4001).astype(dtype)
    got = smoothstep(x)
    t = np.clip(x, 0.0, 1.0)
    assert got.dtype == dtype and np.array_equal(got, t * t * (3.0 - 2.0 * t))
    assert np.array_equal(smoothstep_range(0.3, 0.55, x), _old_rig_smoothstep(0.3, 0.55, x))
    assert smoothstep_range(0.3, 0.55, x).dtype == dtype


def test_floats_match_and_clamp():
    for t in np.linspace(-1.0, 2.0, 3001):
        assert smoothstep(float(t)) == _old_smoothstep(float(t))
    assert smoothstep(-3.0) == 0.0 and smoothstep(7.0) == 1.0 and smoothstep(0.5) == 0.5
    assert linear(-1.0) == 0.0 and linear(0.25) == 0.25 and linear(2.0) == 1.0


def _kfs():
    return [Keyframe(0.0, NEUTRAL_STATE), Keyframe(1.0, NEUTRAL_STATE.with_(head_pitch_deg=10.0)),
            Keyframe(3.0, NEUTRAL_STATE.with_(head_pitch_deg=-4.0, smile=0.5))]


def test_state_at_holds_outside_and_eases_between_keyframes():
    kfs = _kfs()
    assert interpolate_keyframes(kfs, -1.0) is kfs[0].state
    assert interpolate_keyframes(kfs, 5.0) is kfs[-1].state
    assert interpolate_keyframes(kfs, 1.0) is kfs[1].state  # exactly on a keyframe: that keyframe
    for t in np.linspace(0.0, 3.0, 61):
        a, b = (kfs[0], kfs[1]) if t < 1.0 else (kfs[1], kfs[2])
        expected = a.state.lerp(b.state, _old_smoothstep((t - a.time_s) / (b.time_s - a.time_s)))
        assert np.array_equal(interpolate_keyframes(kfs, float(t)).to_array(), expected.to_array())
    mid = interpolate_keyframes(kfs, 2.0, ease=linear)
    assert mid.head_pitch_deg == pytest.approx(3.0) and mid.smile == pytest.approx(0.25)


def test_ease_between_is_exact_at_the_ends():
    a, b = NEUTRAL_STATE, NEUTRAL_STATE.with_(head_yaw_deg=12.0)
    assert ease_between(a, b, 0.0) is a and ease_between(a, b, 1.0) is b and ease_between(a, b, 9.0) is b
    assert np.array_equal(ease_between(a, b, 0.3).to_array(), a.lerp(b, _old_smoothstep(0.3)).to_array())
