"""The mouth bank: real mouth interiors (teeth, tongue, cavity) cut from talking-face footage, and the choice of one
for a mouth shape.

The bank shipped in ``avatarcast/assets/mouth_bank/`` is built by ``scripts/build_mouth_bank.py`` from the GRID
audio-visual speech corpus (Cooke, Barker, Cunningham, Shao, 2006; Zenodo 10.5281/zenodo.3625687; CC BY 4.0); its
README there has the provenance. Each sample is the inside of one open mouth resampled onto a (``GRID_V``,
``GRID_U``) grid in mouth-normalised coordinates: u across the mouth from one inner corner to the other, v from the
upper inner lip (0) to the lower inner lip (1). With it: the mouth's shape (opening at the centre relative to the
inner mouth width; width relative to the speaker's rest width: above 1 spread, below 1 rounded), where its upper
teeth end and its lower teeth start (in v), how much of it is teeth, and its lips' and skin's colour.

``MouthSampler`` picks samples for a shape. The choice is a function of the shape alone, not of the frames shown
before: sub-clips are rendered independently (in parallel workers) and a frame must not depend on its history. It
is still coherent over time: one speaker's samples are preferred per portrait (the teeth keep their identity), a
sample is kept over the cell of shapes nearest to it (a small change of shape keeps the sample), and near the
boundary between cells the samples are cross-faded over a band instead of switched, so the interior changes
continuously as the shape does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarcast.core.errors import MissingDependencyError
from avatarcast.generators.parametric.rig import LIPS_LOWER_INNER, LIPS_LOWER_OUTER, LIPS_UPPER_INNER, LIPS_UPPER_OUTER

BANK_FORMAT_VERSION = 1
GRID_U = 80  # samples across the mouth (corner to corner)
GRID_V = 40  # samples from the upper to the lower inner lip
BANK_PATH = Path(__file__).resolve().parents[2] / "assets" / "mouth_bank" / "mouth_bank.npz"

# shape-space scales: a difference of one unit is "clearly another shape"
OPENING_SCALE = 0.06  # opening / inner mouth width
WIDTH_SCALE = 0.10  # log(width / rest width)
OTHER_SPEAKER_PENALTY = 1.2  # another speaker's sample is used only where it is this much closer in shape
BLEND_BAND = 0.25  # samples within this distance of the nearest one's are cross-faded in (near cell boundaries)
SKIN_POINTS = (205, 425, 50, 280, 199, 18, 200)  # cheeks beside the mouth and the chin: face-mesh landmark ids


def lip_and_skin_rgb(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Median RGB of the lips (between the inner and outer lip contours) and of the skin beside and below the
    mouth, in an image with its 478 face-mesh landmarks; None when the lips cover too few pixels."""
    h, w = image.shape[:2]
    lm = np.asarray(landmarks, np.float32)
    outer = np.concatenate([lm[LIPS_UPPER_OUTER, :2], lm[LIPS_LOWER_OUTER[::-1], :2]])
    inner = np.concatenate([lm[LIPS_UPPER_INNER, :2], lm[LIPS_LOWER_INNER[::-1], :2]])
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(outer).astype(np.int32)], 1)
    cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], 0)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
    if mask.sum() < 20:
        return None
    lip = np.median(image[mask > 0].astype(np.float32), axis=0)
    skin = []
    for i in SKIN_POINTS:
        x, y = np.round(lm[i, :2]).astype(int)
        if 2 <= x < w - 2 and 2 <= y < h - 2:
            skin.append(image[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3))
    if not skin:
        return None
    return lip, np.median(np.concatenate(skin).astype(np.float32), axis=0)


@dataclass(frozen=True)
class MouthBank:
    """Samples of real mouth interiors (see the module docstring); arrays indexed by sample."""

    pixels: np.ndarray  # (n, GRID_V, GRID_U, 3) uint8 RGB
    opening: np.ndarray  # (n,) opening at the centre / inner mouth width
    width_ratio: np.ndarray  # (n,) inner mouth width / the speaker's rest width
    width_px: np.ndarray  # (n,) inner mouth width in the source footage (its resolution)
    upper_teeth_v: np.ndarray  # (n,) where the upper teeth end below the upper lip (0: none shown)
    lower_teeth_v: np.ndarray  # (n,) where the lower teeth start above the lower lip (1: none shown)
    teeth: np.ndarray  # (n,) fraction of the interior that is teeth
    lip_rgb: np.ndarray  # (n, 3) median lip colour around the opening
    skin_rgb: np.ndarray  # (n, 3) median skin colour beside and below the mouth
    speaker: np.ndarray  # (n,) speaker index
    source: tuple[str, ...]  # (n,) clip#frame each sample was cut from

    def __len__(self) -> int:
        return len(self.opening)


def load_mouth_bank(path: str | Path | None = None) -> MouthBank:
    """The bank at ``path`` (default: the one shipped with the package), loaded once per path."""
    return _load(str(Path(path) if path is not None else BANK_PATH))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> MouthBank:
    if not Path(path).is_file():
        raise MissingDependencyError(f"mouth bank missing: {path}; reinstall avatarcast (or rebuild it with "
                                     "scripts/build_mouth_bank.py)")
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format_version"])
        if version != BANK_FORMAT_VERSION:
            raise MissingDependencyError(f"mouth bank {path} has format version {version}, this avatarcast reads "
                                         f"{BANK_FORMAT_VERSION}; rebuild it with scripts/build_mouth_bank.py")
        pixels = z["pixels"]
        if pixels.ndim != 4 or pixels.shape[1:] != (GRID_V, GRID_U, 3) or pixels.dtype != np.uint8:
            raise MissingDependencyError(f"mouth bank {path} holds samples of shape {pixels.shape[1:]}, "
                                         f"expected {(GRID_V, GRID_U, 3)}; rebuild it")
        arrays = {k: z[k].astype(np.float32) for k in ("opening", "width_ratio", "width_px", "upper_teeth_v",
                                                       "lower_teeth_v", "teeth", "lip_rgb", "skin_rgb")}
        bank = MouthBank(pixels=pixels, speaker=z["speaker"].astype(np.int32),
                         source=tuple(str(s) for s in z["source"]), **arrays)
    for a in (pixels, bank.speaker, *arrays.values()):
        a.setflags(write=False)
    return bank


def shape_features(opening: np.ndarray | float, width_ratio: np.ndarray | float) -> np.ndarray:
    """Points in shape space (..., 2) where a distance of 1 is a clearly different mouth shape."""
    o = np.asarray(opening, np.float64) / OPENING_SCALE
    w = np.log(np.maximum(np.asarray(width_ratio, np.float64), 1e-3)) / WIDTH_SCALE
    return np.stack(np.broadcast_arrays(o, w), -1)


class MouthSampler:
    """Picks bank samples for a mouth shape: stateless, preferring one speaker (see the module docstring)."""

    def __init__(self, bank: MouthBank, speaker: int | None = None) -> None:
        self.bank = bank
        self.points = shape_features(bank.opening, bank.width_ratio)
        self.speaker = self.best_speaker(bank) if speaker is None else int(speaker)
        self.penalty = np.where(bank.speaker == self.speaker, 0.0, OTHER_SPEAKER_PENALTY)

    @staticmethod
    def best_speaker(bank: MouthBank) -> int:
        """The speaker whose samples cover the widest range of shapes (openings in steps of a shape unit, widths),
        the most samples breaking ties, then the lowest index."""
        best, best_key = 0, None
        for s in np.unique(bank.speaker):
            sel = bank.speaker == s
            cells = {(int(o), int(w)) for o, w in np.floor(shape_features(bank.opening[sel],
                                                                          bank.width_ratio[sel]) / 1.5)}
            key = (len(cells), float(bank.opening[sel].max()), int(sel.sum()), -int(s))
            if best_key is None or key > best_key:
                best, best_key = int(s), key
        return best

    def choose(self, opening: float, width_ratio: float) -> list[tuple[int, float]]:
        """``(sample index, weight)`` pairs, weights summing to 1, nearest first, for the shape: the nearest sample,
        and those within ``BLEND_BAND`` of its distance, each weighted by how close it comes (a continuous function
        of the shape: a sample fades in and out, it never jumps)."""
        d = np.linalg.norm(self.points - shape_features(opening, width_ratio), axis=1) + self.penalty
        margin = d - float(d.min())
        near = np.flatnonzero(margin < BLEND_BAND)
        near = near[np.argsort(margin[near], kind="stable")]
        k = (1.0 - margin[near] / BLEND_BAND) ** 2
        k = k / k.sum()
        return [(int(i), float(w)) for i, w in zip(near, k)]
