"""Build the mouth bank shipped in avatarcast/assets/mouth_bank/ from real talking-face clips.

    python scripts/build_mouth_bank.py ../shared/data/video/grid/*.mpg -o avatarcast/assets/mouth_bank/mouth_bank.npz

Every frame of every clip is read with PyAV; the face is found with the project's own face mesh
(``detect_faces`` + ``face_landmarks``, 478 MediaPipe points). In each frame with an open mouth the inside of the
mouth (teeth, tongue, cavity) between the inner-lip contours (``LIPS_UPPER_INNER`` / ``LIPS_LOWER_INNER``) is
resampled onto a fixed grid in mouth-normalised coordinates: u across the mouth from one inner corner to the other,
v from the upper inner lip (0) to the lower inner lip (1), column by column. Each sample keeps its shape (opening at
the centre relative to the inner mouth width, width relative to the speaker's median width), where its teeth are,
and the colour of its lips and skin (so it can be recoloured to a portrait). A diverse set is kept: farthest-point
sampling in shape space, a few samples per speaker at most, never two neighbouring frames of one clip.

The GRID clips are from the GRID audio-visual speech corpus (Cooke, Barker, Cunningham, Shao, 2006;
Zenodo 10.5281/zenodo.3625687), CC BY 4.0: the bank is cut from them and ships with that credit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from avatarcast.face.mesh import detect_faces, face_landmarks  # noqa: E402
from avatarcast.generators.parametric.mouth_bank import (  # noqa: E402
    BANK_FORMAT_VERSION, GRID_U, GRID_V, lip_and_skin_rgb)
from avatarcast.generators.parametric.rig import LIPS_LOWER_INNER, LIPS_UPPER_INNER  # noqa: E402

MIN_OPENING = 0.12  # opening at the centre / inner mouth width: narrower slits hold too few source pixels
MIN_INNER_WIDTH_PX = 20.0
SAMPLES_PER_SPEAKER = 14
SAMPLES = 72
TRIM_ROWS = 40  # rows probed for lip colour at the contours
TRIM_MAX_TOP = 0.2  # at most this fraction of the opening is trimmed at the upper lip
TRIM_MAX_BOTTOM = 0.15
LIP_COLOUR_DISTANCE = 28.0  # RGB distance to the median lip colour below which a row is lip


def _mouth_frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    upper = lm[LIPS_UPPER_INNER, :2].astype(np.float64)
    a, b = upper[0], upper[-1]
    length = float(np.linalg.norm(b - a))
    ax = (b - a) / max(length, 1e-6)
    ay = np.array([-ax[1], ax[0]])
    return a, ax, ay, length


def _contour_v(lm: np.ndarray, idx: np.ndarray, a: np.ndarray, ax: np.ndarray, ay: np.ndarray, pu: np.ndarray):
    pts = lm[idx, :2].astype(np.float64) - a
    u, v = pts @ ax, pts @ ay
    o = np.argsort(u)
    return np.interp(pu, u[o], v[o])


def extract(frame: np.ndarray, lm: np.ndarray) -> dict | None:
    """The mouth interior of one frame on the (GRID_V, GRID_U) grid, with its shape and colours; None if closed."""
    a, ax, ay, length = _mouth_frame(lm)
    if length < MIN_INNER_WIDTH_PX:
        return None
    pu = (np.arange(GRID_U) + 0.5) / GRID_U * length
    v_up = _contour_v(lm, LIPS_UPPER_INNER, a, ax, ay, pu)
    v_lo = _contour_v(lm, LIPS_LOWER_INNER, a, ax, ay, pu)
    gap = np.maximum(v_lo - v_up, 0.0)
    opening = float(np.interp(0.5 * length, pu, gap)) / length
    if opening < MIN_OPENING:
        return None
    colours = lip_and_skin_rgb(frame, lm)  # for recolouring to a portrait
    if colours is None:
        return None
    lip_rgb, skin_rgb = colours

    def resample(t0: float, t1: float, rows: int) -> np.ndarray:
        t = t0 + (np.arange(rows) + 0.5) / rows * (t1 - t0)
        vv = v_up[None, :] + t[:, None] * gap[None, :]
        uu = np.broadcast_to(pu[None, :], vv.shape)
        mx = (a[0] + uu * ax[0] + vv * ay[0]).astype(np.float32)
        my = (a[1] + uu * ax[1] + vv * ay[1]).astype(np.float32)
        return cv2.remap(frame, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)

    # the inner-lip landmarks sit a little inside the lips' red: rows next to either contour that still have the
    # lip colour (across the middle of the mouth) are lip, not interior, and are trimmed off
    probe = resample(0.0, 1.0, TRIM_ROWS).astype(np.float32)
    centre = slice(GRID_U // 4, 3 * GRID_U // 4)
    lip_like = np.linalg.norm(probe[:, centre] - lip_rgb, axis=2).mean(1) < LIP_COLOUR_DISTANCE
    top = 0
    while top < TRIM_MAX_TOP * TRIM_ROWS and lip_like[top]:
        top += 1
    bottom = 0
    while bottom < TRIM_MAX_BOTTOM * TRIM_ROWS and lip_like[TRIM_ROWS - 1 - bottom]:
        bottom += 1
    t0, t1 = top / TRIM_ROWS, 1.0 - bottom / TRIM_ROWS
    if opening * (t1 - t0) < MIN_OPENING:  # the opening (between the landmarks) stays the sample's shape
        return None
    pixels = resample(t0, t1, GRID_V)
    # teeth: brighter than the lips and less saturated; where the upper row ends below the lip and the lower row
    # starts
    px = pixels.astype(np.float32)
    lum = px.mean(2)
    sat = (px.max(2) - px.min(2)) / np.maximum(px.max(2), 1.0)
    lip_lum = float(lip_rgb.mean())
    lip_sat = float((lip_rgb.max() - lip_rgb.min()) / max(lip_rgb.max(), 1.0))
    teeth = (lum > max(1.08 * lip_lum, 0.6 * float(np.percentile(lum, 98)))) & (sat < 0.85 * lip_sat)
    rows = teeth[:, centre].mean(1)
    upper_v = 0.0
    for r in range(GRID_V // 2):  # the first run of teeth rows from the upper lip down
        if rows[r] > 0.3:
            upper_v = (r + 1) / GRID_V
        elif upper_v > 0.0 or r > GRID_V // 6:
            break
    lower_v = 1.0
    for r in range(GRID_V - 1, GRID_V // 2, -1):
        if rows[r] > 0.3:
            lower_v = r / GRID_V
        elif lower_v < 1.0 or r < GRID_V - GRID_V // 6:
            break
    return {"pixels": pixels, "opening": opening, "width_px": length, "upper_teeth_v": upper_v,
            "lower_teeth_v": lower_v, "teeth": float(teeth.mean()), "lip_rgb": lip_rgb, "skin_rgb": skin_rgb}


def read_clip(path: Path) -> list[dict]:
    out = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            image = frame.to_ndarray(format="rgb24")
            faces = detect_faces(image)
            if len(faces) != 1:
                continue
            lm = face_landmarks(image, faces[0])
            sample = extract(image, lm)
            # the width of every face-found frame, open or not: the speaker's median width is the rest width
            out.append({"frame": index, "width_px": float(np.linalg.norm(lm[308, :2] - lm[78, :2])),
                        "sample": sample})
    return out


def select(candidates: list[dict], n: int, per_speaker: int) -> list[dict]:
    """Farthest-point sampling in shape space (opening, width, teeth), seeded with the widest opening."""
    feats = np.array([[c["opening"] / 0.1, np.log(c["width_ratio"]) / 0.08, c["teeth"] / 0.15] for c in candidates])
    chosen: list[int] = [int(np.argmax(feats[:, 0]))]
    dist = np.linalg.norm(feats - feats[chosen[0]], axis=1)
    while len(chosen) < min(n, len(candidates)):
        order = np.argsort(-dist)
        pick = None
        for i in order:
            c = candidates[i]
            same = [candidates[j] for j in chosen if candidates[j]["speaker"] == c["speaker"]]
            if len(same) >= per_speaker or dist[i] <= 0.0:
                continue
            if any(s["clip"] == c["clip"] and abs(s["frame"] - c["frame"]) < 2 for s in same):
                continue
            pick = int(i)
            break
        if pick is None:
            break
        chosen.append(pick)
        dist = np.minimum(dist, np.linalg.norm(feats - feats[pick], axis=1))
    return [candidates[i] for i in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("clips", nargs="+", type=Path, help="talking-face clips (one speaker per clip)")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "avatarcast/assets/mouth_bank/mouth_bank.npz")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="samples to keep")
    parser.add_argument("--per-speaker", type=int, default=SAMPLES_PER_SPEAKER,
                        help="at most this many samples from one speaker")
    args = parser.parse_args(argv)
    candidates: list[dict] = []
    speakers: list[str] = []
    for path in sorted(args.clips):
        frames = read_clip(path)
        if not frames:
            print(f"{path.name}: no face found, skipped", file=sys.stderr)
            continue
        rest_width = float(np.median([f["width_px"] for f in frames]))
        speaker = path.stem  # one GRID clip per speaker here; a clip name is the speaker's id
        speakers.append(speaker)
        kept = 0
        for f in frames:
            s = f["sample"]
            if s is None:
                continue
            s.update(speaker=speaker, clip=path.name, frame=f["frame"], width_ratio=s["width_px"] / rest_width)
            candidates.append(s)
            kept += 1
        print(f"{path.name}: {len(frames)} frames with a face, {kept} open-mouth candidates", file=sys.stderr)
    if not candidates:
        print("no open-mouth frames found", file=sys.stderr)
        return 1
    chosen = select(candidates, args.samples, args.per_speaker)
    chosen.sort(key=lambda c: (c["speaker"], c["frame"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.output,
        format_version=np.int32(BANK_FORMAT_VERSION),
        pixels=np.stack([c["pixels"] for c in chosen]).astype(np.uint8),
        opening=np.array([c["opening"] for c in chosen], np.float32),
        width_ratio=np.array([c["width_ratio"] for c in chosen], np.float32),
        width_px=np.array([c["width_px"] for c in chosen], np.float32),
        upper_teeth_v=np.array([c["upper_teeth_v"] for c in chosen], np.float32),
        lower_teeth_v=np.array([c["lower_teeth_v"] for c in chosen], np.float32),
        teeth=np.array([c["teeth"] for c in chosen], np.float32),
        lip_rgb=np.stack([c["lip_rgb"] for c in chosen]).astype(np.float32),
        skin_rgb=np.stack([c["skin_rgb"] for c in chosen]).astype(np.float32),
        speaker=np.array([speakers.index(c["speaker"]) for c in chosen], np.int16),
        speakers=np.array(speakers),
        source=np.array([f"{c['clip']}#{c['frame']}" for c in chosen]),
    )
    size_kb = args.output.stat().st_size / 1024
    print(f"{len(chosen)} samples from {len(set(c['speaker'] for c in chosen))} speakers "
          f"(openings {min(c['opening'] for c in chosen):.2f}..{max(c['opening'] for c in chosen):.2f}) "
          f"-> {args.output} ({size_kb:.0f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
