"""A generated video against the real recording of the same speech, measured by an independent detector.

Given a video rendered from the audio of a real clip and the real clip itself, dlib's 68-point landmarks (not the
face mesh the generators use) are found in both, frame by frame, the real clip's frames taken at the generated
frames' times (the two frame rates differ; resampled on timestamps). Then:

- **mouth opening over time**: the inner-lip opening (over the eye distance) of the generated video against the real
  one's: Pearson correlation at the best lag within ``MAX_LAG_FRAMES``, and that lag (positive: generated later);
- **mouth-landmark error**: the generated face aligned onto the real one (a similarity on points speech does not
  move: eye corners, nose bridge and base), then the mean distance of the 20 mouth points, in eye distances;
- **SSIM of the aligned mouth crops**: the generated frame warped by that alignment, both frames cropped to the real
  mouth's box (grown by ``CROP_MARGIN_IOD``), grey, at ``CROP_SIZE_PX``, compared by SSIM (Gaussian window, the
  usual constants).

The generated video shows the person's head where its base footage has it, not where the real clip does; the
alignment takes that out, so what is left is the mouth's shape and look.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcast_bench.evaluation import FaceTracker, STILL_POINTS, iter_video_frames
from avatarcast_bench.face_landmarks68 import inter_ocular_px, mouth_openness, shared_landmarker

MAX_LAG_FRAMES = 5
MOUTH_POINTS = np.arange(48, 68)
CROP_MARGIN_IOD = 0.25
CROP_SIZE_PX = (96, 64)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two grey images of one size (Gaussian window, sigma 1.5; 8-bit constants)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s[5:-5, 5:-5].mean()) if min(s.shape) > 12 else float(s.mean())


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    if m is None:
        m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return m


def _landmarks(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    tracker = FaceTracker(shared_landmarker())
    return [tracker.update(f) for f in frames]


def _read(path: str | Path) -> tuple[list[np.ndarray], float]:
    it, fps, _size = iter_video_frames(path)
    return list(it), fps


def _paired_frames(generated: str | Path, real: str | Path) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """The generated video's frames, the real clip's frames at the generated frames' times (the frame rates
    differ: resampled on timestamps), and the generated frame rate."""
    gen, gen_fps = _read(generated)
    ref_all, ref_fps = _read(real)
    if not gen or not ref_all:
        raise ValueError("both videos need frames")
    ref = [ref_all[min(int(round(i / gen_fps * ref_fps)), len(ref_all) - 1)] for i in range(len(gen))]
    return gen, ref, gen_fps


def _best_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float | None, int | None]:
    best: tuple[float | None, int | None] = (None, None)
    for lag in range(-max_lag, max_lag + 1):  # a[i] against b[i - lag]: positive lag = a later
        if lag >= 0:
            x, y = a[lag:], b[:len(b) - lag]
        else:
            x, y = a[:lag], b[-lag:]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 10 or np.std(x[ok]) < 1e-9 or np.std(y[ok]) < 1e-9:
            continue
        c = float(np.corrcoef(x[ok], y[ok])[0, 1])
        if best[0] is None or c > best[0]:
            best = (c, lag)
    return best


@dataclass
class Comparison:
    opening_correlation: float | None
    opening_lag_frames: int | None
    landmark_error_iod: float | None
    mouth_ssim: float | None
    frames: int
    frames_measured: int
    fps: float
    opening_generated: list[float]
    opening_real: list[float]

    def to_dict(self, include_series: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("opening_") or k in
             ("opening_correlation", "opening_lag_frames")}
        if include_series:
            d["opening_generated"] = self.opening_generated
            d["opening_real"] = self.opening_real
        return d


def compare_to_real(generated: str | Path, real: str | Path, *, max_lag: int = MAX_LAG_FRAMES) -> Comparison:
    """Measure ``generated`` (rendered from ``real``'s audio) against ``real`` (see the module docstring)."""
    gen, ref, gen_fps = _paired_frames(generated, real)
    lm_gen = _landmarks(gen)
    lm_ref = _landmarks(ref)
    n = len(gen)
    open_gen = np.full(n, np.nan)
    open_ref = np.full(n, np.nan)
    errors, scores = [], []
    for i in range(n):
        g, r = lm_gen[i], lm_ref[i]
        if g is not None:
            open_gen[i] = mouth_openness(g)
        if r is not None:
            open_ref[i] = mouth_openness(r)
        if g is None or r is None:
            continue
        m = _similarity(g[STILL_POINTS], r[STILL_POINTS])
        g_on_r = g @ m[:, :2].T + m[:, 2]
        iod = max(inter_ocular_px(r), 1e-6)
        errors.append(float(np.linalg.norm(g_on_r[MOUTH_POINTS] - r[MOUTH_POINTS], axis=1).mean() / iod))
        x0, y0 = r[MOUTH_POINTS].min(0) - CROP_MARGIN_IOD * iod
        x1, y1 = r[MOUTH_POINTS].max(0) + CROP_MARGIN_IOD * iod
        h, w = ref[i].shape[:2]
        x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        if x1 - x0 < 8 or y1 - y0 < 8:
            continue
        warped = cv2.warpAffine(gen[i], m, (w, h), flags=cv2.INTER_LINEAR)
        a = cv2.resize(cv2.cvtColor(warped[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), CROP_SIZE_PX,
                       interpolation=cv2.INTER_AREA)
        b = cv2.resize(cv2.cvtColor(ref[i][y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), CROP_SIZE_PX,
                       interpolation=cv2.INTER_AREA)
        scores.append(ssim(a, b))
    corr, lag = _best_lag(open_gen, open_ref, max_lag)
    return Comparison(
        opening_correlation=None if corr is None else round(corr, 4), opening_lag_frames=lag,
        landmark_error_iod=round(float(np.mean(errors)), 4) if errors else None,
        mouth_ssim=round(float(np.mean(scores)), 4) if scores else None,
        frames=n, frames_measured=len(errors), fps=gen_fps,
        opening_generated=[None if not np.isfinite(v) else round(float(v), 4) for v in open_gen],
        opening_real=[None if not np.isfinite(v) else round(float(v), 4) for v in open_ref],
    )


def aligned_mouth_crops(video: str | Path, real: str | Path, frame_indices: list[int],
                        size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    """Colour mouth crops of ``video`` at ``frame_indices``, aligned onto the real clip's face (for picture grids)."""
    gen, ref, _fps = _paired_frames(video, real)
    crops = []
    tracker_g, tracker_r = FaceTracker(shared_landmarker()), FaceTracker(shared_landmarker())
    wanted = set(frame_indices)
    for i, (frame, r_frame) in enumerate(zip(gen, ref)):
        g, r = tracker_g.update(frame), tracker_r.update(r_frame)
        if i not in wanted or g is None or r is None:
            continue
        m = _similarity(g[STILL_POINTS], r[STILL_POINTS])
        iod = inter_ocular_px(r)
        c = r[MOUTH_POINTS].mean(0)
        half_w, half_h = 0.85 * iod, 0.64 * iod
        h, w = r_frame.shape[:2]
        warped = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR)
        x0, y0 = int(c[0] - half_w), int(c[1] - half_h)
        crop = warped[max(y0, 0):int(c[1] + half_h), max(x0, 0):int(c[0] + half_w)]
        crops.append(cv2.resize(crop, size, interpolation=cv2.INTER_AREA))
    return crops
