"""Eye gaze: move the irises inside the eye openings while the sclera and the lids stay where they are.

At construction each eye gets an "empty eyeball" (the opening with the iris painted out by inpainting) and the iris
itself as an RGBA patch. A gaze is rendered by compositing the iris, shifted, over the empty eyeball, inside the
opening only (so the lids cover the iris as it moves). This happens in the source image, before the face warp, so a
blink or a head turn then moves the redirected eye like the rest of the face.

Per frame only the opening and the lid skin around it change, so each eye keeps its arrays on that part of its box
only, with single-channel weights repeated over the three colour channels (numpy is slow at broadcasting an
(h, w, 1) array against an (h, w, 3) one).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from avatarcast.generators.parametric.rig import EYE_L_LOWER, EYE_L_UPPER, EYE_R_LOWER, EYE_R_UPPER, IRIS_L, IRIS_R

GAZE_X_MAX_EYE_WIDTH = 0.20  # iris shift at gaze_x = +-1, fraction of the eye width
GAZE_Y_MAX_IRIS_RADIUS = 0.45  # iris shift at gaze_y = +-1, fraction of the iris radius
LID_COVER_START = 0.35  # lid closure (0 open .. 1 shut) from which lid skin starts to cover the opening
LASH_WIDTH_PX = 1.2  # the closed lid's lash line
LASH_STRENGTH = 0.7
LID_COVER_SOFT = 0.25  # softness of the covering edge, fraction of the opening's height


@dataclass
class _Eye:
    box: tuple[int, int, int, int]  # the part of the image the eye can change
    image: np.ndarray  # (h, w, 3) uint8: the image there
    source: np.ndarray  # (h, w, 3) float32: the same
    opening: np.ndarray  # (h, w, 3) float32, 1 inside the eye opening
    empty: np.ndarray  # (h, w, 3) float32: the eyeball without its iris
    iris: np.ndarray  # (h, w, 3) float32 premultiplied iris colour
    iris_alpha: np.ndarray  # (h, w, 3) float32
    shift_x_px: float
    shift_y_px: float
    lid: np.ndarray  # (h, w, 3) float32: lid skin to paint over the opening as the eye closes
    lid_t: np.ndarray  # (h, w, 3) float32: 0 at the upper lid line .. 1 at the lower lid line
    lid_mask: np.ndarray  # (h, w, 3) float32: the opening, grown to take in the lash roots
    side: int = 0  # 0: the subject's right eye, 1: the left


def _sclera_fill(patch: np.ndarray, filled: np.ndarray, opening: np.ndarray, dist: np.ndarray, radius: float,
                 cx: float) -> np.ndarray:
    """The eyeball with the iris painted out: each row of the iris disc gets the sclera of that row, taken from both
    sides of the iris and blended across it (shading under the lid kept). Inpainting alone pulls in the lids and
    lashes, which reads as a grey patch on narrow eyes."""
    px = patch.astype(np.float32)
    empty = filled.astype(np.float32)
    lum = px.mean(2)
    chroma = px.max(2) - px.min(2)
    bh, bw = lum.shape
    cols = np.arange(bw, dtype=np.float32)
    ring = (opening > 0.85) & (dist > radius + 1.5) & (dist < 2.2 * radius + 3.0)
    if ring.sum() < 4:
        return empty
    # sclera: the bright, unsaturated part of what is visible around the iris
    cand = ring & (lum >= np.percentile(lum[ring], 50)) & (chroma < np.percentile(chroma[ring], 70) + 1.0)
    if cand.sum() < 3:
        cand = ring
    global_rgb = px[cand].mean(0)
    left_rgb = np.tile(global_rgb, (bh, 1))
    right_rgb = left_rgb.copy()
    for side, store in ((cols < cx, left_rgb), (cols > cx, right_rgb)):
        m = cand & side[None, :]
        n = m.sum(1)
        sums = np.einsum("hw,hwc->hc", m.astype(np.float32), px)
        have = n > 0
        store[have] = sums[have] / n[have, None]
        # rows without a sample borrow from the nearest rows that have one
        if have.any() and not have.all():
            idx = np.arange(bh)
            for c in range(3):
                store[:, c] = np.interp(idx, idx[have], store[have, c])
    left_rgb = gaussian_filter1d(left_rgb, 1.0, axis=0, mode="nearest")
    right_rgb = gaussian_filter1d(right_rgb, 1.0, axis=0, mode="nearest")
    t = np.clip((cols - (cx - radius)) / max(2.0 * radius, 1.0), 0.0, 1.0)[None, :, None]
    across = left_rgb[:, None, :] * (1.0 - t) + right_rgb[:, None, :] * t
    disc = np.clip((radius + 3.0 - dist) / 1.5, 0.0, 1.0)[..., None]  # past the iris's dark rim
    return empty * (1.0 - disc) + across * disc


def _lid_skin(patch: np.ndarray, opening: np.ndarray, up_y: np.ndarray, lo_y: np.ndarray, yy: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Skin to cover the opening as the lid comes down, and the opening's height coordinate (0 upper .. 1 lower).

    The colour is the lid and cheek skin around the eye (its darker half left out: lashes, the crease, the eye
    itself), spread into the opening by a normalised blur, with fine texture of the skin just above the lid."""
    px = patch.astype(np.float32)
    lum = px.mean(2)
    bh, bw = lum.shape
    lid_gap = np.clip(lo_y - up_y, 1.0, None)[None, :]
    eye_cols = (lo_y - up_y) > 0.5
    # the lid: the band just above the lash line, its darker third (lashes, crease) left out
    above = up_y[None, :] - yy
    band = (above > 0.3 * lid_gap) & (above < 1.3 * lid_gap) & (opening < 0.05) & eye_cols[None, :]
    if band.sum() < 6:
        band = (opening < 0.05)
    skin = band & (lum >= np.percentile(lum[band], 35))
    colour_col = np.tile(px[skin].mean(0), (bw, 1))
    n = skin.sum(0)
    sums = np.einsum("hw,hwc->wc", skin.astype(np.float32), px)
    have = n > 0
    colour_col[have] = sums[have] / n[have, None]
    colour_col = gaussian_filter1d(colour_col, max(1.0, 0.15 * bw), axis=0, mode="nearest")
    colour = np.broadcast_to(colour_col[None], (bh, bw, 3))
    # the lashes along the closed lid's edge, as dark as the darkest of the portrait's upper lash line
    rim = (np.abs(yy - up_y[None, :]) < 1.5) & eye_cols[None, :]
    lash_rgb = px[rim][lum[rim] <= np.percentile(lum[rim], 15)].mean(0) if rim.sum() >= 3 else colour_col.mean(0)
    # texture: the skin band above the lid line, mirrored downward, its high frequencies only
    src_y = up_y[None, :] - 0.35 * lid_gap - (yy - up_y[None, :])
    src_y = np.clip(src_y, 0, bh - 1).astype(np.float32)
    src_x = np.tile(np.arange(bw, dtype=np.float32), (bh, 1))
    mirrored = cv2.remap(px, src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    detail = mirrored - cv2.GaussianBlur(mirrored, (0, 0), 1.5)
    lid = colour + 0.6 * np.clip(detail, -12.0, 12.0)
    lid_t = np.clip((yy - up_y[None, :]) / lid_gap, 0.0, 1.0).astype(np.float32)
    lash = np.exp(-((((1.0 - lid_t) * lid_gap) / LASH_WIDTH_PX) ** 2)) * (lid_t > 0.5)
    lid = lid + (lash_rgb - lid) * (LASH_STRENGTH * lash)[..., None]
    return lid.astype(np.float32), lid_t


def _lid_mask(opening: np.ndarray, eye_w: float) -> np.ndarray:
    """The opening grown by about a pixel (the iris edge and the lash roots along the lid lines)."""
    grow = cv2.dilate(opening, np.ones((3, 3), np.uint8))
    return np.clip(cv2.GaussianBlur(grow, (3, 3), 0.6), 0.0, 1.0).astype(np.float32)


def _build_eye(image: np.ndarray, landmarks: np.ndarray, upper: np.ndarray, lower: np.ndarray,
               iris: np.ndarray, bounds: tuple[int, int, int, int]) -> _Eye | None:
    h_img, w_img = image.shape[:2]
    contour = np.concatenate([landmarks[upper, :2], landmarks[lower[::-1], :2]]).astype(np.float32)
    centre = landmarks[iris[0], :2]
    radius = float(np.mean(np.linalg.norm(landmarks[iris[1:], :2] - centre, axis=1)))
    eye_w = float(np.linalg.norm(landmarks[upper[-1], :2] - landmarks[upper[0], :2]))
    if radius < 1.0 or eye_w < 4.0:
        return None
    pad = int(np.ceil(radius)) + 3
    x0 = max(int(np.floor(contour[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(contour[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(contour[:, 0].max())) + pad, w_img)
    y1 = min(int(np.ceil(contour[:, 1].max())) + pad, h_img)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return None
    patch = image[y0:y1, x0:x1]
    bh, bw = patch.shape[:2]
    opening = np.zeros((bh, bw), np.float32)
    cv2.fillPoly(opening, [np.round((contour - [x0, y0]) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    opening = cv2.GaussianBlur(opening, (3, 3), 0.6)
    yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
    dist = np.hypot(xx - (centre[0] - x0), yy - (centre[1] - y0))
    iris_alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    # paint the iris out: inpaint the disc (a little larger, to catch its dark rim) from the surrounding sclera
    hole = (dist <= radius + 1.5).astype(np.uint8) * 255
    bgr = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2BGR)
    filled = cv2.cvtColor(cv2.inpaint(bgr, hole, max(2.0, radius * 0.5), cv2.INPAINT_TELEA), cv2.COLOR_BGR2RGB)
    empty = _sclera_fill(patch, filled, opening, dist, radius, centre[0] - x0)
    # only the visible iris travels (the lids over it stay where they are)
    iris_alpha = iris_alpha * np.clip(opening * 1.25, 0.0, 1.0)
    iris_rgb = patch.astype(np.float32) * iris_alpha[..., None]
    up_y = np.interp(xx[0], landmarks[upper, 0] - x0, landmarks[upper, 1] - y0)
    lo_y = np.interp(xx[0], landmarks[lower, 0] - x0, landmarks[lower, 1] - y0)
    lid, lid_t = _lid_skin(patch, opening, up_y, lo_y, yy)
    lid_mask = _lid_mask(opening, eye_w)
    # a frame changes the eye only where the opening or the lid mask is above zero (the iris is zero outside the
    # opening, so shifting it reads zeros past the crop as it did past the box)
    rows, cols = np.nonzero((opening > 0) | (lid_mask > 0))
    if not len(rows):
        return None
    r0, r1 = max(int(rows.min()), bounds[1] - y0), min(int(rows.max()) + 1, bounds[3] - y0)
    c0, c1 = max(int(cols.min()), bounds[0] - x0), min(int(cols.max()) + 1, bounds[2] - x0)
    if r1 <= r0 or c1 <= c0:
        return None

    def crop(a: np.ndarray) -> np.ndarray:
        a = a[r0:r1, c0:c1]
        return np.ascontiguousarray(a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2))

    image_part = np.ascontiguousarray(patch[r0:r1, c0:c1])
    return _Eye(box=(x0 + c0, y0 + r0, x0 + c1, y0 + r1), image=image_part, source=image_part.astype(np.float32),
                opening=crop(opening), empty=crop(empty), iris=crop(iris_rgb), iris_alpha=crop(iris_alpha),
                shift_x_px=GAZE_X_MAX_EYE_WIDTH * eye_w, shift_y_px=GAZE_Y_MAX_IRIS_RADIUS * radius,
                lid=crop(lid), lid_t=crop(lid_t), lid_mask=crop(lid_mask))


class GazeRenderer:
    """Rewrites the eye openings of an image (given at construction) for a gaze direction.

    ``bounds`` (x0, y0, x1, y1, end-exclusive; default: the whole image) is where the eyes may be rewritten.
    """

    def __init__(self, image: np.ndarray, landmarks: np.ndarray,
                 bounds: tuple[int, int, int, int] | None = None) -> None:
        bounds = bounds or (0, 0, image.shape[1], image.shape[0])
        self.eyes = []
        for side, (upper, lower, iris) in enumerate(((EYE_R_UPPER, EYE_R_LOWER, IRIS_R),
                                                     (EYE_L_UPPER, EYE_L_LOWER, IRIS_L))):
            eye = _build_eye(image, landmarks, upper, lower, iris, bounds)
            if eye is not None:
                eye.side = side
                self.eyes.append(eye)

    def apply(self, target: np.ndarray, gaze_x: float, gaze_y: float,
              closure: tuple[float, float] = (0.0, 0.0)) -> None:
        """Write the eyes of the image looking toward (gaze_x, gaze_y) into ``target`` (same size, in place).

        ``target`` must hold the image outside the eyes' boxes (a copy of it, rewritten only by this method).
        ``closure`` (subject's right eye, left eye; 0 open .. 1 shut): the lid skin comes down over the opening from
        the upper lid line, so the face warp, which squeezes the opening shut, has no eye left to squeeze into a dark
        line, and the lashes follow the lid line.
        """
        gx = min(max(gaze_x, -1.0), 1.0)
        gy = min(max(gaze_y, -1.0), 1.0)
        for eye in self.eyes:
            x0, y0, x1, y1 = eye.box
            c = min(max(closure[eye.side], 0.0), 1.0)
            if gx == 0.0 and gy == 0.0 and c <= LID_COVER_START:
                target[y0:y1, x0:x1] = eye.image
                continue
            src = eye.source
            if gx == 0.0 and gy == 0.0:
                out = src
            else:
                m = np.float32([[1, 0, gx * eye.shift_x_px], [0, 1, gy * eye.shift_y_px]])
                size = (x1 - x0, y1 - y0)
                iris = cv2.warpAffine(eye.iris, m, size, flags=cv2.INTER_LINEAR, borderValue=0)
                alpha = cv2.warpAffine(eye.iris_alpha, m, size, flags=cv2.INTER_LINEAR, borderValue=0)
                ball = eye.empty * (1.0 - alpha) + iris
                out = src + (ball - src) * eye.opening
            if c > LID_COVER_START:
                # the lid covers the opening from the top down: rows above `reach` are lid skin
                reach = (c - LID_COVER_START) / (1.0 - LID_COVER_START) * (1.0 + LID_COVER_SOFT) - LID_COVER_SOFT
                cover = np.clip((reach - eye.lid_t) / LID_COVER_SOFT + 1.0, 0.0, 1.0) * eye.lid_mask
                out = out + (eye.lid - out) * cover
            target[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
