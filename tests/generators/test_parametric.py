"""The parametric generator: frame format, clip trajectory, determinism, and what each state field does to pixels."""

from __future__ import annotations

import numpy as np
import pytest

from avatarcast.core.types import AvatarState, ClipSpec, Generator, Keyframe
from avatarcast.face.avatar import prepare_avatar
from avatarcast.generators.parametric.generator import ParametricGenerator, blink_closure
from avatarcast.generators.parametric.rig import EYE_L_LOWER, EYE_L_UPPER, EYE_R_LOWER, EYE_R_UPPER, NOSE_TIP

NEUTRAL = AvatarState()
STILL = np.zeros(6, np.float32)  # no idle motion: isolates one state field


@pytest.fixture(scope="module")
def obama(portraits):
    return prepare_avatar(portraits / "obama.jpg")


@pytest.fixture(scope="module")
def astronaut(portraits):
    return prepare_avatar(portraits / "astronaut.png")


@pytest.fixture(scope="module")
def gen(obama):
    return ParametricGenerator(obama, size=(512, 512), seed=3)


def _clip(first: AvatarState, last: AvatarState, n: int = 6, start: int = 10, **kw) -> ClipSpec:
    fps = 25.0
    return ClipSpec(index=0, first=Keyframe(start / fps, first), last=Keyframe((start + n) / fps, last), fps=fps,
                    start_frame=start, n_frames=n, **kw)


def _box(points: np.ndarray, pad: float) -> tuple[slice, slice]:
    x0, y0 = points.min(0) - pad
    x1, y1 = points.max(0) + pad
    return slice(int(y0), int(y1) + 1), slice(int(x0), int(x1) + 1)


@pytest.mark.parametrize("size", [(512, 512), (1920, 1080), (480, 854), (320, 240)])
def test_frames_have_the_output_shape_and_dtype(obama, size):
    g = ParametricGenerator(obama, size=size)
    assert isinstance(g, Generator)
    frames = list(g.render(_clip(NEUTRAL, NEUTRAL.with_(jaw_open=0.6, head_yaw_deg=8), n=3)))
    assert len(frames) == 3
    for f in frames:
        assert f.shape == (size[1], size[0], 3) and f.dtype == np.uint8


def test_first_frame_of_a_clip_is_the_first_keyframe_state(gen):
    first = NEUTRAL.with_(jaw_open=0.4, smile=0.5, head_yaw_deg=-6, gaze_x=0.3)
    last = NEUTRAL.with_(jaw_open=0.0, head_pitch_deg=5)
    frames = list(gen.render(_clip(first, last, n=5, start=40)))
    assert np.array_equal(frames[0], gen.render_state(first, 40, fps=25.0))
    # the trajectory moves toward the last keyframe, which the next clip starts from
    nxt = list(gen.render(_clip(last, first, n=5, start=45)))
    assert np.array_equal(nxt[0], gen.render_state(last, 45, fps=25.0))
    assert np.abs(frames[-1].astype(int) - nxt[0].astype(int)).mean() < np.abs(
        frames[0].astype(int) - nxt[0].astype(int)).mean()


def test_same_clip_twice_gives_identical_bytes(obama):
    clip = _clip(NEUTRAL, NEUTRAL.with_(jaw_open=0.8, head_roll_deg=5, eye_open_left=0.3), n=4,
                 blink_times_s=(0.45,))
    a = [f.tobytes() for f in ParametricGenerator(obama, size=(320, 320), seed=7).render(clip)]
    b = [f.tobytes() for f in ParametricGenerator(obama, size=(320, 320), seed=7).render(clip)]
    assert a == b


def test_mouth_track_overrides_the_mouth_fields(gen):
    mouth = np.array([[0.0, 0, 0], [0.75, 0, 0], [0.0, 0, 0]], np.float32)
    frames = list(gen.render(_clip(NEUTRAL.with_(jaw_open=0.5), NEUTRAL.with_(jaw_open=0.5), n=3, mouth=mouth)))
    assert np.array_equal(frames[0], gen.render_state(NEUTRAL, 10, fps=25.0))
    assert np.array_equal(frames[1], gen.render_state(NEUTRAL.with_(jaw_open=0.75), 11, fps=25.0))


def test_neutral_state_reproduces_the_framed_portrait(gen):
    frame = gen._render(NEUTRAL, STILL)
    x0, y0, x1, y1 = gen.warp.box
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(frame[outside], gen.framed[outside])
    inside = np.abs(frame[y0:y1, x0:x1].astype(int) - gen.framed[y0:y1, x0:x1].astype(int))
    assert inside.mean() < 3.0  # identity warp; only a portrait showing teeth gets its lips closed


def test_nothing_changes_far_outside_the_face(gen):
    extreme = AvatarState(head_yaw_deg=20, head_pitch_deg=-15, head_roll_deg=12, head_x=0.1, head_y=0.1,
                          head_scale=1.1, jaw_open=1, smile=1, brow_raise=1)
    frame = gen.render_state(extreme, 123)
    x0, y0, x1, y1 = gen.warp.box
    assert x1 - x0 < 512 or y1 - y0 < 512
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any()
    assert np.array_equal(frame[outside], gen.base[outside])


def test_open_jaw_darkens_and_opens_the_mouth(gen):
    lm = gen.landmarks
    rows, cols = _box(lm[[61, 291, 0, 17], :2], 2)
    closed = gen._render(NEUTRAL, STILL)[rows, cols].astype(float)
    opened = gen._render(NEUTRAL.with_(jaw_open=1.0), STILL)[rows, cols].astype(float)
    dark_closed = (closed.mean(2) < 60).mean()
    dark_open = (opened.mean(2) < 60).mean()
    assert dark_open > dark_closed + 0.1
    # the chin moves down: the frame below the mouth changes too
    chin_rows, chin_cols = _box(lm[[152], :2], 6)
    assert np.abs(gen._render(NEUTRAL.with_(jaw_open=1.0), STILL)[chin_rows, chin_cols].astype(int)
                  - gen._render(NEUTRAL, STILL)[chin_rows, chin_cols].astype(int)).mean() > 3


def test_blink_closes_the_eyes(gen):
    lm = gen.landmarks
    for upper, lower in ((EYE_R_UPPER, EYE_R_LOWER), (EYE_L_UPPER, EYE_L_LOWER)):
        rows, cols = _box(lm[np.r_[upper, lower], :2], 0)
        open_eye = gen._render(NEUTRAL, STILL)[rows, cols].astype(int)
        shut = gen._render(NEUTRAL.with_(eye_open_left=0.0, eye_open_right=0.0), STILL)[rows, cols].astype(int)
        assert np.abs(shut - open_eye).mean() > 8
    # a blink in a clip follows the timed curve: closed ~100 ms after onset, open again after ~250 ms
    assert blink_closure(0.09) == 1.0 and blink_closure(0.3) == 0.0 and 0 < blink_closure(0.15) < 1


def test_only_the_requested_eye_closes(gen):
    lm = gen.landmarks
    rows_r, cols_r = _box(lm[np.r_[EYE_R_UPPER, EYE_R_LOWER], :2], 0)
    rows_l, cols_l = _box(lm[np.r_[EYE_L_UPPER, EYE_L_LOWER], :2], 0)
    base = gen._render(NEUTRAL, STILL).astype(int)
    left_shut = gen._render(NEUTRAL.with_(eye_open_left=0.0), STILL).astype(int)
    assert np.abs(left_shut[rows_l, cols_l] - base[rows_l, cols_l]).mean() > 8
    assert np.abs(left_shut[rows_r, cols_r] - base[rows_r, cols_r]).mean() < 1


def test_head_yaw_moves_the_nose(gen):
    nose = gen.landmarks[NOSE_TIP, :2]
    rows, cols = _box(nose[None], 10)
    a = gen._render(NEUTRAL, STILL)[rows, cols].astype(int)
    b = gen._render(NEUTRAL.with_(head_yaw_deg=15), STILL)[rows, cols].astype(int)
    assert np.abs(a - b).mean() > 5
    # the warp moves the nose toward the viewer's right
    _, _, pos = gen.rig.displacements(NEUTRAL.with_(head_yaw_deg=15), STILL)
    assert pos[NOSE_TIP, 0] > nose[0] + 0.03 * gen.rig.face_width


def test_gaze_moves_the_irises_only_inside_the_eyes(gen):
    lm = gen.landmarks
    rows, cols = _box(lm[np.r_[EYE_R_UPPER, EYE_R_LOWER], :2], 0)
    a = gen._render(NEUTRAL, STILL)
    b = gen._render(NEUTRAL.with_(gaze_x=-1.0), STILL)
    assert np.abs(a[rows, cols].astype(int) - b[rows, cols].astype(int)).mean() > 2
    nose_rows, nose_cols = _box(lm[[NOSE_TIP], :2], 8)
    assert np.array_equal(a[nose_rows, nose_cols], b[nose_rows, nose_cols])


def test_a_portrait_showing_teeth_closes_its_lips(astronaut):
    g = ParametricGenerator(astronaut, size=(512, 512))
    rows, cols = _box(g.portrait_landmarks[[78, 308, 13, 14], :2], 1)

    def bright(img: np.ndarray) -> float:  # teeth: bright and unsaturated
        px = img[rows, cols].astype(float)
        return float(((px.min(2) > 170) & (px.max(2) - px.min(2) < 45)).mean())

    assert bright(g.framed) > 0.05
    assert bright(g._render(NEUTRAL, STILL)) < 0.5 * bright(g.framed)


@pytest.mark.parametrize("size", [(512, 512), (1280, 720)])
def test_extreme_states_render_without_garbage(obama, size):
    g = ParametricGenerator(obama, size=size)
    lows = AvatarState(head_yaw_deg=-30, head_pitch_deg=-20, head_roll_deg=-20, head_x=-0.3, head_y=-0.3,
                       head_scale=0.8, jaw_open=0, mouth_wide=0, mouth_round=0, smile=-1, brow_raise=-1,
                       eye_open_left=0, eye_open_right=0, gaze_x=-1, gaze_y=-1)
    highs = AvatarState(head_yaw_deg=30, head_pitch_deg=20, head_roll_deg=20, head_x=0.3, head_y=0.3,
                        head_scale=1.2, jaw_open=1, mouth_wide=1, mouth_round=1, smile=1, brow_raise=1,
                        eye_open_left=1.3, eye_open_right=1.3, gaze_x=1, gaze_y=1)
    for state in (lows, highs, AvatarState(jaw_open=5, smile=-9, eye_open_left=-2, head_scale=-1)):
        frame = g.render_state(state, 99)
        assert frame.shape == (size[1], size[0], 3) and frame.dtype == np.uint8
        assert 20 < frame.mean() < 235 and frame.std() > 20  # a picture, not a blank or a smear


def test_idle_motion_is_continuous_and_seeded(obama):
    g1 = ParametricGenerator(obama, size=(256, 256), seed=1)
    g2 = ParametricGenerator(obama, size=(256, 256), seed=2)
    a = [g1.idle.at(i / 25.0) for i in range(100)]
    steps = np.abs(np.diff(np.array(a), axis=0)).max(0)
    assert (steps[:3] < 0.1).all()  # degrees per frame: smooth
    assert not np.array_equal(g1.render_state(NEUTRAL, 50), g2.render_state(NEUTRAL, 50))


def _polygon_mask(shape: tuple[int, int], points: np.ndarray, grow_px: int = 0) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    if grow_px > 0:
        mask = cv2.dilate(mask, np.ones((2 * grow_px + 1, 2 * grow_px + 1), np.uint8))
    return mask > 0


@pytest.mark.parametrize("state", [NEUTRAL.with_(jaw_open=1.0), NEUTRAL.with_(jaw_open=1.0, smile=0.8)])
def test_wide_open_mouth_has_no_dark_strands_outside_the_opening(obama, astronaut, state):
    from avatarcast.generators.parametric.rig import (LIPS_LOWER_INNER, LIPS_LOWER_OUTER, LIPS_UPPER_INNER,
                                                      LIPS_UPPER_OUTER)

    for avatar in (obama, astronaut):
        g = ParametricGenerator(avatar, size=(512, 512))
        _, _, pos = g.rig.displacements(state, STILL)
        lum = g._render(state, STILL).astype(float).mean(2)
        mw = float(np.linalg.norm(pos[291] - pos[61]))
        inner = _polygon_mask(lum.shape, np.concatenate([pos[LIPS_UPPER_INNER], pos[LIPS_LOWER_INNER[::-1]]]),
                              max(1, round(0.03 * mw)))
        around = _polygon_mask(lum.shape, np.concatenate([pos[LIPS_UPPER_OUTER], pos[LIPS_LOWER_OUTER[::-1]]]),
                               round(0.15 * mw))
        assert ((lum < 50) & around & ~inner).sum() <= 2


def test_teeth_are_brighter_than_the_cavity(obama, astronaut):
    from avatarcast.generators.parametric.rig import LIPS_LOWER_INNER, LIPS_UPPER_INNER

    for avatar in (obama, astronaut):
        g = ParametricGenerator(avatar, size=(512, 512))
        state = NEUTRAL.with_(jaw_open=0.8)
        _, _, pos = g.rig.displacements(state, STILL)
        lum = g._render(state, STILL).astype(float).mean(2)
        top, bottom = pos[13], pos[14]  # inner-lip centres
        gap = float(bottom[1] - top[1])
        x = int(round(top[0]))
        teeth = lum[int(top[1] + 0.15 * gap):int(top[1] + 0.3 * gap), x - 3:x + 4].mean()
        cavity = lum[int(top[1] + 0.5 * gap):int(top[1] + 0.6 * gap), x - 3:x + 4].mean()
        assert gap > 8 and teeth > cavity + 80


def test_a_portrait_showing_teeth_keeps_its_own_teeth(astronaut):
    g = ParametricGenerator(astronaut, size=(512, 512))
    assert g.teeth is not None
    state = NEUTRAL.with_(jaw_open=0.6)
    _, _, pos = g.rig.displacements(state, STILL)
    frame = g._render(state, STILL).astype(float)
    # the strip under the upper lip: the portrait's teeth (bright, with the dark lines between real teeth), the
    # same strip the portrait showed
    x = int(round(pos[13, 0]))
    y = int(round(pos[13, 1] + g.teeth.top_px + 0.5 * g.teeth.depth_px))
    ours = frame[y, x - 20:x + 21].mean(1)
    px, py = g.portrait_landmarks[13, :2]
    theirs = g.framed[int(round(py + g.teeth.top_px + 0.5 * g.teeth.depth_px)),
                      int(round(px)) - 20:int(round(px)) + 21].astype(float).mean(1)
    assert ours.mean() > 150
    assert np.corrcoef(ours, theirs)[0, 1] > 0.6


def test_closed_eyes_show_lid_not_dark_eye_remnants(obama, astronaut):
    for avatar in (obama, astronaut):
        g = ParametricGenerator(avatar, size=(512, 512))
        lum = g._render(NEUTRAL.with_(eye_open_left=0.0, eye_open_right=0.0), STILL).astype(float).mean(2)
        lm = g.landmarks[:, :2]
        for upper, lower in ((EYE_R_UPPER, EYE_R_LOWER), (EYE_L_UPPER, EYE_L_LOWER)):
            poly = np.concatenate([lm[upper], lm[lower[::-1]]])
            (x0, y0), (x1, _) = poly.min(0), poly.max(0)
            h = float(poly[:, 1].max() - y0)
            lid = float(np.median(lum[int(y0 - 1.5 * h):int(y0 - 0.3 * h), int(x0):int(x1)]))
            eye = lum[_polygon_mask(lum.shape, poly)]
            # the darkest few pixels where the eye was: the lash line at most, never the pupil or the iris
            assert np.percentile(eye, 2) > 0.4 * lid

