"""A dense, seamless image warp driven by the displacements of a few hundred control points.

At construction: the control points are triangulated (Delaunay), and every pixel of a low-resolution grid over the
warped region gets its triangle and barycentric weights, folded into one sparse matrix together with a smooth
falloff mask (1 over the head, 0 at the region border). Per frame: one sparse product gives the forward
displacement field on the grid, two fixed-point steps invert it (backward map, what ``cv2.remap`` needs), one
bilinear upscale gives the full-resolution map and one ``cv2.remap`` warps the region. Because the field is exactly
zero at the region border, the warped region drops back into the frame without a seam, and a zero displacement is
an exact identity (remap at integer coordinates copies pixels).
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse
from scipy.spatial import Delaunay

FIELD_STEP_PX = 4
"""Spacing of the low-resolution displacement grid, in output pixels."""
SMOOTH_SIGMA_CELLS = 1.5
"""Blur of the head-motion part of the field, in grid cells."""
INVERSE_ITERATIONS = 2
"""Newton steps that turn the forward field into the backward map."""


class RegionWarp:
    """Warps a rectangular region of an image according to control-point displacements.

    ``points``: (N, 2) control-point positions at rest (output pixels); the region is their bounding box, clipped to
    the image. ``head_polygon``: the area that moves fully; the displacement fades smoothly from it to exactly zero
    at the region border.
    """

    def __init__(self, points: np.ndarray, head_polygon: np.ndarray, image_size: tuple[int, int],
                 step_px: int = FIELD_STEP_PX) -> None:
        w_img, h_img = image_size
        pts = np.asarray(points, np.float32)
        step = int(step_px)
        x0 = max(int(np.floor(pts[:, 0].min())), 0)
        y0 = max(int(np.floor(pts[:, 1].min())), 0)
        x1 = min(int(np.ceil(pts[:, 0].max())) + 1, w_img)
        y1 = min(int(np.ceil(pts[:, 1].max())) + 1, h_img)
        # the region is a whole number of grid cells (shrink it toward the image if needed)
        gw, gh = max((x1 - x0) // step, 2), max((y1 - y0) // step, 2)
        x1, y1 = min(x0 + gw * step, w_img), min(y0 + gh * step, h_img)
        gw, gh = (x1 - x0) // step, (y1 - y0) // step
        x1, y1 = x0 + gw * step, y0 + gh * step
        self.box = (x0, y0, x1, y1)
        self.step = step
        self.grid_shape = (gh, gw)
        # grid sample j sits at the centre of its cell: full-res x = x0 + (j + 0.5) * step - 0.5 (cv2.resize's
        # convention, so a bilinear upscale by `step` lands each sample back on its position)
        gx = x0 + (np.arange(gw, dtype=np.float32) + 0.5) * step - 0.5
        gy = y0 + (np.arange(gh, dtype=np.float32) + 0.5) * step - 0.5
        gxx, gyy = np.meshgrid(gx, gy)
        self.grid_xy = np.stack([gxx, gyy], -1).astype(np.float32)  # (gh, gw, 2) full-res coordinates

        # the falloff mask on the grid: 1 inside the head polygon, smooth to 0 at the region border
        mask = np.zeros((gh, gw), np.float32)
        poly = (np.asarray(head_polygon, np.float32) - [x0 + 0.5 * step - 0.5, y0 + 0.5 * step - 0.5]) / step
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=4)
        spread = max(1.0, 0.08 * min(gw, gh))
        mask = cv2.GaussianBlur(mask, (0, 0), spread)
        mask = np.maximum(mask, cv2.GaussianBlur((mask > 0.98).astype(np.float32), (0, 0), spread * 0.5))
        border = np.minimum.outer(np.minimum(np.arange(gh), np.arange(gh)[::-1]),
                                  np.minimum(np.arange(gw), np.arange(gw)[::-1])).astype(np.float32)
        ramp = max(3.0, 0.12 * min(gw, gh))
        taper = np.clip((border - 1.0) / ramp, 0.0, 1.0)  # exactly 0 on the two outermost grid rows/columns
        taper = taper * taper * (3 - 2 * taper)
        self.mask = (np.clip(mask, 0.0, 1.0) * taper).astype(np.float32)

        # barycentric weights of every grid sample in the triangulation of the control points + region corners
        corners = np.array([[x0 - step, y0 - step], [x1 + step, y0 - step], [x1 + step, y1 + step],
                            [x0 - step, y1 + step]], np.float32)
        all_pts = np.concatenate([pts, corners]).astype(np.float64)
        tri = Delaunay(all_pts)
        q = self.grid_xy.reshape(-1, 2).astype(np.float64)
        simplex = tri.find_simplex(q)
        valid = simplex >= 0
        t = tri.transform[simplex]
        b2 = np.einsum("nij,nj->ni", t[:, :2], q - t[:, 2])
        bary = np.column_stack([b2, 1.0 - b2.sum(1)])
        verts = tri.simplices[simplex]
        weights = bary * self.mask.reshape(-1)[:, None] * valid[:, None]
        n_pts = len(pts)
        keep = verts < n_pts  # the corners carry zero displacement
        rows = np.repeat(np.arange(len(q)), 3).reshape(-1, 3)
        self.matrix = scipy.sparse.csr_matrix(
            (weights[keep].astype(np.float32), (rows[keep], verts[keep])), shape=(len(q), n_pts))
        self.n_points = n_pts
        # full-resolution identity grid for the region (absolute coordinates)
        fx = np.arange(x0, x1, dtype=np.float32)
        fy = np.arange(y0, y1, dtype=np.float32)
        fxx, fyy = np.meshgrid(fx, fy)
        self._identity = np.stack([fxx, fyy], -1)
        self._map = np.empty_like(self._identity)
        self._grid_to_lowres = np.float32(1.0 / step)

    def forward_field(self, displacement: np.ndarray, smooth_displacement: np.ndarray | None = None) -> np.ndarray:
        """Low-resolution forward displacement (gh, gw, 2) at the grid samples.

        ``smooth_displacement`` is added after a Gaussian blur of about one grid cell: used for head motion, whose
        projected mesh has neighbouring points at different depths (the silhouette), which would otherwise fold.
        """
        gh, gw = self.grid_shape
        fwd = (self.matrix @ displacement).astype(np.float32).reshape(gh, gw, 2)
        if smooth_displacement is not None:
            head = (self.matrix @ smooth_displacement).astype(np.float32).reshape(gh, gw, 2)
            fwd += cv2.GaussianBlur(head, (0, 0), SMOOTH_SIGMA_CELLS) * self.mask[..., None]
        return fwd

    def backward_field(self, fwd: np.ndarray) -> np.ndarray:
        """Low-resolution backward displacement (gh, gw, 2) from the forward one: output pixel + field = source."""
        step = self.step
        x0, y0 = self.box[:2]
        offset = np.array([x0 + 0.5 * step - 0.5, y0 + 0.5 * step - 0.5], np.float32)
        # Newton steps on S + F(S) = X (S: source position of output pixel X), with the field's Jacobian; plain
        # fixed-point steps would stall where the warp squeezes a region shut (a blink, lips closing)
        gx = np.empty_like(fwd)
        gy = np.empty_like(fwd)
        gx[:, 1:-1] = 0.5 * (fwd[:, 2:] - fwd[:, :-2])
        gx[:, 0], gx[:, -1] = fwd[:, 1] - fwd[:, 0], fwd[:, -1] - fwd[:, -2]
        gy[1:-1] = 0.5 * (fwd[2:] - fwd[:-2])
        gy[0], gy[-1] = fwd[1] - fwd[0], fwd[-1] - fwd[-2]
        grads = np.concatenate([gx, gy], axis=2) * np.float32(1.0 / step)  # dF/dx, dF/dy (full-res units)
        back = -fwd
        for _ in range(INVERSE_ITERATIONS):
            src = (self.grid_xy + back - offset) * self._grid_to_lowres
            f = cv2.remap(fwd, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
            g = cv2.remap(grads, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
            # residual r = S + F(S) - X = back + F(S); Jacobian J = I + dF
            rx, ry = back[..., 0] + f[..., 0], back[..., 1] + f[..., 1]
            a, b = 1.0 + g[..., 0], g[..., 2]  # 1 + d(Fx)/dx, d(Fx)/dy
            c, d = g[..., 1], 1.0 + g[..., 3]  # d(Fy)/dx, 1 + d(Fy)/dy
            det = a * d - b * c
            det = np.where(np.abs(det) < 0.2, np.copysign(0.2, det), det)
            back[..., 0] -= (d * rx - b * ry) / det
            back[..., 1] -= (a * ry - c * rx) / det
        return back

    def warp(self, source: np.ndarray, displacement: np.ndarray, out: np.ndarray,
             smooth_displacement: np.ndarray | None = None) -> None:
        """Warp ``source``'s region by the control-point ``displacement`` (N, 2) into the same region of ``out``."""
        x0, y0, x1, y1 = self.box
        back = self.backward_field(self.forward_field(displacement, smooth_displacement))
        full = cv2.resize(back, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        np.add(self._identity, full, out=self._map)
        cv2.remap(source, self._map, None, cv2.INTER_LINEAR, dst=out[y0:y1, x0:x1],
                  borderMode=cv2.BORDER_REPLICATE)


def piecewise_affine(image: np.ndarray, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Exact triangle-by-triangle warp of ``image`` for the triangles whose corners moved (a one-off edit).

    Each destination triangle is filled from its source triangle by the affine map between them; triangles that
    collapse to (near) zero area vanish, which is how an open mouth is closed once at construction.
    """
    out = image.copy()
    h, w = image.shape[:2]
    moved = np.linalg.norm(dst - src, axis=1) > 1e-3
    for tri in triangles[moved[triangles].any(1)]:
        s, d = src[tri].astype(np.float32), dst[tri].astype(np.float32)
        area = 0.5 * abs((d[1, 0] - d[0, 0]) * (d[2, 1] - d[0, 1]) - (d[2, 0] - d[0, 0]) * (d[1, 1] - d[0, 1]))
        if area < 0.25:
            continue
        x0, y0 = max(int(np.floor(d[:, 0].min())), 0), max(int(np.floor(d[:, 1].min())), 0)
        x1, y1 = min(int(np.ceil(d[:, 0].max())) + 1, w), min(int(np.ceil(d[:, 1].max())) + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        m = cv2.getAffineTransform((d - [x0, y0]).astype(np.float32), s)  # destination patch -> source image
        patch = cv2.warpAffine(image, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(mask, np.round((d - [x0, y0]) * 16).astype(np.int32), 255, cv2.LINE_AA, shift=4)
        a = (mask.astype(np.float32) / 255.0)[..., None]
        region = out[y0:y1, x0:x1]
        region[...] = (region * (1 - a) + patch * a + 0.5).astype(np.uint8)
    return out
