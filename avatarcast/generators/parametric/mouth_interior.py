"""The inside of an open mouth: real teeth, tongue and cavity from the mouth bank, fitted to the portrait.

The warp moves the lips; the opening between the (moved) inner-lip contours is then filled with a real mouth
interior, feathered at the lip edge. The interior comes from ``mouth_bank`` (samples cut from real talking-face
footage, in mouth-normalised coordinates: u across the mouth corner to corner, v from the upper inner lip to the
lower one), chosen for the current mouth shape (opening and width) by ``MouthSampler``, and fitted to the portrait
once per sample, at first use:

- rescaled to the portrait's mouth size (cubic), so per frame it is only resampled (bilinear) into the opening;
- sharpened or blurred to the portrait's sharpness (both measured the same way, from the gradient ratio at edges);
- relit and recoloured: its brightness structure kept, scaled from its lips' and skin's brightness to the
  portrait's (in part: a darker skin does not darken the teeth as much), its teeth to the portrait's teeth, the
  cavity's contrast deepened around the portrait's lip brightness; its colour moved from its light to the
  portrait's (the skins' colour casts) and toward the portrait's own colours (lips for cavity and tongue, teeth for
  teeth).

Per frame the interior takes on the portrait's grain: its noise level is measured once (the robust spread of what a
1-pixel blur removes, in the flattest part of the face), and grain of that level (as the same measure reads it,
enlarged as the framing enlarged the portrait, weaker in the dark as a camera's is) is added from noise tiles drawn
from the generator's seed and picked by the frame index: deterministic, and changing from frame to frame as a
camera's noise does.

The pixels of the opening are a flat list and colours are (3, n) planes, because numpy is slow on (h, w, 3) arrays
mixed with (h, w) ones.

A portrait that shows its own teeth keeps them: ``TeethTexture`` samples the portrait's mouth opening (before the
lips were closed at construction) in mouth-local coordinates, and every frame maps it back under the moved upper
lip (rigid across the mouth, following the lip's curve, at the face's current scale); the bank sample is then
mapped below them, its own upper teeth hidden under the portrait's.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from avatarcast.core.trajectory import smoothstep
from avatarcast.generators.parametric.mouth_bank import MouthBank, MouthSampler, lip_and_skin_rgb, load_mouth_bank
from avatarcast.generators.parametric.rig import LIPS_UPPER_INNER, N_MESH

MIN_TEETH_PX = 12  # a portrait's opening with fewer bright, unsaturated pixels shows no teeth
MIN_GAP_PX = 0.6  # below this opening nothing is drawn
FEATHER_RANGE_PX = (0.7, 1.8)  # the opening's edge is blurred like the portrait's edges, within this (sigma, px)
TEXTURE_HEIGHT_MW = 0.5  # a fitted sample's height, fraction of the rest inner mouth width (the widest openings)
EXPOSURE_SHARE = 0.7  # how much of the lips' brightness difference (light, skin tone) the cavity takes on
EXPOSURE_GAIN_RANGE = (0.45, 1.8)
CHROMA_GAIN_RANGE = (0.6, 1.6)  # the light's colour cast corrected by at most these per-channel factors
TARGET_CHROMA_SHARE = 0.8  # how far the colour moves toward the portrait's own lips (cavity) and teeth
TYPICAL_SKIN_CHROMA = np.array([1.25, 0.95, 0.80], np.float32)  # skin's colour relative to its mean, white light
TEETH_IVORY_CHROMA = np.array([1.06, 1.0, 0.94], np.float32)
CAVITY_GAMMA = 1.5  # contrast of the cavity and tongue around the portrait's lip brightness
TEETH_HIDDEN_MARGIN = 0.05  # a sample's upper teeth hidden under a portrait's own: this far (v) past their end
TEETH_OVER_LIPS = 1.75  # teeth brightness over the lips' when a portrait shows none
BLUR_PROBE_SIGMA_PX = 1.0  # the reblur of the gradient-ratio sharpness estimate
# the fitting tried for sharpness: (kind, strength): unsharp amounts, nothing, Gaussian blurs (sigma in pixels)
SHARPNESS_STEPS = (("sharpen", 1.6), ("sharpen", 1.0), ("sharpen", 0.5), ("none", 0.0), ("blur", 0.5),
                   ("blur", 0.8), ("blur", 1.2), ("blur", 1.8), ("blur", 2.6))
CALIBRATION_SAMPLES = 4  # samples the sharpness step is chosen on
GRAIN_TILES = 8
GRAIN_TILE_PX = 128
TEETH_OWN_GRAIN = 0.75  # share of the grain a portrait's own teeth keep through their resampling
MAX_GRAIN = 12.0  # grain sigma cap (8-bit levels): a noisier estimate is image texture, not grain
GRAIN_MAX_LEVEL = 1.5  # grain in the brightest parts (teeth) at most sqrt(this) times the skin's


def _clip01(x: np.ndarray) -> np.ndarray:
    """``np.clip(x, 0, 1)`` without the Python-level overhead of ``np.clip`` (it adds up over the many small arrays
    of a frame)."""
    return np.minimum(np.maximum(x, 0.0), 1.0)




# ------------------------------------------------------------------------------------------ the portrait's look
def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _white_residual_std(sigma_px: float) -> float:
    """Standard deviation of ``x - GaussianBlur(x, sigma_px)`` for unit white noise ``x``."""
    k = cv2.getGaussianKernel(2 * int(np.ceil(3 * sigma_px)) + 1, sigma_px).astype(np.float64)
    k2 = k @ k.T
    centre = k2.shape[0] // 2
    return float(math.sqrt(1.0 - 2.0 * k2[centre, centre] + float((k2 * k2).sum())))


NOISE_RESIDUAL_SIGMA_PX = 1.0
NOISE_FLAT_PERCENT = 30  # noise is measured in the flattest part of the image (fine texture is not noise)
_NOISE_WHITE_STD = _white_residual_std(NOISE_RESIDUAL_SIGMA_PX)


def noise_sigma(image: np.ndarray, flat_percent: float = NOISE_FLAT_PERCENT) -> float:
    """Noise level (8-bit levels) of an RGB image, as an image's grain looks at its own pixel size: the robust
    spread (median absolute deviation) of what a 1-pixel blur removes, in the flattest 30 % of the image (edges and
    fine texture are not noise), in units of white noise's standard deviation. Grain spread over several pixels (an
    enlarged photograph) reads lower, as it looks smoother; everything is compared by this one measure."""
    gray = _gray(image)
    if min(gray.shape) < 8:
        return 0.0
    residual = (gray - cv2.GaussianBlur(gray, (0, 0), NOISE_RESIDUAL_SIGMA_PX))[2:-2, 2:-2]
    if flat_percent >= 100:
        flat = residual.reshape(-1)
    else:
        smooth = cv2.GaussianBlur(gray, (0, 0), 3.0)  # flat where the content is, not where the noise happens to be
        gradient = cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
        flat = residual[gradient[2:-2, 2:-2] <= np.percentile(gradient, flat_percent)]
    if flat.size < 16:
        return 0.0
    mad = float(np.median(np.abs(flat - np.median(flat))))
    return 1.4826 * mad / _NOISE_WHITE_STD


def blur_sigma(image: np.ndarray) -> float | None:
    """Blur of an RGB image as a Gaussian sigma in pixels: from the ratio of the gradient at strong edges to the
    gradient after a known reblur (Zhuo and Sim's defocus estimate), the median over the edges; None without edges."""
    gray = _gray(image)
    if min(gray.shape) < 8:
        return None
    s0 = BLUR_PROBE_SIGMA_PX
    g0 = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    blurred = cv2.GaussianBlur(gray, (0, 0), s0)
    g1 = cv2.magnitude(cv2.Sobel(blurred, cv2.CV_32F, 1, 0), cv2.Sobel(blurred, cv2.CV_32F, 0, 1))
    # edge pixels: local maxima of the gradient, among the strongest quarter
    peak = g0 >= cv2.dilate(g0, np.ones((3, 3), np.uint8))
    strong = g0 >= max(float(np.percentile(g0, 90)), 8.0)
    sel = peak & strong
    sel[:2], sel[-2:], sel[:, :2], sel[:, -2:] = False, False, False, False
    if sel.sum() < 6:
        return None
    ratio = g0[sel] / np.maximum(g1[sel], 1e-3)
    ratio = ratio[ratio > 1.01]
    if len(ratio) < 6:
        return None
    return float(np.clip(np.median(s0 / np.sqrt(ratio * ratio - 1.0)), 0.1, 8.0))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _sharpness_step(image: np.ndarray, kind: str, strength: float) -> np.ndarray:
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), strength)
    if kind == "sharpen":
        soft = cv2.GaussianBlur(image, (0, 0), 1.2)
        return image + strength * (image - soft)
    return image


class PortraitLook:
    """What a synthesised part must match in a portrait: its lips' and skin's colour, noise level and sharpness,
    measured once around the face. ``grain_px``: how many output pixels one of the portrait's own pixels covers
    (its framing's enlargement, at least 1): the size of its grain."""

    def __init__(self, image: np.ndarray, landmarks: np.ndarray, grain_px: float = 1.0) -> None:
        lm = np.asarray(landmarks, np.float32)
        self.grain_px = max(float(grain_px), 1.0)
        colours = lip_and_skin_rgb(image, lm)
        self.lip_rgb, self.skin_rgb = colours if colours is not None else (
            np.array([150.0, 90.0, 90.0], np.float32), np.array([190.0, 140.0, 120.0], np.float32))
        h, w = image.shape[:2]
        mesh = lm[:N_MESH, :2]
        x0, y0 = np.floor(mesh.min(0)).astype(int)
        x1, y1 = np.ceil(mesh.max(0)).astype(int)
        face = image[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
        # noise and sharpness over the whole face (its mouth opening is too small to bias them)
        self.noise = min(noise_sigma(face), MAX_GRAIN) if face.size else 0.0
        self.blur = blur_sigma(face) if face.size else None


# --------------------------------------------------------------------------------------------- the portrait's teeth
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


# ------------------------------------------------------------------------------------------------ the interior
def _column_indices(on: np.ndarray, n: int) -> np.ndarray:
    """Flat indices (3, m) of the columns ``on`` of a (3, n) array: numpy is slow at indexing columns directly."""
    return on + np.arange(0, 3 * n, n)[:, None]


def _composite(colour: np.ndarray, on: np.ndarray, layer: np.ndarray, weight: np.ndarray) -> None:
    """Blend ``layer`` (3, m) with opacity ``weight`` (m,) over the pixels ``on`` (m indices) of ``colour`` (3, n),
    in place."""
    flat = _column_indices(on, colour.shape[1])
    values = colour.reshape(-1)
    values[flat] = values.take(flat) * (1.0 - weight) + layer * weight


class MouthInterior:
    """Real mouth interiors for one portrait: bank samples fitted to its size, colour, sharpness and grain, drawn
    into the opening between the moved inner lips (see the module docstring).

    ``image``: the framed portrait as it was (its mouth open if it showed one); ``landmarks``: its 478 face-mesh
    landmarks; ``teeth``: its own upper teeth, if it shows them; ``seed``: draws the grain; ``framing_scale``: output
    pixels per pixel of the original portrait (an enlarged portrait has coarser grain).
    """

    def __init__(self, image: np.ndarray, landmarks: np.ndarray, teeth: TeethTexture | None = None, seed: int = 0,
                 bank: MouthBank | None = None, framing_scale: float = 1.0) -> None:
        lm = np.asarray(landmarks, np.float32)
        self.bank = bank if bank is not None else load_mouth_bank()
        self.sampler = MouthSampler(self.bank)
        self.teeth = teeth if teeth is not None and teeth.available else None
        self.look = PortraitLook(image, lm, grain_px=framing_scale)
        self.rest_width = max(float(np.linalg.norm(lm[LIPS_UPPER_INNER[-1], :2] - lm[LIPS_UPPER_INNER[0], :2])), 4.0)
        self.tex_w = max(int(round(self.rest_width)), 8)
        self.tex_h = max(int(round(TEXTURE_HEIGHT_MW * self.rest_width)), 4)
        teeth_rgb = self._teeth_rgb()
        self._teeth_level = float(teeth_rgb.mean())
        self._teeth_chroma = teeth_rgb / max(self._teeth_level, 1.0)
        self._textures: dict[int, np.ndarray] = {}
        self.sharpness, self.grain = self._calibrate()
        self.feather = float(np.clip(self.look.blur if self.look.blur is not None else 0.7, *FEATHER_RANGE_PX))
        self._feather_px = 2 * int(np.ceil(2.0 * self.feather)) + 1
        rng = np.random.default_rng(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF) ^ np.uint64(0x6D6F757468))
        # grain as the portrait has it: pixel noise of its own resolution, a little correlated between neighbours
        # (demosaicing, compression), enlarged as the framing enlarged the portrait
        g = self.look.grain_px
        n = int(np.ceil(GRAIN_TILE_PX / g))
        tiles = rng.standard_normal((GRAIN_TILES, n, n)).astype(np.float32)
        tiles = np.stack([cv2.GaussianBlur(t, (0, 0), 0.5) for t in tiles])
        tiles = tiles / tiles.std()
        if g > 1.0:
            tiles = np.stack([cv2.resize(t, (GRAIN_TILE_PX, GRAIN_TILE_PX), interpolation=cv2.INTER_CUBIC)
                              for t in tiles])
        tiles = tiles[:, :GRAIN_TILE_PX, :GRAIN_TILE_PX]
        # scaled so the noise estimator reads the grain as it reads the portrait's (all of a tile is grain)
        probe = np.clip(128.0 + 10.0 * tiles[0], 0, 255).astype(np.uint8)
        unit = max(noise_sigma(np.dstack([probe] * 3), flat_percent=100) / 10.0, 0.05)
        self._grain_tiles = np.ascontiguousarray(tiles / unit)
        self.seed = int(seed)
        self._inv_skin_luma = 1.0 / max(float(_luma(self.look.skin_rgb)), 16.0)

    # ------------------------------------------------------------------------------------------ fitting samples
    def _teeth_rgb(self) -> np.ndarray:
        """The colour teeth have in this portrait: its own (the brighter half of its teeth texture) when it shows
        them, else ivory under the portrait's light (the skin's colour cast, in part)."""
        if self.teeth is not None:
            px = self.teeth.patch[self.teeth.weight > 0.5]
            if len(px) >= MIN_TEETH_PX:
                lum = px.mean(1)
                return px[lum >= np.median(lum)].mean(0).astype(np.float32)
        skin = self.look.skin_rgb / max(float(self.look.skin_rgb.mean()), 1.0)
        cast = skin / (TYPICAL_SKIN_CHROMA / TYPICAL_SKIN_CHROMA.mean())
        chroma = TEETH_IVORY_CHROMA * cast ** 0.5
        level = min(TEETH_OVER_LIPS * float(self.look.lip_rgb.mean()), 235.0)
        return (chroma / chroma.mean() * level).astype(np.float32)

    def _recolour(self, index: int, rgb: np.ndarray) -> np.ndarray:
        """Sample ``index`` (h, w, 3 float) relit and recoloured to the portrait: its brightness structure kept,
        scaled so its lips' brightness goes to the portrait's lips' (in part) and its teeth to the portrait's teeth;
        its colour moved from its light to the portrait's (the skins' colour casts) and toward the portrait's own
        colours: lips for the cavity and tongue, teeth for the teeth."""
        lip_s, skin_s = self.bank.lip_rgb[index], self.bank.skin_rgb[index]
        lum = rgb.mean(2, keepdims=True)
        chroma = rgb / np.maximum(lum, 1.0)
        cast = (self.look.skin_rgb / self.look.skin_rgb.mean()) / (skin_s / max(float(skin_s.mean()), 1.0))
        chroma = chroma * np.clip(cast, *CHROMA_GAIN_RANGE)
        # teeth: brighter than the lips, less saturated
        lip_lum = max(float(lip_s.mean()), 1.0)
        sat = (rgb.max(2, keepdims=True) - rgb.min(2, keepdims=True)) / np.maximum(rgb.max(2, keepdims=True), 1.0)
        lip_sat = float((lip_s.max() - lip_s.min()) / max(float(lip_s.max()), 1.0))
        # (teeth in the mouth's shadow are darker than the lips but still among the brightest of the interior)
        bright = max(float(np.percentile(lum, 97)), 1.0)
        lit = np.maximum(smoothstep((lum / lip_lum - 1.0) / 0.35), smoothstep((lum / bright - 0.62) / 0.2))
        t = lit * smoothstep((lip_sat - sat) / max(0.5 * lip_sat, 1e-3) + 0.5)
        lip_p = self.look.lip_rgb
        target = (1.0 - t) * (lip_p / max(float(lip_p.mean()), 1.0)) + t * (self._teeth_chroma)
        chroma = (1.0 - TARGET_CHROMA_SHARE) * chroma + TARGET_CHROMA_SHARE * target
        chroma = chroma / np.maximum(chroma.mean(2, keepdims=True), 1e-3)
        # exposure from the lips and the skin together (a saturated lip colour alone misleads the brightness)
        ref_s = float(_luma(lip_s) + _luma(skin_s))
        ref_p = float(_luma(lip_p) + _luma(self.look.skin_rgb))
        exposure = float(np.clip(ref_p / max(ref_s, 1.0), *EXPOSURE_GAIN_RANGE)) ** EXPOSURE_SHARE
        teeth_level = float(np.percentile(lum, 97))
        teeth_gain = self._teeth_level / max(teeth_level, 1.0) if teeth_level > 1.05 * lip_lum else exposure
        # the cavity and tongue: darker than the lips gets darker still (footage this small and compressed lifts
        # its blacks; the back of a mouth in a photograph is near black), pivoting on the portrait's lips
        pivot = max(float(lip_p.mean()), 1.0)
        cavity = pivot * (lum * exposure / pivot) ** CAVITY_GAMMA
        return chroma * ((1.0 - t) * cavity + t * lum * teeth_gain)

    def _resized(self, index: int) -> np.ndarray:
        src = self.bank.pixels[index].astype(np.float32)
        return cv2.resize(src, (self.tex_w, self.tex_h), interpolation=cv2.INTER_CUBIC)

    def _calibrate(self) -> tuple[tuple[str, float], float]:
        """The sharpness step that brings the preferred speaker's samples closest to the portrait's blur, and the
        grain to add (the portrait's noise level, 8-bit levels, as ``noise_sigma`` reads it)."""
        picks = np.flatnonzero(self.bank.speaker == self.sampler.speaker)
        if not len(picks):
            picks = np.arange(len(self.bank))
        picks = picks[np.argsort(-self.bank.teeth[picks], kind="stable")][:CALIBRATION_SAMPLES]  # the most edges
        resized = [self._resized(int(i)) for i in picks]
        step: tuple[str, float] = ("none", 0.0)
        target = self.look.blur
        if target is not None:
            best = None
            # the steps go from sharpest to blurriest, so the measured blur rises along them: stop once the error
            # grows
            for kind, strength in SHARPNESS_STEPS:
                measured = [blur_sigma(np.clip(_sharpness_step(r, kind, strength), 0, 255).astype(np.uint8))
                            for r in resized]
                measured = [m for m in measured if m is not None]
                if not measured:
                    continue
                err = abs(float(np.median(measured)) - target)
                if best is not None and err > best[0] + 1e-6:
                    break
                if best is None or err < best[0] - 1e-6:
                    best, step = (err, (kind, strength)), (kind, strength)
        # the samples are enlarged from small, compressed frames: whatever grain they had is smoothed away, and
        # what the estimator would read in them is their own fine structure (teeth edges), so the portrait's whole
        # noise level is added as grain
        grain = self.look.noise
        return step, grain

    def texture(self, index: int) -> np.ndarray:
        """Sample ``index`` fitted to the portrait: (tex_h, tex_w, 3) float32, made at first use and kept."""
        tex = self._textures.get(index)
        if tex is None:
            sharpened = np.clip(_sharpness_step(self._resized(index), *self.sharpness), 0.0, 255.0)  # no overshoot
            tex = self._recolour(index, sharpened)
            tex = np.clip(tex, 0.0, 255.0).astype(np.float32)
            self._textures[index] = tex
        return tex

    def _grain(self, rows: np.ndarray, cols: np.ndarray, frame_index: int) -> np.ndarray:
        """Grain (n,) at pixel positions for a frame: a tile and an offset picked from the seed and the frame."""
        key = (self.seed * 1_000_003 + int(frame_index) * 7919) & 0xFFFFFFFF
        key = (key ^ (key >> 13)) * 0x5BD1E995 & 0xFFFFFFFF
        tile = self._grain_tiles[key % GRAIN_TILES]
        oy, ox = (key >> 8) % GRAIN_TILE_PX, (key >> 16) % GRAIN_TILE_PX
        return tile[(rows + oy) % GRAIN_TILE_PX, (cols + ox) % GRAIN_TILE_PX]

    # ---------------------------------------------------------------------------------------------- per frame
    def draw(self, out: np.ndarray, upper: np.ndarray, lower: np.ndarray, face_scale: float = 1.0,
             frame_index: int = 0) -> None:
        """Paint the mouth interior into ``out`` (RGB uint8, in place).

        ``upper`` and ``lower``: the inner-lip contours (K, 2) in pixels of ``out``, both from one corner to the
        other (same first and last point); the opening is the region between them. ``face_scale``: the face's
        current size relative to the portrait; ``frame_index`` picks the grain.
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
        # opening mask, antialiased at 1/16 px, softened as much as the portrait's own edges are (the feather)
        alpha = np.zeros((bh, bw), np.float32)
        local = poly - [bx0, by0]
        cv2.fillPoly(alpha, [np.round(local * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        alpha = cv2.GaussianBlur(alpha, (self._feather_px, self._feather_px), self.feather)
        inside = np.flatnonzero(alpha > 0.0)
        if not len(inside):
            return
        opacity = alpha.reshape(-1)[inside]
        rows, cols = np.divmod(inside, bw)

        # mouth axes: along (corner to corner) and across (down); mouth-normalised coordinates of every pixel
        a, b = upper[0], upper[-1]
        ax = b - a
        length = max(float(np.linalg.norm(ax)), 1e-3)
        ax = ax / length
        ay = np.array([-ax[1], ax[0]], np.float32)
        rx = (cols + bx0).astype(np.float32) - a[0]
        ry = (rows + by0).astype(np.float32) - a[1]
        pu = rx * ax[0] + ry * ax[1]
        pv = rx * ay[0] + ry * ay[1]
        uu, uv = (upper - a) @ ax, (upper - a) @ ay
        lu, lv = (lower - a) @ ax, (lower - a) @ ay
        ou, ol = np.argsort(uu), np.argsort(lu)
        v_up = np.interp(pu, uu[ou], uv[ou]).astype(np.float32)
        v_lo = np.interp(pu, lu[ol], lv[ol]).astype(np.float32)
        centre = 0.5 * length
        below_lip = pv - v_up
        height = np.maximum(v_lo - v_up, 0.5)
        v = _clip01(below_lip / height)
        x = _clip01(pu / length) * self.tex_w - 0.5

        # the sample(s) for this shape: opening at the centre and width, both relative to the rest mouth
        scale = max(face_scale, 1e-3)
        opening = float(np.interp(centre, lu[ol], lv[ol]) - np.interp(centre, uu[ou], uv[ou])) / length
        chosen = self.sampler.choose(max(opening, 0.0), length / (self.rest_width * scale))
        teeth = self.teeth
        if teeth is not None:
            # the portrait's own upper row covers the top of the opening: the sample goes below it, its own upper
            # teeth (down to upper_teeth_v) squeezed under the portrait's
            t_p = np.minimum((teeth.top_px + teeth.depth_px) * scale / height, 0.85).astype(np.float32)
        colour = np.zeros((3, len(inside)), np.float32)
        for index, weight in chosen:
            if teeth is not None:
                t_s = float(self.bank.upper_teeth_v[index])
                t_s = min(t_s + TEETH_HIDDEN_MARGIN, 0.6) if t_s > 0.0 else 0.0
                vs = np.where(v < t_p, v / np.maximum(t_p, 1e-3) * t_s,
                              t_s + (v - t_p) / np.maximum(1.0 - t_p, 1e-3) * (1.0 - t_s))
            else:
                vs = v
            y = vs * self.tex_h - 0.5
            coords = cv2.merge([x.reshape(1, -1), y.astype(np.float32).reshape(1, -1)])
            layer = cv2.remap(self.texture(index), coords, None, cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)[0].T
            colour += layer * weight if weight != 1.0 else layer

        grain_w: np.ndarray | float = 1.0
        if teeth is not None:
            tex_coords, real_w = teeth.sample(pu, below_lip, centre, scale)
            on = np.flatnonzero(real_w > 0.0)
            # the portrait's teeth carry its own grain (softened by the resampling): less is added there
            grain_w = 1.0 - TEETH_OWN_GRAIN * real_w
            if len(on):
                real_w, below_on = real_w[on], below_lip[on]
                lip_shadow = 0.78 + 0.22 * smoothstep(below_on / max(0.25 * teeth.depth_px * scale, 1.0))
                real = teeth.colour(tex_coords.take(on, axis=0)) * lip_shadow
                _composite(colour, on, real, real_w)

        if self.grain > 0.0:
            # a camera's noise grows with the light (shot noise): measured on the skin, weaker in the dark mouth
            level = np.sqrt(np.minimum(colour.mean(0) * self._inv_skin_luma, GRAIN_MAX_LEVEL))
            colour += self._grain(rows + by0, cols + bx0, frame_index) * (self.grain * grain_w * level)

        region = out[by0:by1, bx0:bx1]
        patch = np.ascontiguousarray(region)
        pixels = patch.reshape(-1)
        flat = inside * 3 + np.arange(3)[:, None]  # (3, n) indices of the channels of the opening's pixels
        blended = pixels.take(flat).astype(np.float32) * (1.0 - opacity) + colour * opacity
        pixels[flat] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        region[...] = patch

