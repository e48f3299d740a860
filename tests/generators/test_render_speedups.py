"""What the parametric generator's per-frame shortcuts must not change: the frame outside the warped region, frames
that do not depend on the frames rendered before them, and a warp equal to resampling the whole region."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from avatarcast.core.types import AvatarState
from avatarcast.face.avatar import prepare_avatar
from avatarcast.face.loading import load_avatar
from avatarcast.generators.parametric.generator import ParametricGenerator

STILL = np.zeros(6, np.float32)  # no idle motion

EXTREME_STATES = [
    AvatarState(head_yaw_deg=30, head_pitch_deg=-20, head_roll_deg=20, head_x=0.3, head_y=-0.3, head_scale=1.2),
    AvatarState(head_yaw_deg=-30, head_pitch_deg=20, head_roll_deg=-20, head_x=-0.3, head_y=0.3, head_scale=0.8),
    AvatarState(jaw_open=1.0, mouth_wide=1.0, smile=1.0),
    AvatarState(jaw_open=1.0, mouth_round=1.0, smile=-1.0, brow_raise=1.0),
    AvatarState(eye_open_left=0.0, eye_open_right=0.0, gaze_x=1.0, gaze_y=1.0),
    AvatarState(eye_open_left=1.3, eye_open_right=0.2, gaze_x=-1.0, gaze_y=-1.0),
    # everything at once, the head pushed so far down that the rig moves the lips past the warped region
    AvatarState(head_yaw_deg=30, head_pitch_deg=20, head_roll_deg=20, head_x=0.3, head_y=0.3, head_scale=1.2,
                jaw_open=1, mouth_wide=1, mouth_round=1, smile=1, brow_raise=1, eye_open_left=0.0,
                eye_open_right=0.0, gaze_x=1, gaze_y=1),
    AvatarState(jaw_open=5, smile=-9, eye_open_left=-2, head_scale=-1, gaze_x=7),
]


@pytest.fixture(scope="module", params=["default", "obama.jpg", "astronaut.png"])
def avatar(request, portraits):
    return load_avatar(None) if request.param == "default" else prepare_avatar(portraits / request.param)


def _outside(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.ones(frame.shape[:2], bool)
    mask[y0:y1, x0:x1] = False
    return mask


@pytest.mark.parametrize("size", [(512, 512), (1280, 720)])
def test_frame_outside_the_warped_region_is_the_base(avatar, size):
    g = ParametricGenerator(avatar, size=size, seed=1)
    for i, state in enumerate(EXTREME_STATES):
        for frame in (g.render_state(state, 40 + i), g._render(state, STILL)):
            outside = _outside(frame, g.changing_box)
            assert outside.any()
            assert np.array_equal(frame[outside], g.base[outside]), state


def test_frames_do_not_depend_on_the_frames_before(avatar):
    states = EXTREME_STATES + [AvatarState(), AvatarState(gaze_x=0.4), AvatarState(eye_open_left=0.5)]
    in_order = ParametricGenerator(avatar, size=(320, 320), seed=2)
    backwards = ParametricGenerator(avatar, size=(320, 320), seed=2)
    forward = [in_order.render_state(s, i) for i, s in enumerate(states)]
    for i in reversed(range(len(states))):
        assert np.array_equal(backwards.render_state(states[i], i), forward[i]), states[i]


def _whole_region_warp(g: ParametricGenerator, state: AvatarState) -> np.ndarray:
    """The frame as the warp would make it by upscaling the whole grid and resampling the whole region."""
    expression, head, _ = g.rig.displacements(state, STILL)
    w = g.warp
    x0, y0, x1, y1 = w.box
    back = w.backward_field(w.forward_field(expression, head))
    field = cv2.resize(back, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    out = g.base.copy()
    cv2.remap(g.base, np.stack([xs, ys], -1) + field, None, cv2.INTER_LINEAR, dst=out[y0:y1, x0:x1],
              borderMode=cv2.BORDER_REPLICATE)
    return out


@pytest.mark.parametrize("size", [(512, 512), (1920, 1080)])
def test_warp_resamples_only_what_moves_and_matches_the_whole_region(portraits, size):
    g = ParametricGenerator(prepare_avatar(portraits / "obama.jpg"), size=size)
    assert g.warp.step in (3, 8)  # a step that is not a power of two, and one that is
    for state in (AvatarState(), AvatarState(jaw_open=0.7, smile=0.4), AvatarState(head_yaw_deg=12, head_roll_deg=-6),
                  AvatarState(eye_open_left=0.0, brow_raise=-1.0)):
        expression, head, _ = g.rig.displacements(state, STILL)
        out = g.base.copy()
        g.warp.warp(g.base, expression, out, smooth_displacement=head)
        assert np.array_equal(out, _whole_region_warp(g, state)), state


def test_segments_converting_only_the_changing_box_match_full_conversion(avatar, tmp_path):
    """Encoders trust ``changing_box``; the segment they write is byte-identical to one from whole frames."""
    from avatarcast.offline.encoding import VideoEncoding
    from avatarcast.offline.executors import render_segment
    from avatarcast.core.types import ClipSpec, Keyframe

    g = ParametricGenerator(avatar, size=(256, 256), seed=3)

    class WholeFrames:  # the same generator, without the hint
        size = g.size

        def render(self, clip):
            return g.render(clip)

    clip = ClipSpec(index=0, first=Keyframe(0.0, EXTREME_STATES[0]), last=Keyframe(0.5, EXTREME_STATES[3]),
                    fps=25.0, start_frame=0, n_frames=12, blink_times_s=(0.1,))
    with_box = render_segment(g, clip, tmp_path / "box.mp4", VideoEncoding())
    whole = render_segment(WholeFrames(), clip, tmp_path / "whole.mp4", VideoEncoding())
    assert with_box.path.read_bytes() == whole.path.read_bytes()


def test_frames_rendered_into_one_buffer_equal_fresh_frames(avatar):
    from avatarcast.core.types import ClipSpec, Keyframe

    g = ParametricGenerator(avatar, size=(320, 320), seed=3)
    clip = ClipSpec(index=0, first=Keyframe(0.0, EXTREME_STATES[6]), last=Keyframe(0.4, EXTREME_STATES[1]),
                    fps=25.0, start_frame=0, n_frames=10, blink_times_s=(0.05,))
    fresh = list(g.render(clip))
    assert len({id(f) for f in fresh}) == len(fresh)
    buffers = set()
    for i, frame in enumerate(g.render(clip, reuse_buffer=True)):
        buffers.add(id(frame))
        assert np.array_equal(frame, fresh[i]), i
    assert len(buffers) == 1
    assert all(np.array_equal(a, b) for a, b in zip(fresh, g.render(clip)))  # fresh frames again afterwards
