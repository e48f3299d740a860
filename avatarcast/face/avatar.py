"""Avatar preparation: a portrait becomes an ``Avatar`` (image, 478-point face mesh, head pose, regions, warp mesh).

Preparation runs once per portrait (``avatarcast prepare``) and is saved as a small folder that loads in
milliseconds::

    AVATAR_DIR/
        avatar.json    format name and version, source, image size, face box, head pose
        image.png      the portrait (RGB), scaled so that its longest side <= MAX_IMAGE_SIDE_PX
        arrays.npz     landmarks (478, 3) float32, triangles (T, 3) int32, one index array per region

Policies (each one tested):

- **Several faces**: the largest is used by default and a warning names the count; ``face_index`` picks one,
  counting from the left (0 = leftmost).
- **No face**: ``FaceError`` saying so, with what a usable portrait looks like.
- **Small faces**: a face whose detection box is under ``MIN_FACE_SIZE_PX`` pixels is refused (the renderer warps
  the portrait itself, so a tiny face would look blurry, and the mesh gets unreliable); an image too small to hold
  such a face is refused before detection. Both messages state the minimum in pixels.
- **Huge images** are scaled down so the longest side is ``MAX_IMAGE_SIDE_PX``; landmarks refer to the scaled image.
- **A face cut by the image edge** (e.g. a tight crop through the cheek) is accepted with a warning when the mesh
  is still usable: both eyes and the mouth inside the image (a corner may overhang by up to
  ``FEATURE_OVERHANG_FRACTION`` of the feature's size) and at most ``MAX_FACE_OUTSIDE_FRACTION`` of the face
  oval's area outside it. The mesh then extends past the edge; the renderer only needs the pixels that exist, and
  the cut side simply does not move. A face cut deeper than that (through an eye or the mouth, or mostly outside)
  is refused with a ``FaceError`` that says what is cut.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import Delaunay, cKDTree

from avatarcast.core.errors import FaceError, InputError
from avatarcast.face import mesh as face_mesh
from avatarcast.face.mesh import LEFT_EYE_CONTOUR, LEFT_IRIS, RIGHT_EYE_CONTOUR, RIGHT_IRIS, FaceDetection

logger = logging.getLogger(__name__)

AVATAR_FORMAT = "avatarcast-avatar"
AVATAR_FORMAT_VERSION = 1
MAX_IMAGE_FILE_BYTES = 50 * 1024 * 1024
"""Largest portrait file read (checked before reading it)."""
MAX_IMAGE_PIXELS = 50_000_000
"""Most pixels a portrait may have (read from the file's header, checked before decoding: a small file can declare
a huge image)."""
MAX_IMAGE_SIDE_PX = 2048
MIN_FACE_SIZE_PX = 64
"""The smallest accepted face: the longer side of the detection box (about brow to chin), in pixels."""
MAX_FACE_OUTSIDE_FRACTION = 0.25
"""A face cut by the image edge is accepted (with a warning) while at most this share of its oval is outside."""
FEATURE_OVERHANG_FRACTION = 0.1
"""An eye or the mouth counts as cut off when it extends beyond the image edge by more than this share of its size
(a corner a few pixels outside is harmless)."""
DEFAULT_PORTRAIT = Path(__file__).resolve().parents[1] / "assets" / "default_portrait.png"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# ---------------------------------------------------------------------------------------------------------------
# Regions of the MediaPipe face mesh (left/right = the subject's). Rings are in polygon order.
# ---------------------------------------------------------------------------------------------------------------

MOUTH_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
MOUTH_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
             176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
JAW = (93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323)
NOSE = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 294, 278, 344, 440, 275, 45, 220, 115, 48, 64)

REGIONS: dict[str, tuple[int, ...]] = {
    "face_oval": FACE_OVAL,
    "mouth_outer": MOUTH_OUTER,
    "mouth_inner": MOUTH_INNER,
    "left_eye": LEFT_EYE_CONTOUR,
    "right_eye": RIGHT_EYE_CONTOUR,
    "left_brow": LEFT_BROW,
    "right_brow": RIGHT_BROW,
    "left_iris": LEFT_IRIS,
    "right_iris": RIGHT_IRIS,
    "nose": NOSE,
    "jaw": JAW,
}

# Openings the warp mesh must not bridge: (ring, indices of the two corners in the ring).
_OPENINGS = ((MOUTH_INNER, (78, 308)), (RIGHT_EYE_CONTOUR, (33, 133)), (LEFT_EYE_CONTOUR, (362, 263)))


@dataclass
class Avatar:
    """A prepared portrait: everything a generator needs to animate it (see the module docstring)."""

    image: np.ndarray  # RGB uint8 (H, W, 3), longest side <= MAX_IMAGE_SIDE_PX
    landmarks: np.ndarray  # (478, 3) float32, image pixels; z in pixel scale, smaller = closer to the camera
    face_box: tuple[int, int, int, int]  # x0, y0, x1, y1: the mesh's bounding box, clipped to the image
    head_pose_deg: tuple[float, float, float]  # yaw, pitch, roll (AvatarState conventions)
    regions: dict[str, np.ndarray]  # name -> landmark indices
    triangles: np.ndarray  # (T, 3) int32 warp mesh; never bridges the mouth or the eye openings
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the image."""
        return (int(self.image.shape[1]), int(self.image.shape[0]))

    def save(self, folder: str | Path) -> None:
        """Write the avatar folder (created if needed; the three files are overwritten)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"cannot write the avatar to {folder}: it exists and is not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ok, png = cv2.imencode(".png", cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:  # pragma: no cover - encoding an RGB uint8 array does not fail
                raise InputError("could not encode the avatar image as PNG")
            (folder / "image.png").write_bytes(png.tobytes())
            arrays = {"landmarks": self.landmarks.astype(np.float32), "triangles": self.triangles.astype(np.int32)}
            arrays.update({f"region_{k}": np.asarray(v, np.int32) for k, v in self.regions.items()})
            np.savez(folder / "arrays.npz", **arrays)
            meta = {
                "format": AVATAR_FORMAT,
                "format_version": AVATAR_FORMAT_VERSION,
                "source": self.source,
                "image_size": list(self.size),
                "face_box": [int(v) for v in self.face_box],
                "head_pose_deg": {k: round(float(v), 3) for k, v in zip(("yaw", "pitch", "roll"),
                                                                        self.head_pose_deg)},
                "num_landmarks": int(len(self.landmarks)),
                "num_triangles": int(len(self.triangles)),
            }
            (folder / "avatar.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write the avatar to {folder}: {exc.strerror or exc}") from exc

    @classmethod
    def load(cls, folder: str | Path) -> "Avatar":
        """Read an avatar folder written by ``save``; ``InputError`` if it is missing, foreign or damaged."""
        folder = Path(folder)
        meta_path = folder / "avatar.json"
        if not meta_path.is_file():
            raise InputError(f"{folder} is not an avatar folder (no avatar.json); create one with "
                             "`avatarcast prepare PORTRAIT -o FOLDER`, or pass the portrait image itself")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {meta_path}: {exc}; prepare the avatar again") from exc
        if not isinstance(meta, dict) or meta.get("format") != AVATAR_FORMAT:
            raise InputError(f"{meta_path} is not an avatarcast avatar description; prepare the avatar again")
        version = meta.get("format_version")
        if version != AVATAR_FORMAT_VERSION:
            raise InputError(f"{folder} uses avatar format version {version}, this avatarcast reads version "
                             f"{AVATAR_FORMAT_VERSION}; prepare the avatar again with `avatarcast prepare`")
        try:
            image = _decode_image((folder / "image.png").read_bytes(), folder / "image.png")
            with np.load(folder / "arrays.npz") as npz:
                landmarks = npz["landmarks"].astype(np.float32)
                triangles = npz["triangles"].astype(np.int32)
                regions = {k[len("region_"):]: npz[k].astype(np.int32) for k in npz.files if k.startswith("region_")}
            pose = meta["head_pose_deg"]
            avatar = cls(image=image, landmarks=landmarks, face_box=tuple(int(v) for v in meta["face_box"]),
                         head_pose_deg=(float(pose["yaw"]), float(pose["pitch"]), float(pose["roll"])),
                         regions=regions, triangles=triangles, source=str(meta.get("source", str(folder))))
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"the avatar folder {folder} is incomplete or damaged ({exc}); "
                             "prepare the avatar again") from exc
        if landmarks.shape != (face_mesh.NUM_LANDMARKS, 3) or triangles.ndim != 2 or triangles.shape[1] != 3 \
                or list(avatar.size) != list(meta.get("image_size", [])) or set(regions) != set(REGIONS):
            raise InputError(f"the avatar folder {folder} is inconsistent; prepare the avatar again")
        return avatar


# ---------------------------------------------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------------------------------------------

def _check_pixels(data: bytes, path: Path) -> None:
    """Refuse an image whose header declares more than ``MAX_IMAGE_PIXELS`` (the header only is read)."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            with Image.open(io.BytesIO(data)) as header:
                w, h = header.size
    except Image.DecompressionBombError:
        raise InputError(f"{path} declares far more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels; scale the "
                         "portrait down (2048 px on the longest side is plenty)") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"cannot read {path} as an image (corrupt or not an image file); "
                         "use a PNG, JPEG, WebP or BMP portrait") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(f"{path} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS // 1_000_000} megapixels "
                         "accepted; scale the portrait down (2048 px on the longest side is plenty)")


def _decode_image(data: bytes, path: Path) -> np.ndarray:
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise InputError(f"{path} is larger than {MAX_IMAGE_FILE_BYTES // (1024 * 1024)} MB; use a smaller portrait")
    if data:
        _check_pixels(data, path)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise InputError(f"cannot read {path} as an image (corrupt or not an image file); "
                         "use a PNG, JPEG, WebP or BMP portrait")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (EXIF orientation applied, alpha dropped); ``InputError`` if unusable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"portrait not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image; pass a portrait image or a prepared avatar folder")
    try:
        if path.stat().st_size > MAX_IMAGE_FILE_BYTES:
            raise InputError(f"{path} is larger than {MAX_IMAGE_FILE_BYTES // (1024 * 1024)} MB; "
                             "use a smaller portrait")
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _decode_image(data, path)


def _limit_size(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= MAX_IMAGE_SIDE_PX:
        return image
    scale = MAX_IMAGE_SIDE_PX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    logger.info("scaled the portrait from %dx%d to %dx%d (longest side <= %d px)", w, h, *size, MAX_IMAGE_SIDE_PX)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------------------------
# Geometry: head pose, regions, warp mesh
# ---------------------------------------------------------------------------------------------------------------

def _kabsch(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[np.ndarray, float, np.ndarray]:
    """Umeyama: R, s, t minimising ||s R src + t - dst||; returns a proper rotation (det = +1)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d) / (a ** 2).sum()) if with_scale else 1.0
    return rot, scale, mu_d - scale * rot @ mu_s


def mirror_pairs(mesh: np.ndarray) -> np.ndarray:
    """For each of the 468 mesh points, the index of its left-right mirror partner (itself on the midline).

    Found on a near-frontal mesh by mirroring it and matching points one to one (Hungarian assignment), after
    aligning the mirror image to the original by iterated closest points (so a slight yaw or roll of that face
    does not matter).
    """
    pts = mesh[:face_mesh.NUM_MESH_LANDMARKS].astype(np.float64)
    pts = pts - pts.mean(0)
    mirrored = pts * np.array([-1.0, 1.0, 1.0])
    tree = cKDTree(pts)
    moved = mirrored
    for _ in range(10):
        _, nearest = tree.query(moved)
        rot, scale, t = _kabsch(mirrored, pts[nearest], with_scale=False)
        moved = mirrored @ rot.T + t
    # one-to-one matching that is symmetric by construction: i <-> j costs |p_i - m_j| + |p_j - m_i|
    dist = np.linalg.norm(pts[:, None, :] - moved[None, :, :], axis=2)
    _, pairs = linear_sum_assignment(dist + dist.T)
    return pairs


_CANONICAL: dict[str, np.ndarray] = {}
_CANONICAL_LOCK = threading.Lock()


def canonical_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A frontal reference mesh (468, 3) and the mirror pairs, built once from the bundled default portrait.

    The portrait's mesh is symmetrised (each point averaged with its mirrored partner), which removes its yaw and
    roll exactly; its pitch is taken as the zero of the pitch scale (the default portrait looks into the camera).
    """
    with _CANONICAL_LOCK:
        if not _CANONICAL:
            image = read_image(DEFAULT_PORTRAIT)
            detections = face_mesh.detect_faces(image)
            if not detections:  # pragma: no cover - the bundled portrait has a face
                raise FaceError("the bundled default portrait has no detectable face; reinstall avatarcast")
            best = max(detections, key=lambda d: d.area)
            mesh = face_mesh.face_landmarks(image, best)[:face_mesh.NUM_MESH_LANDMARKS].astype(np.float64)
            pairs = mirror_pairs(mesh)
            centred = mesh - mesh.mean(0)
            mirrored = centred * np.array([-1.0, 1.0, 1.0])
            _CANONICAL["mesh"] = (centred + mirrored[pairs]) / 2.0
            _CANONICAL["pairs"] = pairs
        return _CANONICAL["mesh"], _CANONICAL["pairs"]


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees with ``AvatarState`` conventions.

    Yaw and pitch come from the Umeyama alignment of the mesh to ``canonical_mesh()``: the face's forward
    direction (towards the camera) is the rotated canonical one; + yaw = the face turns to the viewer's right,
    + pitch = it nods down. Roll is the angle of the line between the eye centres (+ = clockwise as seen by the
    viewer), the most direct and robust measure of it.
    """
    canonical, _ = canonical_mesh()
    pts = landmarks[:face_mesh.NUM_MESH_LANDMARKS].astype(np.float64)
    rot, _, _ = _kabsch(canonical, pts)
    forward = rot @ np.array([0.0, 0.0, -1.0])  # z grows away from the camera
    yaw = np.degrees(np.arctan2(forward[0], -forward[2]))
    pitch = np.degrees(np.arctan2(forward[1], np.hypot(forward[0], forward[2])))
    right_eye = pts[list(RIGHT_EYE_CONTOUR), :2].mean(0)
    left_eye = pts[list(LEFT_EYE_CONTOUR), :2].mean(0)
    dx, dy = left_eye - right_eye
    roll = np.degrees(np.arctan2(dy, dx))
    return float(yaw), float(pitch), float(roll)


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    contour = polygon.reshape(-1, 1, 2).astype(np.float32)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), False) > 0 for x, y in points])


def warp_triangles(landmarks: np.ndarray) -> np.ndarray:
    """Delaunay triangles over the 468 mesh points, without those that bridge the mouth or an eye opening.

    Dropped: triangles with one vertex on each lid (or lip) of an opening, other than its corners; triangles whose
    centroid lies inside an opening; and triangles outside the face oval (Delaunay fills concave parts of the
    outline with slivers). The iris points are not vertices: they lie inside the eye openings.
    """
    pts = landmarks[:face_mesh.NUM_MESH_LANDMARKS, :2].astype(np.float64)
    tri = Delaunay(pts).simplices
    keep = np.ones(len(tri), bool)
    centroids = pts[tri].mean(axis=1)
    for ring, corners in _OPENINGS:
        ring = list(ring)
        i0, i1 = ring.index(corners[0]), ring.index(corners[1])
        lo, hi = sorted((i0, i1))
        side_a = set(ring[lo + 1:hi])
        side_b = set(ring[hi + 1:] + ring[:lo])
        in_a = np.isin(tri, list(side_a)).any(axis=1)
        in_b = np.isin(tri, list(side_b)).any(axis=1)
        keep &= ~(in_a & in_b)
        keep &= ~_inside(centroids, pts[ring])
    keep &= _inside(centroids, pts[list(FACE_OVAL)])
    return tri[keep].astype(np.int32)


def _face_cut(landmarks: np.ndarray, width: int, height: int) -> tuple[float, list[str]]:
    """How much of the face lies outside the image: (share of the oval's area, features that are cut)."""
    hull = cv2.convexHull(landmarks[list(FACE_OVAL), :2].astype(np.float32))
    area = float(cv2.contourArea(hull))
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32).reshape(-1, 1, 2)
    inside_area, _ = cv2.intersectConvexConvex(hull, frame)
    outside = 1.0 - float(inside_area) / area if area > 0 else 1.0
    cut = []
    for name in ("right_eye", "left_eye", "mouth_outer"):
        p = landmarks[list(REGIONS[name]), :2]
        lo, hi = p.min(0), p.max(0)
        overhang = np.maximum(np.maximum(-lo, hi - [width, height]), 0.0)
        if (overhang > FEATURE_OVERHANG_FRACTION * (hi - lo)).any():
            cut.append(name.replace("_outer", "").replace("_", " "))
    return max(outside, 0.0), cut


# ---------------------------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------------------------

def _choose_face(faces: list[FaceDetection], face_index: int | None, source: str) -> FaceDetection:
    if face_index is not None:
        if not 0 <= face_index < len(faces):
            raise FaceError(f"face index {face_index} is out of range: {source} has {len(faces)} "
                            f"face{'s' if len(faces) != 1 else ''} (valid: 0 to {len(faces) - 1}, 0 = leftmost)")
        return faces[face_index]
    largest = max(range(len(faces)), key=lambda i: faces[i].area)
    if len(faces) > 1:
        logger.warning("found %d faces in %s; using the largest (index %d, counting from 0 = leftmost); "
                       "choose another with `face`", len(faces), source, largest)
    return faces[largest]


def prepare_avatar(source: str | Path | np.ndarray, face_index: int | None = None) -> Avatar:
    """Detect the face in a portrait and build an ``Avatar`` (see the module docstring for the policies).

    ``source`` is an image path or an RGB uint8 array; ``face_index`` picks a face counting from the left
    (default: the largest). Raises ``InputError`` for an unreadable image and ``FaceError`` when no usable face is
    found.
    """
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
            raise InputError(f"expected an RGB uint8 image of shape (height, width, 3), got "
                             f"{source.dtype} {source.shape}")
        image, name = np.ascontiguousarray(source), "<array>"
    else:
        image, name = read_image(source), str(source)
    image = _limit_size(image)
    h, w = image.shape[:2]
    if min(h, w) < MIN_FACE_SIZE_PX:
        raise FaceError(f"{name} is only {w}x{h} pixels: the face must be at least {MIN_FACE_SIZE_PX} pixels "
                        "tall; use a larger portrait")
    faces = face_mesh.detect_faces(image)
    if not faces:
        raise FaceError(f"no face found in {name}; use a photo with one clearly visible face, looking roughly "
                        f"at the camera, at least {MIN_FACE_SIZE_PX} pixels tall")
    face = _choose_face(faces, face_index, name)
    if face.size_px < MIN_FACE_SIZE_PX:
        raise FaceError(f"the face in {name} is too small ({face.size_px:.0f} pixels); the minimum face size is "
                        f"{MIN_FACE_SIZE_PX} pixels: use a larger or closer portrait")
    landmarks = face_mesh.face_landmarks(image, face)
    outside, cut = _face_cut(landmarks, w, h)
    if cut or outside > MAX_FACE_OUTSIDE_FRACTION:
        missing = f"the {' and '.join(cut)} {'are' if len(cut) > 1 else 'is'} cut off" if cut else \
            f"{outside:.0%} of the face lies outside the image"
        raise FaceError(f"the face in {name} is cut by the image edge ({missing}); use a portrait that shows the "
                        f"whole face (at most {MAX_FACE_OUTSIDE_FRACTION:.0%} of it may be cut, eyes and mouth "
                        "must be inside)")
    if outside > 0.01:
        logger.warning("the face in %s is cut by the image edge (%.0f%% of it is outside); it is usable, but the "
                       "cut side cannot move", name, outside * 100)
    xy = landmarks[:face_mesh.NUM_MESH_LANDMARKS, :2]
    x0, y0 = np.floor(xy.min(0)).astype(int)
    x1, y1 = np.ceil(xy.max(0)).astype(int)
    box = (max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h))
    return Avatar(
        image=image,
        landmarks=landmarks,
        face_box=box,
        head_pose_deg=head_pose(landmarks),
        regions={k: np.array(v, np.int32) for k, v in REGIONS.items()},
        triangles=warp_triangles(landmarks),
        source=name,
    )


def portrait_image(avatar: Any) -> Path | None:
    """The image an avatar was made from: the file itself, a prepared folder's ``image.png``, the bundled portrait
    for ``None``; None when there is no such image (a video avatar, an ``Avatar`` object)."""
    if avatar is None:
        return DEFAULT_PORTRAIT
    if not isinstance(avatar, (str, Path)):
        return None
    path = Path(avatar)
    if path.is_dir():
        path = path / "image.png"
    return path if path.is_file() else None
