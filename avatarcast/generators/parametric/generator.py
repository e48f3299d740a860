"""The parametric generator: the embedded default renderer (CPU, real time, no model download).

A portrait is framed to the output size once; each frame then moves the face-mesh landmarks for the requested
``AvatarState`` (``FaceRig``), warps only the head region by a smooth displacement field that falls to zero at the
region border (``RegionWarp``: seamless, the neck and shoulders stay attached), redirects the irises inside the
eyes (``GazeRenderer``) and paints a mouth interior into the opening between the inner lips (``MouthInterior``:
real teeth, tongue and cavity from the shipped mouth bank). Breathing and idle micro-motion are smooth functions of
the absolute time and the generator's seed, so consecutive clips join without a jump and a render is reproducible.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np
from scipy.spatial import Delaunay

from avatarcast.core.errors import InputError
from avatarcast.core.trajectory import clip_state
from avatarcast.core.types import AvatarState, ClipSpec
from avatarcast.generators.parametric.eye_gaze import GazeRenderer
from avatarcast.generators.parametric.framing import frame_image, plan_framing
from avatarcast.generators.parametric.mouth_interior import MouthInterior, TeethTexture
from avatarcast.generators.parametric.rig import LIPS_LOWER_INNER, LIPS_UPPER_INNER, N_MESH, FaceRig
from avatarcast.generators.parametric.warp import RegionWarp, piecewise_affine

if TYPE_CHECKING:  # pragma: no cover
    from avatarcast.face.avatar import Avatar

DEFAULT_FPS = 25.0
"""Frame rate assumed by ``render_state`` when none is given (it turns frame indices into time for idle motion)."""
MAX_SIZE_PX = 4096
FIELD_CELLS_PER_FACE = 40
"""Resolution of the displacement field: grid cells across the face width (the cell size is 2..8 px)."""

CORNER_DARK_FRACTION = 0.55
"""After closing a portrait's open mouth, pixels darker than this fraction of the lip brightness are leftovers."""

BLINK_CLOSE_S = 0.075  # lids coming down
BLINK_HOLD_S = 0.025  # fully closed
BLINK_OPEN_S = 0.130  # lids going up (slower than closing)

BREATH_PERIOD_S = 4.2
BREATH_RISE_FW = 0.004  # head rises by this fraction of the face width at the top of a breath
BREATH_SCALE = 0.002
# idle micro-motion amplitudes: yaw, pitch, roll (degrees), x, y (face widths), scale
IDLE_AMPLITUDES = np.array([0.7, 0.5, 0.35, 0.003, 0.002, 0.0], np.float64)
IDLE_FREQUENCIES_HZ = (0.05, 0.23)  # range the seed draws each channel's three frequencies from


def blink_closure(t_since_onset_s: float) -> float:
    """How closed the lids are (0 open .. 1 closed) at a time after a blink's onset."""
    t = t_since_onset_s
    if t < 0.0:
        return 0.0
    if t < BLINK_CLOSE_S:
        x = t / BLINK_CLOSE_S
        return x * x  # accelerating down
    t -= BLINK_CLOSE_S
    if t < BLINK_HOLD_S:
        return 1.0
    t -= BLINK_HOLD_S
    if t < BLINK_OPEN_S:
        x = t / BLINK_OPEN_S
        return 1.0 - (1.0 - (1.0 - x) ** 2)  # decelerating up
    return 0.0


def _clean_closed_corners(image: np.ndarray, portrait_landmarks: np.ndarray, mouth_width_px: float) -> np.ndarray:
    """Remove what is left of the portrait's mouth opening after its lips were closed.

    A smiling portrait's opening reaches past its inner-corner landmarks (dark shadow between the teeth and the
    cheeks); closing the lips leaves those near-black pixels at the corners, and opening the jaw would stretch them
    into strands. Near-black pixels inside the portrait's (slightly dilated) opening are filled from the lip colour
    around them; the moderately dark lip seam stays.
    """
    poly = np.concatenate([portrait_landmarks[LIPS_UPPER_INNER, :2], portrait_landmarks[LIPS_LOWER_INNER[::-1], :2]])
    h, w = image.shape[:2]
    pad = int(np.ceil(0.12 * mouth_width_px)) + 4
    x0, y0 = max(int(poly[:, 0].min()) - pad, 0), max(int(poly[:, 1].min()) - pad, 0)
    x1, y1 = min(int(poly[:, 0].max()) + pad, w), min(int(poly[:, 1].max()) + pad, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return image
    patch = np.ascontiguousarray(image[y0:y1, x0:x1])
    opening = np.zeros(patch.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round((poly - [x0, y0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    grow = max(3, int(round(0.04 * mouth_width_px)) * 2 + 1)
    opening = cv2.dilate((opening > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow)))
    lum = patch.astype(np.float32).mean(2)
    ring = cv2.dilate(opening, np.ones((grow, grow), np.uint8)) & (1 - opening)
    if not ring.any():
        return image
    lip_lum = float(np.median(lum[ring > 0]))
    dark = ((lum < CORNER_DARK_FRACTION * lip_lum) & (opening > 0)).astype(np.uint8)
    if not dark.any():
        return image
    dark = cv2.dilate(dark, np.ones((3, 3), np.uint8))
    bgr = cv2.cvtColor(patch, cv2.COLOR_RGB2BGR)
    filled = cv2.inpaint(bgr, dark * 255, max(2.0, 0.03 * mouth_width_px), cv2.INPAINT_TELEA)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.cvtColor(filled, cv2.COLOR_BGR2RGB)
    return out


class IdleMotion:
    """Breathing and micro-motion of the head: smooth, deterministic functions of absolute time and the seed."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        lo, hi = IDLE_FREQUENCIES_HZ
        self.freqs = rng.uniform(lo, hi, size=(6, 3))
        self.phases = rng.uniform(0.0, 2.0 * math.pi, size=(6, 3))
        self.weights = np.array([0.55, 0.3, 0.15])
        self.breath_phase = float(rng.uniform(0.0, 2.0 * math.pi))

    def at(self, t_s: float) -> np.ndarray:
        """(yaw, pitch, roll, x, y, scale - 1) offsets at time ``t_s``."""
        waves = np.sin(2.0 * math.pi * self.freqs * t_s + self.phases) @ self.weights
        out = IDLE_AMPLITUDES * waves
        breath = math.sin(2.0 * math.pi * t_s / BREATH_PERIOD_S + self.breath_phase)
        out[4] -= BREATH_RISE_FW * breath
        out[5] += BREATH_SCALE * breath
        out[1] += 0.25 * breath  # a slight nod with the breath
        return out.astype(np.float32)


class ParametricGenerator:
    """Renders frames of a prepared ``Avatar`` for avatar states (implements ``types.Generator``)."""

    def __init__(self, avatar: "Avatar", size: tuple[int, int] = (512, 512), seed: int = 0,
                 fps: float = DEFAULT_FPS) -> None:
        w, h = int(size[0]), int(size[1])
        if not (16 <= w <= MAX_SIZE_PX and 16 <= h <= MAX_SIZE_PX):
            raise InputError(f"output size {w}x{h} is out of range: use 16..{MAX_SIZE_PX} pixels per side")
        image = np.asarray(avatar.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError("the avatar image must be RGB uint8 (H, W, 3); re-run `avatarcast prepare`")
        landmarks = np.asarray(avatar.landmarks, np.float32)
        if landmarks.shape != (478, 3) or not np.isfinite(landmarks).all():
            raise InputError("the avatar needs 478 finite face-mesh landmarks; re-run `avatarcast prepare`")
        self.size = (w, h)
        self.seed = int(seed)
        self.fps = float(fps)
        mesh = landmarks[:N_MESH, :2]
        face_box = (float(mesh[:, 0].min()), float(mesh[:, 1].min()), float(mesh[:, 0].max()),
                    float(mesh[:, 1].max()))
        self.framing = plan_framing((image.shape[1], image.shape[0]), face_box, self.size)
        self.base = frame_image(image, self.framing)
        self.landmarks = self.framing.apply(landmarks)
        self.framed = self.base  # the portrait at the output size, as it was
        self.portrait_landmarks = self.landmarks
        self.rig = FaceRig(self.landmarks)
        self.teeth: TeethTexture | None = None
        if self.rig.portrait_mouth_gap > 0.0:
            # the portrait's own teeth, kept before its lips are closed (drawn again under the moved upper lip)
            teeth = TeethTexture(self.framed, self.landmarks[LIPS_UPPER_INNER, :2], self.landmarks[LIPS_LOWER_INNER, :2])
            self.teeth = teeth if teeth.available else None
            # the portrait shows its teeth: close the lips once, exactly, and use that as the rest face
            closed = self.landmarks.copy()
            closed[:N_MESH, :2] += self.rig.shape_close
            triangles = Delaunay(self.landmarks[:N_MESH, :2]).simplices
            self.base = piecewise_affine(self.base, self.landmarks[:N_MESH, :2], closed[:N_MESH, :2], triangles)
            self.base = _clean_closed_corners(self.base, self.landmarks, self.rig.mouth_width)
            self.landmarks = closed
            self.rig = FaceRig(self.landmarks)
        self.mouth = MouthInterior(self.framed, self.portrait_landmarks, teeth=self.teeth, seed=self.seed,
                                   framing_scale=self.framing.scale)
        step = int(np.clip(round(self.rig.face_width / FIELD_CELLS_PER_FACE), 2, 8))
        self.warp = RegionWarp(self.rig.points, self.rig.ring_head, self.size, step_px=step)
        self.gaze = GazeRenderer(self.base, self.landmarks, bounds=self.warp.box)
        self.idle = IdleMotion(self.seed)
        self._eye_span_px = max(float(np.linalg.norm(self.landmarks[263, :2] - self.landmarks[33, :2])), 1e-3)
        self._source = self.base.copy()  # the base with the current gaze written into the eyes (in the region)
        self._eyes = (0.0, 0.0, (0.0, 0.0))
        self._frame: np.ndarray | None = None  # the frame rewritten in place by render(reuse_buffer=True)

    # ------------------------------------------------------------------------------------------------ frames
    def render_state(self, state: AvatarState, frame_index: int, fps: float | None = None) -> np.ndarray:
        """One frame for ``state`` at absolute frame ``frame_index`` (idle motion depends on it and the seed)."""
        t_s = frame_index / (fps or self.fps)
        return self._render(state, self.idle.at(t_s), frame_index=frame_index)

    reuses_buffer = True
    """``render(clip, reuse_buffer=True)`` is supported (see there)."""

    def render(self, clip: ClipSpec, *, start: int = 0, reuse_buffer: bool = False) -> Iterator[np.ndarray]:
        """Yield frames ``start .. clip.n_frames - 1``: eased from ``clip.first.state`` (frame 0, exactly) toward
        ``clip.last.state`` (reached at frame ``n_frames``), mouth rows from ``clip.mouth``, blinks from
        ``clip.blink_times_s``. Idle motion uses the generator's seed so clips with any ``clip.seed`` join up.

        With ``reuse_buffer`` every frame is the same array, rewritten in ``changing_box`` only: for a consumer
        that is done with a frame before asking for the next (an encoder), it saves a whole-frame copy per frame.
        """
        for i in range(start, clip.n_frames):
            state = clip_state(clip, i)  # row i of a streamed mouth is read now, not before
            t_s = clip.frame_time_s(i)
            closure = max((blink_closure(t_s - b) for b in clip.blink_times_s), default=0.0)
            if closure > 0.0:
                state = state.with_(eye_open_left=state.eye_open_left * (1.0 - closure),
                                    eye_open_right=state.eye_open_right * (1.0 - closure))
            yield self._render(state, self.idle.at(t_s), reuse_buffer, frame_index=clip.start_frame + i)

    @property
    def changing_box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``: every frame equals the rest face outside this box (the warped head region)."""
        return self.warp.box

    def frame_state(self, clip: ClipSpec, i: int) -> AvatarState:
        """The state shown at frame ``i`` of ``clip`` before blinks (for tools that inspect a trajectory)."""
        return clip_state(clip, i)

    def _render(self, state: AvatarState, idle: np.ndarray, reuse_buffer: bool = False,
                frame_index: int = 0) -> np.ndarray:
        # eyes are rewritten in the source (gaze, lids covering a closing eye) only when they change
        closure = (min(max(1.0 - float(state.eye_open_right), 0.0), 1.0),
                   min(max(1.0 - float(state.eye_open_left), 0.0), 1.0))
        eyes = (float(state.gaze_x), float(state.gaze_y), closure)
        if eyes != self._eyes:
            self.gaze.apply(self._source, eyes[0], eyes[1], closure)
            self._eyes = eyes
        expression, head, positions = self.rig.displacements(state, idle)
        # outside the warped region the frame is the base, exactly (other code relies on that); inside, the warp
        # resamples the part that moves and leaves the rest as it is in the source
        x0, y0, x1, y1 = self.warp.box
        if reuse_buffer and self._frame is not None:
            out = self._frame
            out[y0:y1, x0:x1] = self._source[y0:y1, x0:x1]
        else:
            out = self._source.copy()
            if reuse_buffer:
                self._frame = out
        self.warp.warp(self._source, expression, out, smooth_displacement=head)
        # the mouth is painted inside the region too: lips that the rig moves past it are not moved by the warp
        origin = np.array([x0, y0], np.float32)
        self.mouth.draw(out[y0:y1, x0:x1], positions[LIPS_UPPER_INNER] - origin,
                        positions[LIPS_LOWER_INNER] - origin, face_scale=self._face_scale(positions),
                        frame_index=frame_index)
        return out

    def _face_scale(self, positions: np.ndarray) -> float:
        """Current face size relative to the rest face (outer eye corners: they move with the head only)."""
        return float(np.linalg.norm(positions[263] - positions[33])) / self._eye_span_px
