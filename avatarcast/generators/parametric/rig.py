"""The face rig: where every face-mesh landmark goes for a given ``AvatarState``.

Expressions are linear blend shapes precomputed from the portrait's own landmarks (displacements in output pixels,
built in a face-local frame so a tilted portrait opens its mouth along its own face axis):

- the mouth: inner-lip contours define the opening; the lower lip and the jaw drop, the upper lip rises a little,
  the corners stay together; a portrait that already shows its teeth is closed by moving both inner contours to
  their midline (the ``closing`` shape, applied at every state), so ``jaw_open = 0`` means lips together;
- lips spread (``mouth_wide``) or rounded (``mouth_round``), smile and frown at the corners and cheeks;
- brows raised or furrowed, with the upper-lid skin following;
- per-eye lid closing (upper lid down to a line near the lower lid).

Head motion then rotates the expressed 3D mesh about a pivot near the neck (yaw, pitch, roll), scales it about the
face centre (lean in) and shifts it, and projects it orthographically. Two rings of extra control points outside
the face (the skull and hair, and a still outer ring) carry the head motion out to where it fades to zero.

Landmark indices are those of the MediaPipe face mesh topology (468 points + 10 iris points).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from avatarcast.core.errors import InvalidValueError
from avatarcast.core.trajectory import smoothstep_range
from avatarcast.core.types import AvatarState

N_MESH = 468

# MediaPipe face mesh contours (left/right below are as seen in the image: "image-left" = the subject's right)
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
                      148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109], np.int32)
LIPS_UPPER_INNER = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308], np.int32)
LIPS_LOWER_INNER = np.array([78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308], np.int32)
LIPS_UPPER_OUTER = np.array([61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291], np.int32)
LIPS_LOWER_OUTER = np.array([61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291], np.int32)
# eye contours from the outer-image-side corner to the other corner, upper lid and lower lid
EYE_R_UPPER = np.array([33, 246, 161, 160, 159, 158, 157, 173, 133], np.int32)  # subject's right (image left)
EYE_R_LOWER = np.array([33, 7, 163, 144, 145, 153, 154, 155, 133], np.int32)
EYE_L_UPPER = np.array([362, 398, 384, 385, 386, 387, 388, 466, 263], np.int32)  # subject's left (image right)
EYE_L_LOWER = np.array([362, 382, 381, 380, 374, 373, 390, 249, 263], np.int32)
BROW_R = np.array([46, 53, 52, 65, 55, 70, 63, 105, 66, 107], np.int32)
BROW_L = np.array([276, 283, 282, 295, 285, 300, 293, 334, 296, 336], np.int32)
IRIS_R = np.arange(468, 473, dtype=np.int32)  # centre first, then four points on the rim
IRIS_L = np.arange(473, 478, dtype=np.int32)
NOSE_TIP = 1
CHIN = 152

# shape amplitudes, as fractions of the mouth width (mw), face width (fw) or the local eye opening
JAW_GAP_MAX_MW = 0.40  # inner-lip gap at the mouth centre for jaw_open = 1
JAW_UPPER_SHARE = 0.18  # share of the opening taken by the upper lip rising (the rest is the jaw dropping)
WIDE_CORNER_MW = 0.10
WIDE_GAP_REDUCTION = 0.35  # spread lips open less for the same jaw
ROUND_CORNER_MW = 0.14
SMILE_CORNER_UP_MW = 0.14
SMILE_CORNER_OUT_MW = 0.07
FROWN_CORNER_DOWN_MW = 0.09
BROW_RAISE_FW = 0.055
BROW_FURROW_DOWN_FW = 0.03
BROW_FURROW_IN_FW = 0.02
CLOSE_OVERLAP = 0.5  # each inner lip moves this fraction of the portrait's opening (0.5: they meet at the midline)
LID_MEET_FRACTION = 0.2  # closed lids meet at this fraction of the opening above the lower lid
RING_HEAD_SCALE = (1.30, 1.55, 1.25)  # skull ring: (sideways, upward, downward) scale of the face oval
RING_STILL_SCALE = (2.0, 2.2, 1.9)  # still ring where head motion has faded to zero
RING_NECK_FOLLOW = 0.45  # how much of the head motion the skull ring's lowest points (the neck) follow


def rotation_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """3x3 rotation in image axes (x right, y down, z away from the camera), AvatarState sign conventions."""
    y, p, r = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    ryaw = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])  # nose (z < 0) goes to +x
    rpitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # nose goes down (+y)
    rroll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])  # clockwise on screen
    return (rroll @ rpitch @ ryaw).astype(np.float32)


class FaceRig:
    """Landmark positions (output pixels) as a function of the state; everything state-independent precomputed.

    ``points`` are the control points: the 468 mesh landmarks, then the skull ring, then the still ring.
    ``positions(state)`` returns their 2D positions for that state.
    """

    def __init__(self, landmarks: np.ndarray) -> None:
        lm = np.asarray(landmarks, np.float32)
        if lm.shape[0] < N_MESH or lm.shape[1] != 3:
            raise InvalidValueError(f"expected (478, 3) face-mesh landmarks, got {lm.shape}")
        self.landmarks = lm
        mesh = lm[:N_MESH]
        # face-local frame: ex along the eye line, ey perpendicular (down the face)
        eye_r = mesh[np.r_[EYE_R_UPPER, EYE_R_LOWER], :2].mean(0)
        eye_l = mesh[np.r_[EYE_L_UPPER, EYE_L_LOWER], :2].mean(0)
        ex = eye_l - eye_r
        ex /= max(float(np.linalg.norm(ex)), 1e-6)
        ey = np.array([-ex[1], ex[0]], np.float32)
        self.ex, self.ey = ex.astype(np.float32), ey
        self.origin = 0.5 * (eye_r + eye_l)
        rel = mesh[:, :2] - self.origin
        self.u = rel @ ex  # across the face
        self.v = rel @ ey  # down the face
        oval_u, oval_v = self.u[FACE_OVAL], self.v[FACE_OVAL]
        self.face_width = float(oval_u.max() - oval_u.min())
        self.face_height = float(oval_v.max() - oval_v.min())
        self.face_centre = self.origin + ex * float(0.5 * (oval_u.max() + oval_u.min())) + ey * float(
            0.5 * (oval_v.max() + oval_v.min()))
        self.mouth_width = float(abs(self.u[291] - self.u[61]))
        self.eye_distance = float(np.linalg.norm(eye_l - eye_r))
        self._build_rings()
        self._build_shapes()
        # pivot for head rotation: below the chin (the neck), behind the face
        zc = float(mesh[FACE_OVAL, 2].mean())
        chin = mesh[CHIN, :2]
        pivot2d = chin + ey * 0.15 * self.face_height
        self.pivot = np.array([pivot2d[0], pivot2d[1], zc + 0.45 * self.face_width], np.float32)

    # ----------------------------------------------------------------------------------------------- geometry
    def _to_image(self, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
        """Face-local displacements -> image displacements, shape (N, 2)."""
        return du[:, None] * self.ex[None, :] + dv[:, None] * self.ey[None, :]

    def _build_rings(self) -> None:
        mesh = self.landmarks[:N_MESH]
        c = self.face_centre
        oval = mesh[FACE_OVAL, :2]
        rel_u = (oval - c) @ self.ex
        rel_v = (oval - c) @ self.ey

        def ring(scale: tuple[float, float, float]) -> np.ndarray:
            su, sup, sdown = scale
            rv = np.where(rel_v < 0, rel_v * sup, rel_v * sdown)
            return (c + rel_u[:, None] * su * self.ex + rv[:, None] * self.ey).astype(np.float32)

        self.ring_head = ring(RING_HEAD_SCALE)
        self.ring_still = ring(RING_STILL_SCALE)
        # the skull ring follows the head fully at the top and less toward the neck
        down = np.clip(rel_v / max(float(rel_v.max()), 1e-6), 0.0, 1.0)
        self.ring_head_follow = (1.0 - (1.0 - RING_NECK_FOLLOW) * smoothstep_range(0.3, 1.0, down)).astype(np.float32)
        zc = float(mesh[FACE_OVAL, 2].mean())
        # the skull ring sits at the depth of the sides of the head (behind the face oval)
        ring_z = np.full(len(oval), zc, np.float32)
        self.points3d = np.concatenate([mesh, np.column_stack([self.ring_head, ring_z])]).astype(np.float32)
        self.points = np.concatenate([mesh[:, :2], self.ring_head, self.ring_still]).astype(np.float32)
        self.n_moving = len(self.points3d)

    def _mouth_profile(self, s: np.ndarray) -> np.ndarray:
        """Opening profile across the mouth: 0 at the corners, 1 in the middle (a lens)."""
        return np.clip(np.sin(np.pi * np.clip(s, 0.0, 1.0)), 0.0, 1.0) ** 0.7

    def _build_shapes(self) -> None:
        """Precompute the blend shapes (N_MESH, 2) in image pixels."""
        u, v = self.u, self.v
        n = N_MESH
        mw, fw = self.mouth_width, self.face_width
        # ---- mouth geometry
        ui_u, ui_v = u[LIPS_UPPER_INNER], v[LIPS_UPPER_INNER]
        li_u, li_v = u[LIPS_LOWER_INNER], v[LIPS_LOWER_INNER]
        u_left, u_right = float(u[78]), float(u[308])
        span = max(u_right - u_left, 1e-3)
        s = (u - u_left) / span  # 0 at the image-left inner corner, 1 at the other
        centre_u = 0.5 * (u_left + u_right)
        order = np.argsort(ui_u)
        ui_vs = np.interp(u, ui_u[order], ui_v[order])
        order = np.argsort(li_u)
        li_vs = np.interp(u, li_u[order], li_v[order])
        mid_v = 0.5 * (ui_vs + li_vs)
        gap0 = np.clip(li_vs - ui_vs, 0.0, None)  # the portrait's own opening at each point's column
        if float(gap0.max(initial=0.0)) < 0.03 * mw:
            gap0 = np.zeros_like(gap0)  # a closed mouth: keep it as it is
        gap0_centre = float(np.interp(centre_u, u, gap0)) if gap0.any() else 0.0
        self.portrait_mouth_gap = gap0_centre
        corner_v = 0.5 * float(v[61] + v[291])
        uo_u, uo_v = u[LIPS_UPPER_OUTER], v[LIPS_UPPER_OUTER]
        lo_u, lo_v = u[LIPS_LOWER_OUTER], v[LIPS_LOWER_OUTER]
        order = np.argsort(uo_u)
        uo_vs = np.interp(u, uo_u[order], uo_v[order])
        order = np.argsort(lo_u)
        lo_vs = np.interp(u, lo_u[order], lo_v[order])
        # which points belong to the lips: inside the outer lip contour (slightly dilated)
        outer = np.concatenate([self.landmarks[LIPS_UPPER_OUTER, :2], self.landmarks[LIPS_LOWER_OUTER[::-1], :2]])
        pts = self.landmarks[:n, :2]
        inside = np.array([cv2.pointPolygonTest(outer.reshape(-1, 1, 2), (float(x), float(y)), True) > -0.04 * mw
                           for x, y in pts])
        in_cols = (u > float(u[61]) - 0.05 * mw) & (u < float(u[291]) + 0.05 * mw)
        lips = inside & in_cols
        lower_lip = lips & (v >= mid_v)
        upper_lip = lips & (v < mid_v)
        # the contours themselves by name (after a closing their points coincide, so position cannot tell)
        lower_lip[np.r_[LIPS_LOWER_INNER, LIPS_LOWER_OUTER]] = True
        upper_lip[np.r_[LIPS_LOWER_INNER, LIPS_LOWER_OUTER]] = False
        upper_lip[np.r_[LIPS_UPPER_INNER, LIPS_UPPER_OUTER]] = True
        lower_lip[np.r_[LIPS_UPPER_INNER, LIPS_UPPER_OUTER]] = False
        lips |= lower_lip | upper_lip
        lower_lip[[78, 308, 61, 291]] = False
        upper_lip[[78, 308, 61, 291]] = False
        # upper lip weight: 1 at the inner contour, 0.35 at the outer contour
        thick_u = np.clip(ui_vs - uo_vs, 1e-3, None)
        w_upper = np.where(upper_lip, 1.0 - 0.65 * np.clip((ui_vs - v) / thick_u, 0.0, 1.0), 0.0)
        w_upper[LIPS_UPPER_INNER] = 1.0
        # the jaw: everything below the mouth corners, fading up to the corner line and out toward the ears
        lateral = 1.0 - smoothstep_range(0.30 * fw, 0.55 * fw, np.abs(u - centre_u))
        below = smoothstep_range(corner_v - 0.02 * fw, corner_v + 0.10 * fw, v)
        w_jaw = np.where(lips, 0.0, below * lateral)
        # the lower lip follows the jaw; at the corners it follows less (the lens shape of the opening)
        prof = self._mouth_profile(s)
        corner_share = 0.30  # corners drop this fraction of the jaw so the lips stay joined there
        lip_follow = corner_share + (1.0 - corner_share) * prof
        w_lower = np.where(lower_lip, lip_follow, 0.0)
        # the inner corners move with the corners
        zeros = np.zeros(n, np.float32)

        # closing shape: inner contours to their midline (portraits showing teeth); the jaw comes up accordingly
        dv_close = np.where(upper_lip, CLOSE_OVERLAP * gap0 * w_upper, 0.0) - np.where(lower_lip, CLOSE_OVERLAP * gap0, 0.0)
        dv_close = dv_close - w_jaw * 0.5 * gap0_centre
        dv_close[[78, 308]] = 0.0
        self.shape_close = self._to_image(zeros, dv_close)

        # jaw: opening of JAW_GAP_MAX_MW * mw at the centre
        g = JAW_GAP_MAX_MW * mw
        drop = (1.0 - JAW_UPPER_SHARE) * g
        dv_jaw = w_jaw * drop + w_lower * drop * 1.0
        dv_jaw = dv_jaw - np.where(upper_lip, JAW_UPPER_SHARE * g * prof * w_upper, 0.0)
        dv_jaw = dv_jaw + np.where(upper_lip, corner_share * drop * (1.0 - prof) * w_upper, 0.0)
        # the inner and outer corners drop together: moving only the inner ones stretches the dark lip seam
        # between them into a strand
        dv_jaw[[78, 308, 61, 291]] = corner_share * drop
        # cheeks beside the corners follow a little
        near_corner = np.exp(-((np.minimum(np.abs(u - u[61]), np.abs(u - u[291])) / (0.25 * mw)) ** 2
                               + ((v - corner_v) / (0.25 * mw)) ** 2))
        dv_jaw = dv_jaw + np.where(lips | (w_jaw > 0.5), 0.0, near_corner * 0.25 * drop)
        self.shape_jaw = self._to_image(zeros, dv_jaw)

        # corner-centred weights: corners move fully, the lip centre not at all, cheeks with a soft falloff
        side = np.sign(u - centre_u)
        along = np.clip(np.abs(2.0 * s - 1.0), 0.0, 1.0) ** 1.5
        d_corner = np.minimum(np.hypot(u - u[61], v - corner_v), np.hypot(u - u[291], v - corner_v))
        cheek = np.exp(-((d_corner / (0.40 * mw)) ** 2))
        w_corner = np.where(lips, along, cheek)
        w_corner[[61, 291, 78, 308]] = 1.0

        # mouth_wide: corners out, lips thinner
        du_wide = side * WIDE_CORNER_MW * mw * w_corner
        dv_wide = np.where(upper_lip, 0.04 * mw * (1 - w_upper), 0.0) - np.where(lower_lip, 0.04 * mw, 0.0) * (
            1 - along)
        self.shape_wide = self._to_image(du_wide, dv_wide - w_corner * 0.015 * mw)
        self.shape_jaw_wide = -WIDE_GAP_REDUCTION * self.shape_jaw

        # mouth_round: corners in, lips pushed out (taller), a small opening in the middle
        du_round = -side * ROUND_CORNER_MW * mw * w_corner
        dv_round = (np.where(upper_lip, -0.05 * mw * (1 - w_upper) - 0.02 * mw * prof * w_upper, 0.0)
                    + np.where(lower_lip, (0.05 * mw) * (1 - along) * np.clip((v - li_vs) / np.clip(lo_vs - li_vs, 1e-3, None), 0, 1)
                               + 0.03 * mw * prof, 0.0))
        self.shape_round = self._to_image(du_round, dv_round)

        # smile: corners up and out, cheeks lifted, lower lids pushed up (below); frown: corners down
        du_smile = side * SMILE_CORNER_OUT_MW * mw * w_corner
        dv_smile = -SMILE_CORNER_UP_MW * mw * w_corner
        cheek_lift = np.exp(-(((u - centre_u) / (0.45 * fw)) ** 2)) * smoothstep_range(-0.05 * fw, 0.25 * fw, v) * (
            1.0 - smoothstep_range(corner_v, corner_v + 0.15 * fw, v))
        dv_smile = dv_smile - np.where(lips, 0.0, 0.03 * fw * cheek_lift * (1 - w_corner))
        self.shape_smile = self._to_image(du_smile, dv_smile)
        self.shape_frown = self._to_image(-side * 0.02 * mw * w_corner, FROWN_CORNER_DOWN_MW * mw * w_corner)

        # ---- eyes: per-eye closing shape, and the smile's lower-lid lift
        self.shape_close_eye_r, lift_r = self._eye_shapes(EYE_R_UPPER, EYE_R_LOWER)
        self.shape_close_eye_l, lift_l = self._eye_shapes(EYE_L_UPPER, EYE_L_LOWER)
        self.shape_smile = self.shape_smile + 0.25 * (lift_r + lift_l)

        # ---- brows
        self.shape_brow_up, self.shape_brow_down = self._brow_shapes()

    def _eye_shapes(self, upper: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Closing shape (upper lid down to the meeting line) and lower-lid lift shape for one eye."""
        u, v = self.u, self.v
        uu, uv = u[upper], v[upper]
        lu, lv = u[lower], v[lower]
        o = np.argsort(uu)
        up_vs = np.interp(u, uu[o], uv[o])
        o = np.argsort(lu)
        lo_vs = np.interp(u, lu[o], lv[o])
        gap = np.clip(lo_vs - up_vs, 0.0, None)
        width = float(uu.max() - uu.min())
        inside_cols = (u >= uu.min() - 0.15 * width) & (u <= uu.max() + 0.15 * width)
        edge = 1.0 - smoothstep_range(0.0, 0.15 * width, np.maximum(uu.min() - u, u - uu.max()))
        eye_h = max(float(gap.max()), 1e-3)
        above = np.clip(up_vs - v, 0.0, None)
        below = np.clip(v - lo_vs, 0.0, None)
        w_up = np.exp(-((above / (0.9 * eye_h)) ** 2)) * edge * (v <= up_vs + 0.5)
        w_lo = np.exp(-((below / (0.8 * eye_h)) ** 2)) * edge * (v >= lo_vs - 0.5)
        w_up = np.where(inside_cols, w_up, 0.0)
        w_lo = np.where(inside_cols, w_lo, 0.0)
        w_up[upper] = 1.0
        w_lo[lower] = 1.0
        corners = [upper[0], upper[-1]]
        dv = (1.0 - LID_MEET_FRACTION) * gap * w_up - LID_MEET_FRACTION * gap * w_lo
        dv[corners] = 0.0
        zeros = np.zeros_like(u)
        close = self._to_image(zeros, dv)
        lift = self._to_image(zeros, -0.5 * gap * w_lo * (1 - np.isin(np.arange(len(u)), corners)))
        return close, lift

    def _brow_shapes(self) -> tuple[np.ndarray, np.ndarray]:
        u, v = self.u, self.v
        fw = self.face_width
        brows = np.r_[BROW_R, BROW_L]
        brow_v = float(v[brows].mean())
        eye_top = float(v[np.r_[EYE_R_UPPER, EYE_L_UPPER]].min())
        brow_half = float(np.abs(u[brows]).max()) * 1.15
        lateral = 1.0 - smoothstep_range(brow_half * 0.9, brow_half * 1.2, np.abs(u))
        # 1 at the brow, fading to 0 at the upper lid and over the forehead
        band_below = np.clip((eye_top - v) / max(eye_top - brow_v, 1e-3), 0.0, 1.0) ** 1.5
        band_above = np.exp(-(((brow_v - v) / (0.22 * fw)) ** 2))
        w = np.where(v >= brow_v, band_below, 0.4 + 0.6 * band_above) * lateral
        w[brows] = 1.0
        zeros = np.zeros_like(u)
        up = self._to_image(zeros, -BROW_RAISE_FW * fw * w)
        inner = 1.0 - smoothstep_range(0.05 * fw, 0.25 * fw, np.abs(u))
        w_near = np.where(v >= brow_v, band_below, band_above) * lateral
        w_near[brows] = 1.0
        down = self._to_image(-np.sign(u) * BROW_FURROW_IN_FW * fw * w_near * (0.3 + 0.7 * inner),
                              BROW_FURROW_DOWN_FW * fw * w_near * (0.5 + 0.5 * inner))
        return up, down

    # ----------------------------------------------------------------------------------------------- per frame
    def expression(self, s: AvatarState) -> np.ndarray:
        """Mesh landmark displacements (N_MESH, 2) for the expression part of the state."""
        jaw = min(max(s.jaw_open, 0.0), 1.0)
        wide = min(max(s.mouth_wide, 0.0), 1.0)
        rnd = min(max(s.mouth_round, 0.0), 1.0)
        smile = min(max(s.smile, -1.0), 1.0)
        brow = min(max(s.brow_raise, -1.0), 1.0)
        eye_l = min(max(s.eye_open_left, 0.0), 1.3)
        eye_r = min(max(s.eye_open_right, 0.0), 1.3)
        d = self.shape_close.copy()
        if jaw:
            d += (jaw * (1.0 - rnd * 0.3)) * self.shape_jaw + (jaw * wide) * self.shape_jaw_wide
        if wide:
            d += wide * self.shape_wide
        if rnd:
            d += rnd * self.shape_round
        if smile > 0:
            d += smile * self.shape_smile
        elif smile < 0:
            d += -smile * self.shape_frown
        if brow > 0:
            d += brow * self.shape_brow_up
        elif brow < 0:
            d += -brow * self.shape_brow_down
        if eye_r != 1.0:
            d += (1.0 - eye_r) * self.shape_close_eye_r
        if eye_l != 1.0:
            d += (1.0 - eye_l) * self.shape_close_eye_l
        return d

    def positions(self, s: AvatarState, idle: np.ndarray | None = None) -> np.ndarray:
        return self.displacements(s, idle)[2]

    def displacements(self, s: AvatarState, idle: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(expression, head motion, positions) of all control points: the first two are displacements that sum to
        ``positions - points``; the head motion is kept apart so the warp can smooth it."""
        """2D positions of all control points (mesh, skull ring, still ring) for the state.

        ``idle`` adds (yaw, pitch, roll, x, y, scale - 1) on top of the state's head pose (breathing, micro-motion).
        """
        yaw, pitch, roll = s.head_yaw_deg, s.head_pitch_deg, s.head_roll_deg
        hx, hy, hs = s.head_x, s.head_y, s.head_scale
        if idle is not None:
            yaw, pitch, roll = yaw + idle[0], pitch + idle[1], roll + idle[2]
            hx, hy, hs = hx + idle[3], hy + idle[4], hs + idle[5]
        p3 = self.points3d.copy()
        expr = self.expression(s)
        p3[:N_MESH, :2] += expr
        rot = rotation_matrix(yaw, pitch, roll)
        moved = (p3 - self.pivot) @ rot.T + self.pivot
        scale = max(hs, 0.05)
        xy = (moved[:, :2] - self.face_centre) * scale + self.face_centre
        xy += np.array([hx * self.face_width, hy * self.face_width], np.float32)
        # the skull ring follows the head motion only partly toward the neck
        ring = slice(N_MESH, self.n_moving)
        base = self.points3d[ring, :2]
        xy[ring] = base + (xy[ring] - base) * self.ring_head_follow[:, None]
        positions = np.concatenate([xy, self.ring_still]).astype(np.float32)
        expression = np.zeros_like(positions)
        expression[:N_MESH] = expr
        head = positions - self.points - expression
        return expression, head, positions
