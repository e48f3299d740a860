"""The inside of an open mouth: a dark cavity, the upper teeth under the upper lip, a tongue and the lower teeth.

The warp moves the lips; the opening between the (moved) inner-lip contours is then painted over with this
interior, feathered at the lip edge. Everything is sized from the mouth width so it scales with the face, and is
computed only for the pixels of the opening, each layer only where it shows: the pixels are a flat list and colours
are (3, n) planes, because numpy is slow on (h, w, 3) arrays mixed with (h, w) ones.

Upper teeth come from one of two places:

- a portrait that shows its own teeth keeps them: ``TeethTexture`` samples the portrait's mouth opening (before
  the lips were closed at construction) in mouth-local coordinates, and every frame maps it back under the moved
  upper lip (rigid across the mouth, following the lip's curve, at the face's current scale);
- otherwise a synthetic row: per-tooth widths, brightness and rounded edges, darker toward the corners and the
  back, with a soft shadow under the upper lip.
"""

from __future__ import annotations

import cv2
import numpy as np

CAVITY_EDGE_RGB = np.array([96.0, 38.0, 40.0], np.float32)  # just inside the lips
CAVITY_BACK_RGB = np.array([16.0, 5.0, 7.0], np.float32)  # the throat
CAVITY_DEPTH_MW = 0.10  # distance from the lips over which the cavity darkens, fraction of the mouth width
TEETH_RGB = np.array([236.0, 228.0, 210.0], np.float32)
TEETH_BACK_RGB = np.array([150.0, 138.0, 124.0], np.float32)  # teeth toward the corners, turning away from light
TONGUE_RGB = np.array([184.0, 92.0, 96.0], np.float32)
TONGUE_BACK_RGB = np.array([92.0, 38.0, 44.0], np.float32)
TEETH_HEIGHT_MW = 0.13  # visible height of the upper central incisors, fraction of the mouth width
# synthetic upper row from the middle outward: tooth boundaries (fraction of the mouth width from the centre),
# relative heights and brightness of the central incisor, lateral incisor, canine, premolars
TOOTH_EDGES_MW = np.array([0.0, 0.085, 0.155, 0.218, 0.272, 0.322, 0.37], np.float32)
TOOTH_HEIGHTS = np.array([1.0, 0.9, 0.96, 0.8, 0.72, 0.64], np.float32)
TOOTH_BRIGHTNESS = np.array([1.0, 0.965, 0.93, 0.86, 0.8, 0.74], np.float32)
TEETH_HALF_SPAN_MW = 0.37  # the teeth row reaches this far from the centre (further out it is in shadow)
LOWER_TEETH_HEIGHT_MW = 0.05
LOWER_TEETH_HALF_SPAN_MW = 0.24
LOWER_TEETH_MIN_GAP_MW = 0.18  # lower teeth start to show for openings above this
MIN_TEETH_PX = 12  # a portrait's opening with fewer bright, unsaturated pixels shows no teeth
MIN_GAP_PX = 0.6  # below this opening nothing is drawn


def _clip01(x: np.ndarray) -> np.ndarray:
    """``np.clip(x, 0, 1)`` without the Python-level overhead of ``np.clip`` (it adds up over the many small arrays
    of a frame)."""
    return np.minimum(np.maximum(x, 0.0), 1.0)


def _smooth01(x: np.ndarray) -> np.ndarray:
    t = _clip01(x)
    return t * t * (3.0 - 2.0 * t)


class TeethTexture:
    """The upper teeth of a portrait that shows them, kept in mouth-local coordinates for reuse under moved lips.

    ``image``: the framed portrait with its mouth open; ``upper``/``lower``: its inner-lip contours (K, 2), both from
    one corner to the other. ``available`` is False when the opening shows no teeth (then nothing is drawn from it).
    """

    def __init__(self, image: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> None:
        upper = np.asarray(upper, np.float32)
        lower = np.asarray(lower, np.float32)
        a, b = upper[0], upper[-1]
        ax = b - a
        self.length = max(float(np.linalg.norm(ax)), 1e-3)
        self.ax = (ax / self.length).astype(np.float32)
        self.ay = np.array([-self.ax[1], self.ax[0]], np.float32)
        self.origin = a.astype(np.float32)
        uu, uv = (upper - a) @ self.ax, (upper - a) @ self.ay
        lu, lv = (lower - a) @ self.ax, (lower - a) @ self.ay
        o = np.argsort(uu)
        self.up_u, self.up_v = uu[o].astype(np.float32), uv[o].astype(np.float32)
        o = np.argsort(lu)
        self.lo_u, self.lo_v = lu[o].astype(np.float32), lv[o].astype(np.float32)
        self.centre = 0.5 * self.length
        h, w = image.shape[:2]
        poly = np.concatenate([upper, lower[::-1]])
        pad = 3
        x0, y0 = max(int(np.floor(poly[:, 0].min())) - pad, 0), max(int(np.floor(poly[:, 1].min())) - pad, 0)
        x1, y1 = min(int(np.ceil(poly[:, 0].max())) + pad, w), min(int(np.ceil(poly[:, 1].max())) + pad, h)
        self.box = (x0, y0, x1, y1)
        self.patch = np.ascontiguousarray(image[y0:y1, x0:x1]).astype(np.float32)
        # where the teeth are: inside the opening (one pixel in from the lips), bright and unsaturated
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(inside, [np.round((poly - [x0, y0]) * 16).astype(np.int32)], 1, cv2.LINE_AA, shift=4)
        inside = cv2.erode(inside, np.ones((3, 3), np.uint8))
        px = self.patch
        lum = px.mean(2)
        chroma = px.max(2) - px.min(2)
        teeth = (inside > 0) & (lum > 120) & (chroma < 0.45 * lum)
        self.available = bool(teeth.sum() >= MIN_TEETH_PX)
        # depth of the upper row below the lip: from the centre strip's brightness profile down the opening
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        pu = (xx - a[0]) * self.ax[0] + (yy - a[1]) * self.ax[1]
        pv = (xx - a[0]) * self.ay[0] + (yy - a[1]) * self.ay[1]
        below = pv - np.interp(pu, self.up_u, self.up_v)
        gap = np.interp(pu, self.lo_u, self.lo_v) - np.interp(pu, self.up_u, self.up_v)
        strip = (np.abs(pu - self.centre) < 0.2 * self.length) & (inside > 0)
        depth = 0.0
        top = 0
        if self.available and strip.any():
            rows = np.clip(below[strip], 0, None).astype(int)
            counts = np.bincount(rows)
            bright = np.bincount(rows, weights=teeth[strip].astype(np.float64), minlength=len(counts))
            frac = bright / np.maximum(counts, 1)
            lit = np.nonzero(frac > 0.5)[0]
            if len(lit):
                # the first run of bright rows from the lip down; rows above it (the lip's inner edge, gum shadow)
                # are skipped so the teeth start right under the moved lip
                top = int(lit[0])
                run_end = lit[0]
                for r in lit[1:]:
                    if r > run_end + 2:
                        break
                    run_end = r
                depth = float(run_end + 1)
        self.top_px = float(top)
        self.depth_px = min(depth, float(np.max(gap)) if gap.size else 0.0) - self.top_px
        if self.depth_px < 2.0:
            self.available = False
        # weight: inside the opening, down to the row's depth (and not below the portrait's lower lip)
        inside_f = cv2.GaussianBlur(inside.astype(np.float32), (3, 3), 0.6)
        self.weight = (inside_f * np.clip(self.top_px + self.depth_px + 0.5 - below, 0.0, 1.0)).astype(np.float32)

    def sample(self, pu: np.ndarray, below_lip: np.ndarray, centre: float, scale: float
               ) -> tuple[np.ndarray, np.ndarray]:
        """Where the portrait's teeth are at current mouth-local coordinates, for a list of n pixels.

        ``pu``: position along the current mouth (pixels from its first corner), ``centre`` its middle;
        ``below_lip``: distance below the current upper lip; ``scale``: current face size / portrait face size.
        Returns the texture coordinates (n, 2) of the pixels and their weight (n,); ``colour`` gives the colour.
        """
        k = 1.0 / max(scale, 1e-3)
        u0 = self.centre + (pu - centre) * k
        v0 = np.interp(u0, self.up_u, self.up_v).astype(np.float32) + self.top_px + below_lip * k
        x0, y0 = self.box[:2]
        mx = (self.origin[0] + u0 * self.ax[0] + v0 * self.ay[0] - x0).astype(np.float32)
        my = (self.origin[1] + u0 * self.ax[1] + v0 * self.ay[1] - y0).astype(np.float32)
        coords = cv2.merge([mx.reshape(1, -1), my.reshape(1, -1)])
        weight = cv2.remap(self.weight, coords, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
        return coords.reshape(-1, 2), weight.reshape(-1)

    def colour(self, coords: np.ndarray) -> np.ndarray:
        """The portrait's teeth colour (3, n) at texture coordinates (n, 2) from ``sample``."""
        return cv2.remap(self.patch, coords.reshape(1, -1, 2), None, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)[0].T


def _synthetic_tooth(pu_c: np.ndarray, mw: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where pixels fall in a synthetic upper row, from their offset to the mouth's centre: the distance from the
    centre (fraction of the mouth width), the tooth, the position across it (0..1) and its height (pixels)."""
    x = np.abs(pu_c) / mw
    tooth = np.interp(x, TOOTH_EDGES_MW, np.arange(len(TOOTH_EDGES_MW), dtype=np.float32))
    idx = np.minimum(tooth.astype(np.int32), len(TOOTH_HEIGHTS) - 1)
    frac = tooth - np.floor(tooth)
    height = TEETH_HEIGHT_MW * mw * TOOTH_HEIGHTS[idx]
    # rounded incisal edge: each tooth a little shorter at its sides
    height = height * (1.0 - 0.1 * (2.0 * frac - 1.0) ** 4)
    return x, idx, frac, height


def _synthetic_teeth_weight(tooth: tuple[np.ndarray, ...], below_lip: np.ndarray) -> np.ndarray:
    """Weight (n,) of a synthetic upper row (``tooth`` from ``_synthetic_tooth``): from the lip down to each tooth's
    edge, fading out at the row's ends."""
    x, _, _, height = tooth
    band = _clip01(height + 0.5 - below_lip) * _clip01(below_lip + 1.0)
    span = _clip01((TEETH_HALF_SPAN_MW - x) / 0.06)
    return band * span


def _synthetic_teeth_colour(tooth: tuple[np.ndarray, ...], below_lip: np.ndarray, mw: float) -> np.ndarray:
    """Colour (3, n) of a synthetic upper row (``tooth`` from ``_synthetic_tooth``): per-tooth brightness, rounded
    edges and gaps, darker toward the corners and in the shadow of the lip."""
    x, idx, frac, height = tooth
    rel = _clip01(below_lip / np.maximum(height, 1e-3))
    # toward the corners the row turns away into the mouth: darker and greyer
    side = _clip01(x / TEETH_HALF_SPAN_MW) ** 1.6
    base = TEETH_RGB[:, None] + (TEETH_BACK_RGB - TEETH_RGB)[:, None] * side
    lip_shadow = 0.7 + 0.3 * _smooth01(below_lip / max(0.3 * TEETH_HEIGHT_MW * mw, 1.0))
    edge = 1.0 - 0.12 * rel ** 3  # the translucent incisal edge
    # the gaps between the teeth: darker lines that open into small triangles at the biting edge
    gap_w = 0.5 * (0.08 + 0.25 * rel ** 3)
    d_edge = np.minimum(frac, 1.0 - frac)
    gaps = 1.0 - 0.35 * _clip01(1.0 - d_edge / gap_w) * (x > 0.002)
    shade = TOOTH_BRIGHTNESS[idx] * lip_shadow * edge * gaps
    return base * shade


def _column_indices(on: np.ndarray, n: int) -> np.ndarray:
    """Flat indices (3, m) of the columns ``on`` of a (3, n) array: numpy is slow at indexing columns directly."""
    return on + np.arange(0, 3 * n, n)[:, None]


def _composite(colour: np.ndarray, on: np.ndarray, layer: np.ndarray, weight: np.ndarray) -> None:
    """Blend ``layer`` (3, m) with opacity ``weight`` (m,) over the pixels ``on`` (m indices) of ``colour`` (3, n),
    in place."""
    flat = _column_indices(on, colour.shape[1])
    values = colour.reshape(-1)
    values[flat] = values.take(flat) * (1.0 - weight) + layer * weight


def _synthetic_teeth_possible(pu_c: np.ndarray, below_lip: np.ndarray, mw: float) -> np.ndarray:
    """Pixels where the synthetic upper row can have weight: under the lip, at most a tooth deep, inside its span
    (a superset: the weight is computed exactly there and is zero everywhere else)."""
    return ((below_lip > -1.0) & (below_lip < TEETH_HEIGHT_MW * mw * float(TOOTH_HEIGHTS.max()) + 1.0)
            & (np.abs(pu_c) / mw < TEETH_HALF_SPAN_MW))


def _upper_teeth(pu: np.ndarray, pu_c: np.ndarray, below_lip: np.ndarray, du: np.ndarray, centre: float, mw: float,
                 teeth: TeethTexture | None, face_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The upper row over the opening's pixels: (indices of the pixels it covers, colour (3, m), weight (m,))."""
    if teeth is None or not teeth.available:
        on = np.flatnonzero(_synthetic_teeth_possible(pu_c, below_lip, mw))
        tooth, below_on = _synthetic_tooth(pu_c[on], mw), below_lip[on]
        return on, _synthetic_teeth_colour(tooth, below_on, mw), _synthetic_teeth_weight(tooth, below_on)
    coords, real_w = teeth.sample(pu, below_lip, centre, face_scale)
    # the portrait's row where it has one; the synthetic row only past its ends, so a mouth wider than the
    # portrait's never shows an empty edge
    past_ends = du > 0.6
    syn_w = np.zeros(len(pu))
    possible = np.flatnonzero(_synthetic_teeth_possible(pu_c, below_lip, mw) & past_ends)
    syn_w[possible] = _synthetic_teeth_weight(_synthetic_tooth(pu_c[possible], mw), below_lip[possible])
    teeth_w = np.maximum(real_w, syn_w * (1.0 - real_w) * past_ends)
    on = np.flatnonzero(teeth_w > 0.0)
    if not len(on):
        return on, np.zeros((3, 0)), teeth_w[on]
    real_w, teeth_w, below_on = real_w[on], teeth_w[on], below_lip[on]
    lip_shadow = 0.78 + 0.22 * _smooth01(below_on / max(0.25 * teeth.depth_px * face_scale, 1.0))
    real = teeth.colour(coords.take(on, axis=0)) * lip_shadow
    rw = real_w / np.maximum(teeth_w, 1e-6)
    # the synthetic colour counts only where the portrait's row covers less than the combined weight (a few
    # pixels past its ends)
    mixed = np.flatnonzero(rw < 1.0)
    syn_rgb = np.zeros((3, len(on)))
    syn_rgb.reshape(-1)[_column_indices(mixed, len(on))] = _synthetic_teeth_colour(
        _synthetic_tooth(pu_c[on[mixed]], mw), below_on[mixed], mw)
    return on, real * rw + syn_rgb * (1.0 - rw), teeth_w


def draw_mouth_interior(out: np.ndarray, upper: np.ndarray, lower: np.ndarray, mouth_width_px: float,
                        teeth: TeethTexture | None = None, face_scale: float = 1.0) -> None:
    """Paint the mouth interior into ``out`` (RGB uint8, in place).

    ``upper`` and ``lower``: the inner-lip contours (K, 2) in pixels of ``out``, both from one corner to the other
    (same first and last point). The opening is the region between them. ``teeth``: the portrait's own teeth (used
    for the upper row when available); ``face_scale``: the face's current size relative to the portrait.

    A layer's colour is computed only where its weight is above zero: blending with a zero weight leaves a pixel
    exactly as it was.
    """
    upper = np.asarray(upper, np.float32)
    lower = np.asarray(lower, np.float32)
    # opening measured across the mouth (perpendicular to the corner-to-corner line); where the lips press
    # together (negative opening) the lower contour is clamped onto the upper one
    along = upper[-1] - upper[0]
    along = along / max(float(np.linalg.norm(along)), 1e-3)
    down = np.array([-along[1], along[0]], np.float32)
    signed = (lower - upper) @ down
    lower = np.where((signed > 0)[:, None], lower, upper)
    gap = np.clip(signed, 0.0, None)
    if float(gap.max()) < MIN_GAP_PX:
        return
    h, w = out.shape[:2]
    poly = np.concatenate([upper, lower[::-1]]).astype(np.float32)
    bx0 = max(int(np.floor(poly[:, 0].min())) - 2, 0)
    by0 = max(int(np.floor(poly[:, 1].min())) - 2, 0)
    bx1 = min(int(np.ceil(poly[:, 0].max())) + 3, w)
    by1 = min(int(np.ceil(poly[:, 1].max())) + 3, h)
    if bx1 - bx0 < 2 or by1 - by0 < 2:
        return
    bw, bh = bx1 - bx0, by1 - by0
    # opening mask, antialiased at 1/16 px, softened by one pixel
    alpha = np.zeros((bh, bw), np.float32)
    local = poly - [bx0, by0]
    cv2.fillPoly(alpha, [np.round(local * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0.7)
    inside = np.flatnonzero(alpha > 0.0)
    if not len(inside):
        return
    opacity = alpha.reshape(-1)[inside]
    rows, cols = np.divmod(inside, bw)

    # mouth axes: along (corner to corner) and across (down)
    a, b = upper[0], upper[-1]
    ax = b - a
    length = max(float(np.linalg.norm(ax)), 1e-3)
    ax = ax / length
    ay = np.array([-ax[1], ax[0]], np.float32)
    rx = (cols + bx0).astype(np.float32) - a[0]
    ry = (rows + by0).astype(np.float32) - a[1]
    pu = rx * ax[0] + ry * ax[1]
    pv = rx * ay[0] + ry * ay[1]
    uu = (upper - a) @ ax
    uv = (upper - a) @ ay
    lu = (lower - a) @ ax
    lv = (lower - a) @ ay
    ou, ol = np.argsort(uu), np.argsort(lu)
    v_up = np.interp(pu, uu[ou], uv[ou]).astype(np.float32)
    v_lo = np.interp(pu, lu[ol], lv[ol]).astype(np.float32)
    centre = 0.5 * length
    pu_c = pu - centre
    du = np.abs(pu_c) / (0.5 * length)  # 0 in the middle, 1 at the corners
    mw = max(mouth_width_px, 1.0)
    max_gap = float(gap.max())
    below_lip = pv - v_up
    above_lip = v_lo - pv

    # cavity: reddish just inside the lips, darkening with the distance from them (the back of the mouth is where
    # both lips are far), and toward the corners (cheeks shade them)
    reach = CAVITY_DEPTH_MW * mw
    depth = _smooth01(np.minimum(below_lip, above_lip) / reach) * (1.0 - 0.5 * du ** 2)
    depth = _clip01(depth * min(1.0, 0.4 + max_gap / (0.15 * mw)))
    color = CAVITY_EDGE_RGB[:, None] + (CAVITY_BACK_RGB - CAVITY_EDGE_RGB)[:, None] * depth ** 0.7
    color = color * (1.0 - 0.45 * du ** 3)

    # tongue: a low mound resting above the lower teeth, lit at its front, fading into the dark toward the back
    if max_gap > 0.10 * mw:
        strength = min(1.0, (max_gap - 0.10 * mw) / (0.15 * mw))
        tongue_h = (0.10 * mw + 0.15 * np.maximum(v_lo - v_up, 0.0)) * (1.0 - 0.6 * du ** 2)
        into = above_lip / np.maximum(tongue_h, 1e-3)  # 0 at the lower lip, 1 at the tongue's top edge
        tongue = _clip01((1.0 - into) * tongue_h / 1.5) * (1.0 - _smooth01((du - 0.6) / 0.3))
        tw = tongue * strength
        on = np.flatnonzero(tw > 0.0)
        into_on, du_on = into[on], du[on]
        lit = _smooth01(1.0 - into_on)
        tongue_rgb = TONGUE_BACK_RGB[:, None] + (TONGUE_RGB - TONGUE_BACK_RGB)[:, None] * lit
        groove = 1.0 - 0.1 * np.exp(-((pu_c[on] / (0.05 * mw)) ** 2)) * (into_on > 0.2)
        _composite(color, on, tongue_rgb * (groove * (1.0 - 0.35 * du_on ** 2)), tw[on])

    # lower teeth: a narrow row just above the lower lip, only in wide openings, in front of the tongue
    if max_gap > LOWER_TEETH_MIN_GAP_MW * mw:
        strength = min(1.0, (max_gap - LOWER_TEETH_MIN_GAP_MW * mw) / (0.08 * mw))
        lt_h = LOWER_TEETH_HEIGHT_MW * mw * (1.0 - 0.5 * du ** 2)
        x = np.abs(pu_c) / mw
        row = _clip01(lt_h + 0.5 - above_lip) * _clip01((LOWER_TEETH_HALF_SPAN_MW - x) / 0.06)
        lw = row * strength
        on = np.flatnonzero(lw > 0.0)
        x_on = x[on]
        # lower incisors are narrow and evenly spaced; the lower lip shades their base
        frac = (x_on / 0.055) % 1.0
        gaps = 1.0 - 0.2 * _clip01(1.0 - np.minimum(frac, 1.0 - frac) / 0.09)
        base_shadow = 0.6 + 0.4 * _smooth01(above_lip[on] / max(0.5 * LOWER_TEETH_HEIGHT_MW * mw, 1.0))
        shade = 0.86 * gaps * base_shadow * (1.0 - 0.35 * _clip01(x_on / LOWER_TEETH_HALF_SPAN_MW) ** 2)
        _composite(color, on, TEETH_RGB[:, None] * shade, lw[on])

    # upper teeth: hanging from the upper lip, the portrait's own where it shows them
    color = color.astype(np.float64)  # the teeth are computed in double precision, and so is the rest from here
    on, teeth_rgb, teeth_w = _upper_teeth(pu, pu_c, below_lip, du, centre, mw, teeth, face_scale)
    _composite(color, on, teeth_rgb, teeth_w)

    region = out[by0:by1, bx0:bx1]
    patch = np.ascontiguousarray(region)
    pixels = patch.reshape(-1)
    flat = inside * 3 + np.arange(3)[:, None]  # (3, n) indices of the channels of the opening's pixels
    blended = pixels.take(flat).astype(np.float32) * (1.0 - opacity) + color * opacity
    pixels[flat] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    region[...] = patch
