"""A dense, seamless image warp driven by the displacements of a few hundred control points.

At construction: the control points are triangulated (Delaunay), and every pixel of a low-resolution grid over the
warped region gets its triangle and barycentric weights, folded into one sparse matrix together with a smooth
falloff mask (1 over the head, 0 at the region border). Per frame: one sparse product gives the forward
displacement field on the grid, two Newton steps invert it (backward map, what ``cv2.remap`` needs), a bilinear
upscale gives the full-resolution map and ``cv2.remap`` resamples the part of the region that moves, strip by strip.
Because the field is exactly zero at the region border, the warped region drops back into the frame without a seam,
and a zero displacement is an exact identity (remap at integer coordinates copies pixels).

The per-frame arithmetic on the grid keeps the x and y components in separate planes: numpy is slow on arrays whose
innermost axis is only 2 or 4 long, OpenCV is not, so fields are interleaved only where OpenCV reads them.
"""

from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse
from scipy.spatial import Delaunay

from avatarcast.core.trajectory import smoothstep

FIELD_STEP_PX = 4
"""Spacing of the low-resolution displacement grid, in output pixels."""
SMOOTH_SIGMA_CELLS = 1.5
"""Blur of the head-motion part of the field, in grid cells."""
INVERSE_ITERATIONS = 2
"""Newton steps that turn the forward field into the backward map."""
STRIP_PX = 64
"""Height of the strips the region is resampled in: a strip's full-resolution map is upscaled from the grid, made
absolute and used by the remap while it is still in the CPU cache (a whole-region map is several MB at 1080p)."""
STILL_PX = 1.0 / 128
"""Backward displacements smaller than this leave a pixel exactly where it is: ``cv2.remap`` rounds source positions
to 1/32 px, so such a pixel would be a plain copy of the source, and the warp leaves it out of the resampling."""

_CENTRAL_DIFFERENCE = np.array([[-0.5, 0.0, 0.5]], np.float32)


def _gradients(field: np.ndarray) -> np.ndarray:
    """Derivatives of a (gh, gw, 2) field per grid step, as (gh, gw, 4): d/dx of both components, then d/dy.

    Central differences inside, one-sided ones on the outermost rows and columns: what ``np.gradient`` gives, and
    exactly so (halving is exact), but several times faster on a small grid.
    """
    gx = cv2.filter2D(field, -1, _CENTRAL_DIFFERENCE, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(field, -1, _CENTRAL_DIFFERENCE.T, borderType=cv2.BORDER_REPLICATE)
    gx[:, 0], gx[:, -1] = field[:, 1] - field[:, 0], field[:, -1] - field[:, -2]
    gy[0], gy[-1] = field[1] - field[0], field[-1] - field[-2]
    return cv2.merge([gx, gy])


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
        taper = smoothstep(taper)
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
        self._mask2 = np.repeat(self.mask[..., None], 2, axis=2)  # the mask for both field components
        # the grid sample positions per component, and the first sample's position
        offset = np.array([x0 + 0.5 * step - 0.5, y0 + 0.5 * step - 0.5], np.float32)
        self._grid_planes = (np.ascontiguousarray(self.grid_xy[..., 0]), np.ascontiguousarray(self.grid_xy[..., 1]))
        self._grid_offset = (offset[0], offset[1])
        # full-resolution identity grid for the region (absolute coordinates)
        fx = np.arange(x0, x1, dtype=np.float32)
        fy = np.arange(y0, y1, dtype=np.float32)
        fxx, fyy = np.meshgrid(fx, fy)
        self._identity = np.stack([fxx, fyy], -1)
        self._grid_to_lowres = np.float32(1.0 / step)

    def forward_field(self, displacement: np.ndarray, smooth_displacement: np.ndarray | None = None) -> np.ndarray:
        """Low-resolution forward displacement (gh, gw, 2) at the grid samples.

        ``smooth_displacement`` is added after a Gaussian blur of about one grid cell: used for head motion, whose
        projected mesh has neighbouring points at different depths (the silhouette), which would otherwise fold.
        """
        gh, gw = self.grid_shape
        if smooth_displacement is None:
            return (self.matrix @ displacement).astype(np.float32, copy=False).reshape(gh, gw, 2)
        # one sparse product for both parts
        both = (self.matrix @ np.hstack([displacement, smooth_displacement])).astype(np.float32, copy=False)
        fwd_x, fwd_y, head_x, head_y = cv2.split(both.reshape(gh, gw, 4))
        fwd = cv2.merge([fwd_x, fwd_y])
        fwd += cv2.GaussianBlur(cv2.merge([head_x, head_y]), (0, 0), SMOOTH_SIGMA_CELLS) * self._mask2
        return fwd

    def backward_field(self, fwd: np.ndarray) -> np.ndarray:
        """Low-resolution backward displacement (gh, gw, 2) from the forward one: output pixel + field = source."""
        return cv2.merge(self._backward_planes(fwd))

    def _backward_planes(self, fwd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backward displacement as its x and y planes (gh, gw) each."""
        # Newton steps on S + F(S) = X (S: source position of output pixel X), with the field's Jacobian; plain
        # fixed-point steps would stall where the warp squeezes a region shut (a blink, lips closing)
        grads = _gradients(fwd)
        grads *= np.float32(1.0 / self.step)  # full-res units
        fwd_x, fwd_y = cv2.split(fwd)
        grid_x, grid_y = self._grid_planes
        offset_x, offset_y = self._grid_offset
        back_x, back_y = -fwd_x, -fwd_y
        for _ in range(INVERSE_ITERATIONS):
            src_x = (grid_x + back_x - offset_x) * self._grid_to_lowres
            src_y = (grid_y + back_y - offset_y) * self._grid_to_lowres
            # residual r = S + F(S) - X = back + F(S); Jacobian J = I + dF = [[a, b], [c, d]]
            rx, ry = cv2.split(cv2.remap(fwd, src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                         borderValue=0))
            rx += back_x
            ry += back_y
            a, c, b, d = cv2.split(cv2.remap(grads, src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                             borderValue=0))
            a += 1.0
            d += 1.0
            det = a * d - b * c
            det = np.copysign(np.maximum(np.abs(det), 0.2), det)  # at least 0.2 in magnitude
            back_x -= (d * rx - b * ry) / det
            back_y -= (a * ry - c * rx) / det
        return back_x, back_y

    def _moving_cells(self, back_x: np.ndarray, back_y: np.ndarray) -> np.ndarray:
        """Grid cells (gh, gw) with pixels that the backward field moves by ``STILL_PX`` or more: the bilinear
        upscale of a pixel reads the samples of its own cell and of the neighbouring ones."""
        moving = ((np.abs(back_x) >= STILL_PX) | (np.abs(back_y) >= STILL_PX)).astype(np.uint8)
        return cv2.dilate(moving, np.ones((3, 3), np.uint8)) > 0

    def warp(self, source: np.ndarray, displacement: np.ndarray, out: np.ndarray,
             smooth_displacement: np.ndarray | None = None) -> None:
        """Warp ``source``'s region by the control-point ``displacement`` (N, 2) into the same region of ``out``.

        Only the pixels the field moves are resampled: toward the region border the head motion fades out, and a
        pixel displaced by less than ``STILL_PX`` stays a plain copy of the source. So ``out`` must already hold
        ``source``'s pixels in the region (start from a copy of ``source``).
        """
        x0, y0, x1, y1 = self.box
        gh, gw = self.grid_shape
        step = self.step
        back_x, back_y = self._backward_planes(self.forward_field(displacement, smooth_displacement))
        moving = self._moving_cells(back_x, back_y)
        moving_rows = np.flatnonzero(moving.any(axis=1))
        if not len(moving_rows):
            return
        dst = out[y0:y1, x0:x1]
        back = cv2.merge([back_x, back_y])
        # strip by strip, the cells that move are resampled. A strip upscales just the block of samples its
        # pixels read (one more cell on each side), which reproduces the upscale of the whole grid exactly when the
        # step is a power of two (the bilinear weights are then exact binary fractions); for other steps the whole
        # grid is upscaled, in one strip
        blocks = step & (step - 1) == 0
        cells_per_strip = max(1, STRIP_PX // step) if blocks else gh
        last_row = int(moving_rows[-1]) + 1
        for i in range(int(moving_rows[0]), last_row, cells_per_strip):
            i_end = min(i + cells_per_strip, last_row)
            cols = np.flatnonzero(moving[i:i_end].any(axis=0))
            if not len(cols):
                continue
            j, j_end = int(cols[0]), int(cols[-1]) + 1
            if blocks:
                si0, si1, sj0, sj1 = max(i - 1, 0), min(i_end + 1, gh), max(j - 1, 0), min(j_end + 1, gw)
            else:
                si0, si1, sj0, sj1 = 0, gh, 0, gw
            full = cv2.resize(back[si0:si1, sj0:sj1], ((sj1 - sj0) * step, (si1 - si0) * step),
                              interpolation=cv2.INTER_LINEAR)
            field = full[(i - si0) * step:(i_end - si0) * step, (j - sj0) * step:(j_end - sj0) * step]
            rows, columns = slice(i * step, i_end * step), slice(j * step, j_end * step)
            cv2.add(field, self._identity[rows, columns], dst=field)  # numpy is slow on such strided views
            cv2.remap(source, field, None, cv2.INTER_LINEAR, dst=dst[rows, columns], borderMode=cv2.BORDER_REPLICATE)


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
