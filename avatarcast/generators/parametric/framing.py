"""Framing: fit a portrait to an output size ("cover", centred on the face) once, before any frame is rendered.

The renderer works entirely in output pixels: the portrait is scaled and cropped to the output size at construction,
and the landmarks are mapped with the same transform, so per-frame work never touches the full-size portrait.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FACE_HEIGHT_TARGET_FRACTION = 0.30
"""Zoom in (beyond "cover") until the face is at least this fraction of the output height."""
MAX_UPSCALE = 4.0
"""Never enlarge the portrait more than this (beyond it the face is a blur)."""
FACE_CENTRE_Y_LANDSCAPE = 0.40
"""Face centre height as a fraction of the output height for landscape outputs (head in the upper-middle third)."""
FACE_CENTRE_Y_PORTRAIT = 0.45
"""The same for square and portrait-orientation outputs."""


@dataclass(frozen=True)
class Framing:
    """The similarity transform from portrait pixels to output pixels: ``out = portrait * scale + offset``."""

    scale: float
    offset_x: float
    offset_y: float
    size: tuple[int, int]  # (width, height)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` or ``(N, 3)`` portrait coordinates to output coordinates (z is scaled like x and y)."""
        out = np.asarray(points, np.float32) * np.float32(self.scale)
        out[:, 0] += self.offset_x
        out[:, 1] += self.offset_y
        return out


def plan_framing(image_size: tuple[int, int], face_box: tuple[float, float, float, float],
                 size: tuple[int, int]) -> Framing:
    """Choose the scale and crop: cover the output, centre the face, zoom in on a small face.

    ``image_size`` and ``size`` are ``(width, height)``; ``face_box`` is ``(x0, y0, x1, y1)`` in portrait pixels.
    """
    img_w, img_h = image_size
    out_w, out_h = size
    fx0, fy0, fx1, fy1 = face_box
    face_h = max(fy1 - fy0, 1.0)
    cover = max(out_w / img_w, out_h / img_h)
    zoom = FACE_HEIGHT_TARGET_FRACTION * out_h / face_h
    scale = max(cover, min(zoom, MAX_UPSCALE))
    cx, cy = 0.5 * (fx0 + fx1), 0.5 * (fy0 + fy1)
    centre_y = FACE_CENTRE_Y_LANDSCAPE if out_w > out_h else FACE_CENTRE_Y_PORTRAIT
    # offset so that the face centre lands at (out_w / 2, centre_y * out_h), clamped so the crop stays on the image
    ox = out_w / 2 - cx * scale
    oy = centre_y * out_h - cy * scale
    ox = float(np.clip(ox, out_w - img_w * scale, 0.0))
    oy = float(np.clip(oy, out_h - img_h * scale, 0.0))
    return Framing(scale=float(scale), offset_x=round(ox), offset_y=round(oy), size=(int(out_w), int(out_h)))


def frame_image(image: np.ndarray, framing: Framing) -> np.ndarray:
    """Render the framed portrait at the output size (area filtering when shrinking, bicubic when enlarging)."""
    out_w, out_h = framing.size
    s = framing.scale
    if s < 1.0:
        # shrink the whole portrait with area averaging (no aliasing), then shift by the integer offset
        small = cv2.resize(image, (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s))),
                           interpolation=cv2.INTER_AREA)
        # small pixel j holds portrait coordinate (j + 0.5) / sx - 0.5; output x = portrait x * s + offset
        sx = small.shape[1] / image.shape[1]
        sy = small.shape[0] / image.shape[0]
        m = np.float32([[s / sx, 0, framing.offset_x + 0.5 * s / sx - 0.5 * s],
                        [0, s / sy, framing.offset_y + 0.5 * s / sy - 0.5 * s]])
        return cv2.warpAffine(small, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    m = np.float32([[s, 0, framing.offset_x], [0, s, framing.offset_y]])
    return cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
