"""Directed head motion and brow raises on real footage: a smooth warp of the head region of a video frame.

A video avatar's footage already moves (the person's own head motion, blinks, breathing); the director's actions
(a nod, a turn, a tilt, leaning in, raised brows) come on top of it as a warp of the frame around the face:

- the head is modelled as the front half of an ellipsoid fitted to the face outline (depth largest at the nose,
  zero at the outline) that turns about a pivot in the neck, behind and below the chin: pitch, yaw and roll move
  each point of the face by where that rotation takes it, so a nod brings the face down and the chin in, and a turn
  moves the nose further than the cheeks;
- ``head_x``/``head_y`` shift it and ``head_scale`` grows it about the face's centre;
- the motion is whole inside an ellipse around face and hair and fades out over half a face width beyond it
  (smoothstep), so shoulders and background stay where they are;
- ``brow_raise`` lifts the brows (and, less, the forehead skin above them) in two soft bands that fade before the
  eyes.

The displacement is computed on a coarse grid, upsampled, inverted by one fixed-point step (the sample for output
pixel ``q`` is taken at ``q - D(q - D(q))``) and applied with one bilinear resampling of the head region only.
A state without head motion or brow raise leaves the frame untouched (bit for bit).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from avatarcast.core.trajectory import smoothstep

FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                      152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109], np.int32)
BROW_L = np.array([336, 296, 334, 293, 300], np.int32)  # the subject's left brow (viewer's right)
BROW_R = np.array([70, 63, 105, 66, 107], np.int32)
EYE_L_CORNERS = (362, 263)
EYE_R_CORNERS = (33, 133)

HEAD_X_AXIS = 1.12
HEAD_Y_AXIS = 1.28
HEAD_CENTRE_UP = 0.12
"""The moving region: an ellipse of these multiples of the face outline's half-width and half-height, its centre
raised by this share of the half-height (the hair moves with the head)."""
FALLOFF = 0.45
"""Beyond the ellipse the motion fades to nothing over this share of its size."""
DEPTH = 0.9
"""Depth of the face at its centre, in face half-widths (the ellipsoid's third axis)."""
PIVOT_BELOW = 1.1
PIVOT_BEHIND = 0.8
"""The pivot of pitch and roll: this many half-heights below the face's centre (the neck) and, for pitch and yaw,
this many half-widths behind the face's outline."""
BROW_LIFT_IOD = 0.075
"""How far a full brow raise (1.0) lifts the brows, in eye distances (a frown lowers them by as much)."""
BROW_SIGMA_X_IOD = 0.32
BROW_SIGMA_UP_IOD = 0.30
BROW_SIGMA_DOWN_IOD = 0.12
GRID_PX = 8
MOTION_FIELDS = ("head_yaw_deg", "head_pitch_deg", "head_roll_deg", "head_x", "head_y", "head_scale", "brow_raise")
STILL = 1e-3




def _rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Image axes (x right, y down, z toward the viewer): + pitch brings the face down, + yaw turns it toward the
    viewer's right, + roll turns it clockwise as the viewer sees it (``AvatarState``'s conventions)."""
    p, y, r = (math.radians(v) for v in (pitch_deg, yaw_deg, roll_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def moves(state) -> bool:
    """Whether ``state`` asks for any head motion or brow movement."""
    return any(abs(float(getattr(state, f)) - (1.0 if f == "head_scale" else 0.0)) > STILL for f in MOTION_FIELDS)


class HeadMotion:
    """Applies ``AvatarState`` head motion and brow raises to frames of size ``size`` = (width, height)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def displacement(self, points: np.ndarray, state, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Forward displacement ``(..., 2)`` at pixel coordinates ``xs``, ``ys`` for a face with mesh ``points``
        (output pixels) moved as ``state`` asks."""
        oval = points[FACE_OVAL, :2].astype(np.float64)
        cx, cy = oval.mean(0)
        a = max(0.5 * float(np.ptp(oval[:, 0])), 4.0)
        b = max(0.5 * float(np.ptp(oval[:, 1])), 4.0)
        dx = (xs - cx) / a
        dy = (ys - cy) / b
        z = DEPTH * a * np.sqrt(np.maximum(0.0, 1.0 - dx * dx - dy * dy))
        e = np.sqrt(((xs - cx) / (HEAD_X_AXIS * a)) ** 2 + ((ys - (cy - HEAD_CENTRE_UP * b)) / (HEAD_Y_AXIS * b)) ** 2)
        weight = 1.0 - smoothstep((e - 1.0) / FALLOFF)
        rot = _rotation(float(state.head_yaw_deg), float(state.head_pitch_deg), float(state.head_roll_deg))
        pivot = np.array([cx, cy + PIVOT_BELOW * b, -PIVOT_BEHIND * a])
        rel = np.stack([xs - pivot[0], ys - pivot[1], z - pivot[2]], -1)
        moved = rel @ rot.T
        d = moved[..., :2] - rel[..., :2]
        face_w = 2.0 * a
        d[..., 0] += float(state.head_x) * face_w + (float(state.head_scale) - 1.0) * (xs - cx)
        d[..., 1] += float(state.head_y) * face_w + (float(state.head_scale) - 1.0) * (ys - cy)
        d *= weight[..., None]
        brow = float(state.brow_raise)
        if abs(brow) > STILL:
            iod = float(np.linalg.norm(points[list(EYE_L_CORNERS), :2].mean(0) - points[list(EYE_R_CORNERS), :2].mean(0)))
            lift = brow * BROW_LIFT_IOD * iod
            for side in (BROW_L, BROW_R):
                bx, by = points[side, :2].astype(np.float64).mean(0)
                gx = np.exp(-0.5 * ((xs - bx) / (BROW_SIGMA_X_IOD * iod)) ** 2)
                sigma_y = np.where(ys < by, BROW_SIGMA_UP_IOD, BROW_SIGMA_DOWN_IOD) * iod
                gy = np.exp(-0.5 * ((ys - by) / sigma_y) ** 2)
                d[..., 1] -= lift * gx * gy
        return d

    def region(self, points: np.ndarray) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``: the output pixels the motion can change (the ellipse and its fade, clipped)."""
        oval = points[FACE_OVAL, :2].astype(np.float64)
        cx, cy = oval.mean(0)
        a, b = 0.5 * float(np.ptp(oval[:, 0])), 0.5 * float(np.ptp(oval[:, 1]))
        rx = HEAD_X_AXIS * a * (1.0 + FALLOFF) + 2
        ry = HEAD_Y_AXIS * b * (1.0 + FALLOFF) + 2
        cyh = cy - HEAD_CENTRE_UP * b
        w, h = self.size
        x0, x1 = max(int(math.floor(cx - rx)), 0), min(int(math.ceil(cx + rx)), w)
        y0, y1 = max(int(math.floor(cyh - ry)), 0), min(int(math.ceil(cyh + ry)), h)
        return x0, y0, x1, y1

    def apply(self, frame: np.ndarray, points: np.ndarray, state) -> np.ndarray:
        """``frame`` with the face at ``points`` moved as ``state`` asks (the same array, changed in place, or
        untouched when the state asks for no motion)."""
        if not moves(state):
            return frame
        x0, y0, x1, y1 = self.region(points)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return frame
        # the displacement on a coarse grid covering the region, upsampled to its pixels
        gw, gh = (x1 - x0) // GRID_PX + 2, (y1 - y0) // GRID_PX + 2
        gxs = x0 + np.arange(gw, dtype=np.float64) * (x1 - x0 - 1) / (gw - 1)
        gys = y0 + np.arange(gh, dtype=np.float64) * (y1 - y0 - 1) / (gh - 1)
        mx, my = np.meshgrid(gxs, gys)
        d = self.displacement(points, state, mx, my)
        # one fixed-point step toward the inverse: sample q - D(q - D(q))
        d = self.displacement(points, state, mx - d[..., 0], my - d[..., 1])
        size = (x1 - x0, y1 - y0)
        dx = cv2.resize(d[..., 0].astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        dy = cv2.resize(d[..., 1].astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
        px, py = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        patch = cv2.remap(frame, px - dx, py - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        frame[y0:y1, x0:x1] = patch
        return frame

    def move_points(self, points: np.ndarray, state) -> np.ndarray:
        """Where the mesh ``points`` go under the motion (for tests and tools)."""
        if not moves(state):
            return points[:, :2].copy()
        xs, ys = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
        return points[:, :2] + self.displacement(points, state, xs, ys)
