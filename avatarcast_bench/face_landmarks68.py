"""dlib's 68-point face landmarks and 128-D face descriptor: the independent detector used by ``avatarcast eval``.

The renderer works with the MediaPipe face mesh; quality is measured with a different model family (dlib's HOG
face detector, its 68-point shape predictor and its ResNet face descriptor, shipped as CC0 files in the
``face-recognition-models`` package), so that a mistake of one model is not graded by the same model.

Landmark indices are the iBUG 300-W convention, 0-based: 0-16 jaw line, 17-21 and 22-26 brows (image left, then
image right), 27-30 nose bridge, 31-35 nose base, 36-41 and 42-47 eyes (image left = the subject's right eye first),
48-59 outer lips, 60-67 inner lips.

These are the ``[eval]`` extra: dlib is imported on first use and a missing install raises
``MissingDependencyError``.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatarcast.core.errors import MissingDependencyError

DETECT_MAX_SIDE_PX = 640
"""Frames are scaled down so their longest side is at most this before HOG detection (detection cost ~ pixels)."""

DETECT_MIN_SIDE_PX = 320
"""Small frames are scaled up to at least this: the HOG detector misses faces smaller than ~80 px."""

LANDMARK_BOX_PX = 480
"""Faces smaller than this are scaled up to it before the shape predictor: dlib returns whole-pixel landmarks, so a
small face would get coarse, flickering points (1 px steps at a 60 px eye distance are 2 % of the face)."""

FACE_CHIP_SIZE_PX = 150
"""The aligned face crop the ResNet descriptor expects."""

FACE_CHIP_PADDING = 0.25

SAME_PERSON_DISTANCE = 0.6
"""dlib's documented threshold: descriptors closer than this are usually the same person."""

INSTALL_HINT = "pip install 'avatarcast[eval]'"

# Landmark groups (0-based, iBUG 68-point convention).
JAW = np.arange(0, 17)
BROW_IMAGE_LEFT = np.arange(17, 22)
BROW_IMAGE_RIGHT = np.arange(22, 27)
NOSE_BRIDGE = np.arange(27, 31)
NOSE_BASE = np.arange(31, 36)
EYE_IMAGE_LEFT = np.arange(36, 42)
EYE_IMAGE_RIGHT = np.arange(42, 48)
MOUTH_OUTER = np.arange(48, 60)
MOUTH_INNER = np.arange(60, 68)
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
"""Upper and lower inner-lip points facing each other: their distances measure how open the mouth is."""
EYE_CORNERS = np.array([36, 39, 42, 45])


def _models_dir() -> Path:
    # Not ``import face_recognition_models``: its __init__ needs pkg_resources, absent from modern setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the face-recognition-models package (dlib's model files) is not installed: {INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise MissingDependencyError(f"dlib is needed to evaluate videos and is not installed: {INSTALL_HINT}") from exc
    return dlib


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in image pixels, as dlib's HOG detector draws it."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


class FaceLandmarks68:
    """dlib's HOG face detector, 68-point shape predictor and ResNet face descriptor, loaded once."""

    def __init__(self) -> None:
        dlib = _import_dlib()
        models = _models_dir()
        predictor_path = models / "shape_predictor_68_face_landmarks.dat"
        descriptor_path = models / "dlib_face_recognition_resnet_model_v1.dat"
        for path in (predictor_path, descriptor_path):
            if not path.is_file():
                raise MissingDependencyError(f"dlib model file {path} is missing; reinstall with {INSTALL_HINT}")
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(predictor_path))
        self._encoder = dlib.face_recognition_model_v1(str(descriptor_path))

    def detect(self, image: np.ndarray, upsample: int = 0) -> list[FaceBox]:
        """Faces in an RGB uint8 image, largest first. Large images are scaled down first for speed."""
        h, w = image.shape[:2]
        longest = max(h, w)
        scale = 1.0
        if longest > DETECT_MAX_SIDE_PX:
            scale = DETECT_MAX_SIDE_PX / longest
        elif longest < DETECT_MIN_SIDE_PX:
            scale = DETECT_MIN_SIDE_PX / longest
        small = image if scale == 1.0 else cv2.resize(
            image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        )
        rects = self._detector(np.ascontiguousarray(small), upsample)
        if len(rects) == 0 and upsample == 0 and scale < 1.0:
            # A small face in a large frame: try once more at full resolution of the scaled frame, upsampled.
            rects = self._detector(np.ascontiguousarray(small), 1)
        boxes = [
            FaceBox(r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale)
            for r in rects
        ]
        return sorted(boxes, key=lambda b: -b.area())

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray:
        """The 68 landmarks ``(68, 2)`` float32 (x, y in image pixels, sub-pixel) of the face in ``box``."""
        scale = LANDMARK_BOX_PX / max(box.width, 1.0)
        if scale <= 1.0:
            shape = self._predictor(np.ascontiguousarray(image), self._rect(box))
            return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        # Predict on an enlarged crop around the box, then map the points back: sub-pixel precision.
        h, w = image.shape[:2]
        margin = 0.5 * max(box.width, box.height)
        x0, y0 = max(0, int(box.x0 - margin)), max(0, int(box.y0 - margin))
        x1, y1 = min(w, int(math.ceil(box.x1 + margin))), min(h, int(math.ceil(box.y1 + margin)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            shape = self._predictor(np.ascontiguousarray(image), self._rect(box))
            return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        crop = cv2.resize(image[y0:y1, x0:x1], (round((x1 - x0) * scale), round((y1 - y0) * scale)),
                          interpolation=cv2.INTER_LINEAR)
        local = FaceBox((box.x0 - x0) * scale, (box.y0 - y0) * scale, (box.x1 - x0) * scale, (box.y1 - y0) * scale)
        shape = self._predictor(np.ascontiguousarray(crop), self._rect(local))
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        # pixel centres: crop pixel k covers source [x0 + k / scale, x0 + (k + 1) / scale)
        pts = (pts + 0.5) / scale - 0.5 + np.array([x0, y0])
        return pts.astype(np.float32)

    def face_chip(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The aligned 150x150 RGB crop the descriptor reads, from 68 landmarks."""
        dlib = self._dlib
        pts = [dlib.point(int(round(x)), int(round(y))) for x, y in landmarks]
        x0, y0 = np.floor(landmarks.min(axis=0)).astype(int)
        x1, y1 = np.ceil(landmarks.max(axis=0)).astype(int)
        shape = dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), pts)
        return np.asarray(
            dlib.get_face_chip(np.ascontiguousarray(image), shape, size=FACE_CHIP_SIZE_PX, padding=FACE_CHIP_PADDING)
        )

    def descriptor_of_chip(self, chip: np.ndarray) -> np.ndarray:
        """The 128-D face descriptor of an aligned face chip (see ``face_chip``)."""
        return np.asarray(self._encoder.compute_face_descriptor(np.ascontiguousarray(chip)), dtype=np.float32)

    def descriptor(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The 128-D face descriptor of the face with these 68 landmarks."""
        return self.descriptor_of_chip(self.face_chip(image, landmarks))

    def _rect(self, box: FaceBox) -> Any:
        return self._dlib.rectangle(int(round(box.x0)), int(round(box.y0)), int(round(box.x1)) - 1,
                                    int(round(box.y1)) - 1)


_SHARED: FaceLandmarks68 | None = None


def shared_landmarker() -> FaceLandmarks68:
    """One process-wide instance (the models take ~1 s and ~100 MB to load)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = FaceLandmarks68()
    return _SHARED


def descriptor_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two face descriptors (dlib: < 0.6 usually means the same person)."""
    return float(np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32)))


def inter_ocular_px(landmarks: np.ndarray) -> float:
    """Distance between the two eye centres, the face's scale for normalising distances."""
    return float(np.linalg.norm(landmarks[EYE_IMAGE_LEFT].mean(axis=0) - landmarks[EYE_IMAGE_RIGHT].mean(axis=0)))


def mouth_openness(landmarks: np.ndarray) -> float:
    """Inner-lip opening: the mean distance of facing inner-lip points (61-67, 62-66, 63-65) over inter-ocular."""
    gap = np.mean([np.linalg.norm(landmarks[a] - landmarks[b]) for a, b in INNER_LIP_PAIRS])
    return float(gap / max(inter_ocular_px(landmarks), 1e-6))


def brow_height(landmarks: np.ndarray) -> float:
    """Brow-to-eye distance (each brow's centre to its eye's centre, averaged) over inter-ocular."""
    left = np.linalg.norm(landmarks[BROW_IMAGE_LEFT].mean(axis=0) - landmarks[EYE_IMAGE_LEFT].mean(axis=0))
    right = np.linalg.norm(landmarks[BROW_IMAGE_RIGHT].mean(axis=0) - landmarks[EYE_IMAGE_RIGHT].mean(axis=0))
    return float((left + right) / 2.0 / max(inter_ocular_px(landmarks), 1e-6))


# A generic 3D face in millimetres for the landmarks that do not move with the jaw, the lips or the brows:
# x toward the image's right for a frontal face (the subject's left), y up, z toward the camera, nose tip at the
# origin. Average adult proportions (outer eye corners 88 mm apart, the nose bridge at eye level and 20 mm behind
# the tip); the x, y proportions match dlib's landmarks on frontal portraits.
HEAD_MODEL_MM: dict[int, tuple[float, float, float]] = {
    27: (0.0, 37.0, -20.0),
    28: (0.0, 25.0, -13.0),
    29: (0.0, 13.0, -6.5),
    30: (0.0, 0.0, 0.0),
    31: (-19.0, -7.0, -18.0),
    32: (-9.0, -10.0, -13.0),
    33: (0.0, -12.0, -12.0),
    34: (9.0, -10.0, -13.0),
    35: (19.0, -7.0, -18.0),
    36: (-44.0, 35.0, -33.0),
    39: (-19.0, 35.0, -24.0),
    42: (19.0, 35.0, -24.0),
    45: (44.0, 35.0, -33.0),
}
HEAD_MODEL_INDICES = np.array(sorted(HEAD_MODEL_MM), dtype=np.int64)
_HEAD_MODEL_POINTS = np.array([HEAD_MODEL_MM[i] for i in HEAD_MODEL_INDICES], dtype=np.float64)
# The model's axes (x right, y up, z toward the camera) expressed in camera axes (x right, y down, z forward).
_MODEL_TO_CAMERA = np.diag([1.0, -1.0, -1.0])


def head_pose_deg(
    landmarks: np.ndarray, image_size: tuple[int, int], guess: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[tuple[float, float, float], tuple[np.ndarray, np.ndarray]]:
    """Yaw, pitch, roll in degrees from 68 landmarks (``cv2.solvePnP`` against a generic 3D face).

    Conventions follow ``AvatarState``: yaw + turns toward the viewer's right, pitch + nods down, roll + tilts
    clockwise as seen by the viewer. ``image_size`` is ``(width, height)``; the camera is a pinhole with a focal
    length of one image width, looking straight at the face. Returns the angles and ``(rvec, tvec)`` to pass as ``guess`` for the next frame,
    which keeps a track stable. Absolute angles carry the generic model's bias (a few degrees); changes are
    what it measures well.
    """
    w, h = image_size
    image_points = landmarks[HEAD_MODEL_INDICES].astype(np.float64)
    # The optical axis goes through the face: portraits and renders are crops, so a face off the frame's centre
    # is not seen from the side, and moving the head across the frame must not read as turning it.
    cx, cy = image_points.mean(axis=0)
    camera = np.array([[w, 0, cx], [0, w, cy], [0, 0, 1]], dtype=np.float64)
    if guess is not None:
        rvec, tvec = guess[0].copy(), guess[1].copy()
        ok, rvec, tvec = cv2.solvePnP(_HEAD_MODEL_POINTS, image_points, camera, None, rvec, tvec,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    else:
        # Start from a frontal face at a distance matching its size, so the iteration cannot flip behind the camera.
        eye_px = np.linalg.norm(image_points[-1] - image_points[-4])
        depth = w * 88.0 / max(eye_px, 1.0)
        rvec0 = cv2.Rodrigues(_MODEL_TO_CAMERA)[0]
        tvec0 = np.array([[0.0], [0.0], [depth]])
        ok, rvec, tvec = cv2.solvePnP(_HEAD_MODEL_POINTS, image_points, camera, None, rvec0, tvec0,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    rotation = cv2.Rodrigues(rvec)[0] @ _MODEL_TO_CAMERA  # head rotation in camera axes; identity when frontal
    normal = rotation @ np.array([0.0, 0.0, -1.0])  # face normal, toward the camera when frontal
    ear_to_ear = rotation @ np.array([1.0, 0.0, 0.0])  # toward the image's right when frontal
    # yaw and pitch from where the face points, roll from the tilt of the line between the ears in the image:
    # exact for a head turned by yaw after pitch after roll, with no cross-talk between the three
    yaw = np.degrees(np.arctan2(normal[0], -normal[2]))
    pitch = np.degrees(np.arctan2(normal[1], np.hypot(normal[0], normal[2])))
    roll = np.degrees(np.arctan2(ear_to_ear[1], ear_to_ear[0]))
    return (float(yaw), float(pitch), float(roll)), (rvec, tvec)
