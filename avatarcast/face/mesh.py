"""Face detection and the 478-point face mesh, running Google's MediaPipe face models on LiteRT.

The bundled models (``avatarcast/face/models``, Apache-2.0) are the ones MediaPipe's face mesh uses; this module
re-implements the graph around them so avatarcast needs neither the mediapipe package nor its pinned numpy:

1. **Detection** (BlazeFace): the image is letterboxed into the detector's square input (values in [-1, 1]), the
   SSD anchors are generated as MediaPipe's ``SsdAnchorsCalculator`` does, boxes and six keypoints (eyes, nose tip,
   mouth centre, ear tragions) are decoded from the regressors, and overlapping boxes are merged with weighted
   non-max suppression. The full-range model (192x192 input) finds small faces in large frames; the short-range
   model (128x128) is run too, because it is better on faces that fill the frame; both sets are merged.
2. **Mesh**: a square around the detection box, 1.5x its longer side, rotated so that the eyes are level, is
   resampled to 192x192 (values in [0, 1]); the model returns 468 points (x, y, z) and a face-presence score.
3. **Irises**: a square of 2.3x the eye width around each eye (corners 33/133 and 362/263) is resampled to 64x64
   and the iris model returns 5 iris points (centre first). The model is trained on one eye side, so the crop of the
   eye on the image's right side is mirrored before inference and its output mirrored back, as MediaPipe does.

Landmarks follow MediaPipe's ``refine_landmarks=True`` topology: 468 mesh points, then 468-472 the iris on the
image's left side (the subject's right eye) and 473-477 the other one. x and y are image pixels; z is in the same
pixel scale, smaller = closer to the camera.

Interpreters are module-level singletons, created on first use; one lock per model serialises inference, so the
functions are safe to call from several threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarcast.core.errors import FaceError, InputError, MissingDependencyError

MODELS_DIR = Path(__file__).resolve().parent / "models"

NUM_MESH_LANDMARKS = 468
NUM_LANDMARKS = 478
RIGHT_IRIS = tuple(range(468, 473))  # the subject's right eye = the image's left side; centre first
LEFT_IRIS = tuple(range(473, 478))

# Eye corners used to place the iris crops: (image-left corner, image-right corner) of each eye.
RIGHT_EYE_CORNERS = (33, 133)  # the subject's right eye (outer, inner)
LEFT_EYE_CORNERS = (362, 263)  # the subject's left eye (inner, outer)
# Eye-opening contours (lids), as closed rings starting at the outer corner.
RIGHT_EYE_CONTOUR = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE_CONTOUR = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)

DETECTION_NMS_IOU = 0.3
"""Weighted non-max suppression merges detections that overlap more than this (MediaPipe's value)."""
FACE_CROP_SCALE = 1.5
"""The mesh crop is a square this many times the detection box's longer side (MediaPipe's value)."""
IRIS_CROP_SCALE = 2.3
"""The iris crop is a square this many times the eye-corner distance (MediaPipe's value)."""
FACE_PRESENCE_MIN_SCORE = 0.5
"""The mesh model's face-presence probability below which the crop is taken to hold no face."""


@dataclass(frozen=True)
class _DetectorSpec:
    """The configuration of one BlazeFace model, as in MediaPipe's face_detection graphs."""

    file_name: str
    input_size_px: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    min_score: float


SHORT_RANGE = _DetectorSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 1.0, 0.5)
FULL_RANGE = _DetectorSpec("face_detection_full_range_sparse.tflite", 192, (4,), 0.0, 0.6)


@dataclass(frozen=True)
class FaceDetection:
    """One detected face, in image pixels.

    ``keypoints`` is (6, 2): the subject's right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
    tragion (the subject's right is on the image's left side).
    """

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    keypoints: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def size_px(self) -> float:
        """The longer side of the box: the face size that minimum-size checks compare against."""
        return max(self.width, self.height)

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)


class _Model:
    """A lazily loaded LiteRT interpreter with a lock around inference."""

    def __init__(self, file_name: str) -> None:
        self.path = MODELS_DIR / file_name
        self._interpreter = None
        self._lock = threading.Lock()

    def _load(self):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise MissingDependencyError(
                "face detection needs the LiteRT runtime: pip install ai-edge-litert"
            ) from exc
        if not self.path.is_file():  # pragma: no cover - shipped with the package
            raise MissingDependencyError(f"face model missing: {self.path}; reinstall avatarcast")
        interpreter = Interpreter(model_path=str(self.path), num_threads=1)
        interpreter.allocate_tensors()
        return interpreter

    def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model on one float32 NHWC batch; returns its outputs in the model's order."""
        with self._lock:
            if self._interpreter is None:
                self._interpreter = self._load()
            it = self._interpreter
            it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(tensor, dtype=np.float32))
            it.invoke()
            return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


_MODELS: dict[str, _Model] = {}
_MODELS_LOCK = threading.Lock()


def _model(file_name: str) -> _Model:
    with _MODELS_LOCK:
        if file_name not in _MODELS:
            _MODELS[file_name] = _Model(file_name)
        return _MODELS[file_name]


# ---------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------

_ANCHORS: dict[str, np.ndarray] = {}
_ANCHORS_LOCK = threading.Lock()


def ssd_anchors(input_size_px: int, strides: tuple[int, ...], interpolated_scale_aspect_ratio: float,
                anchor_offset: float = 0.5) -> np.ndarray:
    """Anchor centres (N, 2), normalised to [0, 1], in MediaPipe ``SsdAnchorsCalculator`` order.

    BlazeFace uses fixed-size anchors (width = height = 1), so only the centres matter: per feature-map cell, one
    anchor for the aspect ratio 1.0 per layer, plus one more per layer when an interpolated scale is configured;
    consecutive layers with the same stride share one feature map.
    """
    centres = []
    layer = 0
    while layer < len(strides):
        per_cell = 0
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            per_cell += 1 + (1 if interpolated_scale_aspect_ratio > 0 else 0)
            last += 1
        fm = int(np.ceil(input_size_px / strides[layer]))
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        cell = np.stack([(xs + anchor_offset) / fm, (ys + anchor_offset) / fm], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(cell, per_cell, axis=1).reshape(-1, 2))
        layer = last
    return np.concatenate(centres).astype(np.float32)


def _anchors(spec: _DetectorSpec) -> np.ndarray:
    with _ANCHORS_LOCK:
        if spec.file_name not in _ANCHORS:
            _ANCHORS[spec.file_name] = ssd_anchors(spec.input_size_px, spec.strides,
                                                   spec.interpolated_scale_aspect_ratio)
        return _ANCHORS[spec.file_name]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou_threshold: float = DETECTION_NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-max suppression (BlazeFace).

    Candidates are taken in order of score; each one absorbs every remaining candidate overlapping it by more than
    ``iou_threshold``, and the merged box and keypoints are the score-weighted mean of the group. The merged score
    is the group's best score.
    """
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.arange(len(scores))
    out = []
    while remaining.size:
        first = remaining[0]
        overlap = _iou(boxes[first], boxes[remaining])
        group = remaining[overlap > iou_threshold]
        group = np.union1d(group, [first])
        w = scores[group][:, None]
        box = (boxes[group] * w).sum(0) / w.sum()
        kps = (keypoints[group].reshape(len(group), -1) * w).sum(0).reshape(keypoints.shape[1:]) / w.sum()
        out.append((box, kps, float(scores[first])))
        remaining = remaining[overlap <= iou_threshold]
        remaining = remaining[remaining != first]
    return out


def _letterbox(image: np.ndarray, size_px: int) -> tuple[np.ndarray, float, float, float]:
    """Scale ``image`` to fit a ``size_px`` square, centred, black padding; returns (square, scale, x_off, y_off)."""
    h, w = image.shape[:2]
    scale = size_px / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    x_off, y_off = (size_px - nw) // 2, (size_px - nh) // 2
    square = np.zeros((size_px, size_px, 3), np.uint8)
    square[y_off:y_off + nh, x_off:x_off + nw] = resized
    # exact scale per axis after rounding, so detections map back precisely
    return square, nw / w, x_off, y_off


def _run_detector(image: np.ndarray, spec: _DetectorSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoded candidate boxes (N, 4), keypoints (N, 6, 2) in image pixels and scores (N,) above the threshold."""
    size = spec.input_size_px
    square, scale, x_off, y_off = _letterbox(image, size)
    tensor = square.astype(np.float32)[None] / 127.5 - 1.0
    regressors, classificators = _model(spec.file_name)(tensor)
    raw = regressors.reshape(-1, 16)
    logits = np.clip(classificators.reshape(-1), -100.0, 100.0)
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    keep = scores >= spec.min_score
    if not keep.any():
        return np.zeros((0, 4), np.float32), np.zeros((0, 6, 2), np.float32), np.zeros(0, np.float32)
    raw, scores, anchors = raw[keep], scores[keep], _anchors(spec)[keep]
    # regressors are in input pixels relative to the anchor centre (reverse_output_order: x before y)
    cx = raw[:, 0] / size + anchors[:, 0]
    cy = raw[:, 1] / size + anchors[:, 1]
    bw = raw[:, 2] / size
    bh = raw[:, 3] / size
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    kps = raw[:, 4:16].reshape(-1, 6, 2) / size + anchors[:, None, :]
    # input-normalised -> letterbox pixels -> image pixels
    boxes = boxes * size
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - x_off) / scale
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - y_off) / scale
    kps = kps * size
    kps[..., 0] = (kps[..., 0] - x_off) / scale
    kps[..., 1] = (kps[..., 1] - y_off) / scale
    return boxes, kps, scores


def detect_faces(image: np.ndarray) -> list[FaceDetection]:
    """Detect faces in an RGB uint8 image; returns them sorted left to right (by box centre).

    Both BlazeFace models run on the whole image and their candidates are merged by weighted non-max suppression,
    so a face that fills the frame and a small face in a wide 1080p shot are both found.
    """
    _check_image(image)
    all_boxes, all_kps, all_scores = [], [], []
    for spec in (FULL_RANGE, SHORT_RANGE):
        boxes, kps, scores = _run_detector(image, spec)
        all_boxes.append(boxes)
        all_kps.append(kps)
        all_scores.append(scores)
    boxes = np.concatenate(all_boxes)
    if not len(boxes):
        return []
    merged = weighted_nms(boxes, np.concatenate(all_kps), np.concatenate(all_scores))
    faces = [FaceDetection(tuple(float(v) for v in box), kps.astype(np.float32), score)
             for box, kps, score in merged]
    faces = [f for f in faces if f.width > 1 and f.height > 1]
    return sorted(faces, key=lambda f: f.center[0])


# ---------------------------------------------------------------------------------------------------------------
# Mesh and irises
# ---------------------------------------------------------------------------------------------------------------

def _crop_transform(center: np.ndarray, side_px: float, angle_rad: float, out_px: int) -> np.ndarray:
    """The 2x3 affine map from crop pixels (0..out_px) to image pixels for a rotated square crop.

    A crop point (u, v) maps to ``center + side * R(angle) @ ((u, v) / out - 0.5)``, which is how MediaPipe's
    ``LandmarkProjectionCalculator`` projects landmarks back from a rotated ROI.
    """
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    rot = np.array([[c, -s], [s, c]]) * (side_px / out_px)
    offset = center - rot @ np.array([out_px / 2.0, out_px / 2.0])
    return np.hstack([rot, offset[:, None]])


def _crop(image: np.ndarray, transform: np.ndarray, out_px: int) -> np.ndarray:
    # Shrinking a large face straight to the crop size with bilinear sampling aliases; pre-filter instead.
    zoom = float(np.hypot(*transform[:, 0]))  # image pixels per crop pixel
    if zoom > 2.0:
        sigma = 0.5 * zoom
        x0, y0 = transform[:, 2]
        corners = transform @ np.array([[0, 0, 1], [out_px, 0, 1], [0, out_px, 1], [out_px, out_px, 1]]).T
        xa, ya = np.floor(corners.min(axis=1) - 3 * sigma).astype(int)
        xb, yb = np.ceil(corners.max(axis=1) + 3 * sigma).astype(int)
        h, w = image.shape[:2]
        xa, ya, xb, yb = max(xa, 0), max(ya, 0), min(xb, w), min(yb, h)
        if xb > xa and yb > ya:
            region = cv2.GaussianBlur(image[ya:yb, xa:xb], (0, 0), sigma)
            image = image.copy()
            image[ya:yb, xa:xb] = region
    return cv2.warpAffine(image, transform, (out_px, out_px), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points[:, :2] @ transform[:, :2].T + transform[:, 2]


def _angle_between(p0: np.ndarray, p1: np.ndarray) -> float:
    """Rotation that makes the line p0 -> p1 horizontal (MediaPipe's rotation vector, target angle 0)."""
    return float(-np.arctan2(-(p1[1] - p0[1]), p1[0] - p0[0]))


def face_crop_transform(detection: FaceDetection) -> np.ndarray:
    """The affine map from the 192x192 mesh crop to the image for a detection (rotated so the eyes are level)."""
    angle = _angle_between(detection.keypoints[0], detection.keypoints[1])
    side = FACE_CROP_SCALE * max(detection.width, detection.height)
    return _crop_transform(np.array(detection.center), side, angle, 192)


def _mesh(image: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, float]:
    crop = _crop(image, transform, 192)
    raw, flag = _model("face_landmark.tflite")(crop.astype(np.float32)[None] / 255.0)
    presence = float(1.0 / (1.0 + np.exp(-np.clip(flag.reshape(-1)[0], -100, 100))))
    pts = raw.reshape(NUM_MESH_LANDMARKS, 3).astype(np.float64)
    out = np.empty_like(pts)
    out[:, :2] = _apply(transform, pts)
    out[:, 2] = pts[:, 2] * np.hypot(*transform[:, 0])
    return out, presence


def _iris(image: np.ndarray, mesh: np.ndarray, corners: tuple[int, int], contour: tuple[int, ...],
          mirror: bool) -> np.ndarray:
    """Five iris points (centre first) of one eye, in image pixels, from the iris model on a 64x64 eye crop."""
    p0, p1 = mesh[corners[0], :2], mesh[corners[1], :2]
    angle = _angle_between(p0, p1)
    # MediaPipe boxes the two corners, squares the box on its longer side and scales it
    side = IRIS_CROP_SCALE * max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]), 1.0)
    transform = _crop_transform((p0 + p1) / 2.0, side, angle, 64)
    crop = _crop(image, transform, 64)
    if mirror:
        crop = crop[:, ::-1]
    _contours, iris = _model("iris_landmark.tflite")(crop.astype(np.float32)[None] / 255.0)
    iris = iris.reshape(5, 3).astype(np.float64)
    if mirror:
        # un-mirror, and keep the ring order of the other eye (1 = towards the image's right, 2 = up, ...)
        iris[:, 0] = 64.0 - iris[:, 0]
        iris = iris[[0, 3, 2, 1, 4]]
    out = np.empty_like(iris)
    out[:, :2] = _apply(transform, iris)
    # The iris model's depth has no common origin with the mesh; like MediaPipe's refined mesh, give the whole
    # iris the mean depth of the eye's contour.
    out[:, 2] = mesh[list(contour), 2].mean()
    return out


def face_landmarks(image: np.ndarray, detection: FaceDetection) -> np.ndarray:
    """The (478, 3) float32 face mesh of one detected face, in image pixels (see the module docstring).

    Raises ``FaceError`` when the mesh model finds no face in the crop around the detection.
    """
    _check_image(image)
    mesh, presence = _mesh(image, face_crop_transform(detection))
    if presence < FACE_PRESENCE_MIN_SCORE:
        raise FaceError(
            f"the face mesh could not be fitted to the detected face (presence {presence:.2f}); "
            "use a sharper, well-lit photo with the face clearly visible"
        )
    right = _iris(image, mesh, RIGHT_EYE_CORNERS, RIGHT_EYE_CONTOUR, mirror=False)
    left = _iris(image, mesh, LEFT_EYE_CORNERS, LEFT_EYE_CONTOUR, mirror=True)
    return np.concatenate([mesh, right, left]).astype(np.float32)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"expected an RGB uint8 image of shape (height, width, 3), got {got}")
