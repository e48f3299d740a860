"""Face detection and the 478-point mesh on real portraits: decoding, geometry, iris sides, thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from avatarcast.core.errors import InputError
from avatarcast.face import mesh as fm


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def astronaut(portraits):
    return _rgb(portraits / "astronaut.png")


@pytest.fixture(scope="module")
def obama(portraits):
    return _rgb(portraits / "obama.jpg")


def _inside(point, polygon) -> bool:
    return cv2.pointPolygonTest(polygon.reshape(-1, 1, 2).astype(np.float32), tuple(map(float, point)), False) > 0


def test_anchor_counts_match_the_models():
    short = fm.ssd_anchors(128, (8, 16, 16, 16), 1.0)
    full = fm.ssd_anchors(192, (4,), 0.0)
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    assert short.min() > 0 and short.max() < 1 and full.min() > 0 and full.max() < 1
    # first layer: 16x16 cells, two anchors per cell, row-major
    assert np.allclose(short[0], short[1]) and np.allclose(short[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(full[48], [0.5 / 48, 1.5 / 48])


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    kps[1] += 1.0
    scores = np.array([0.9, 0.6, 0.8], np.float32)
    merged = fm.weighted_nms(boxes, kps, scores)
    assert len(merged) == 2
    box, k, score = merged[0]
    assert score == pytest.approx(0.9)
    assert box[0] == pytest.approx(0.6 / 1.5) and k[0, 0] == pytest.approx(0.6 / 1.5)
    assert np.allclose(merged[1][0], boxes[2])


@pytest.mark.parametrize("name", ["astronaut.png", "obama.jpg"])
def test_one_face_with_keypoints_inside_its_box(portraits, name):
    image = _rgb(portraits / name)
    faces = fm.detect_faces(image)
    assert len(faces) == 1
    face = faces[0]
    x0, y0, x1, y1 = face.box
    assert face.score > 0.7
    for x, y in face.keypoints[:4]:  # eyes, nose, mouth
        assert x0 < x < x1 and y0 < y < y1
    right_eye, left_eye, nose, mouth = face.keypoints[:4]
    assert right_eye[0] < nose[0] < left_eye[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]


def test_small_face_in_a_1080p_frame_is_found(portraits):
    image = _rgb(portraits / "obama-1080p.jpg")
    faces = fm.detect_faces(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.width < 0.2 * image.shape[1]  # a small face in a wide frame
    assert 0.35 * image.shape[1] < face.center[0] < 0.65 * image.shape[1]


def test_two_faces_sorted_left_to_right(portraits):
    faces = fm.detect_faces(_rgb(portraits / "two_people.jpg"))
    assert len(faces) == 2
    assert faces[0].box[2] < faces[1].box[0]


def test_no_face_in_a_flat_image():
    assert fm.detect_faces(np.full((480, 640, 3), 127, np.uint8)) == []


def test_landmark_layout_on_a_frontal_portrait(obama):
    face = fm.detect_faces(obama)[0]
    lm = fm.face_landmarks(obama, face)
    assert lm.shape == (478, 3) and lm.dtype == np.float32
    nose_tip, upper_lip, lower_lip, chin, forehead = lm[1], lm[13], lm[14], lm[152], lm[10]
    eyes_y = lm[[33, 133, 362, 263], 1]
    assert forehead[1] < eyes_y.min() and eyes_y.max() < nose_tip[1] < upper_lip[1] <= lower_lip[1] < chin[1]
    # the subject's right eye is on the image's left
    assert lm[33, 0] < lm[133, 0] < lm[1, 0] < lm[362, 0] < lm[263, 0]
    # the nose tip is the closest point to the camera among these
    assert lm[1, 2] < lm[[33, 263, 152, 10, 234, 454], 2].min()
    # each iris: centre inside its eye opening, the ring around the centre, right = image left
    for iris, eye in ((fm.RIGHT_IRIS, fm.RIGHT_EYE_CONTOUR), (fm.LEFT_IRIS, fm.LEFT_EYE_CONTOUR)):
        centre, ring = lm[iris[0], :2], lm[list(iris[1:]), :2]
        assert _inside(centre, lm[list(eye), :2])
        assert np.allclose(ring.mean(0), centre, atol=2.0)
        radius = np.linalg.norm(ring - centre, axis=1)
        eye_width = np.linalg.norm(lm[eye[0], :2] - lm[eye[8], :2])
        assert np.all((radius > 0.1 * eye_width) & (radius < 0.4 * eye_width))
        assert ring[0, 0] > centre[0] > ring[2, 0]  # ring point 1 towards the image's right, 3 towards its left
    assert lm[468, 0] < lm[473, 0]


def test_landmarks_follow_a_rotated_portrait(obama):
    """The crop is rotated by the eye line, so a tilted head gives the same mesh, rotated."""
    base = fm.face_landmarks(obama, fm.detect_faces(obama)[0])
    h, w = obama.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.0)
    tilted = cv2.warpAffine(obama, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lm = fm.face_landmarks(tilted, fm.detect_faces(tilted)[0])
    expected = base[:, :2] @ rot[:, :2].T + rot[:, 2]
    interocular = np.linalg.norm(base[468, :2] - base[473, :2])
    assert np.linalg.norm(lm[:, :2] - expected, axis=1).mean() < 0.05 * interocular


def test_mirrored_portrait_swaps_the_irises(astronaut):
    base = fm.face_landmarks(astronaut, fm.detect_faces(astronaut)[0])
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    lm = fm.face_landmarks(flipped, fm.detect_faces(flipped)[0])
    width = astronaut.shape[1]
    interocular = np.linalg.norm(base[468, :2] - base[473, :2])
    for a, b in ((468, 473), (473, 468)):
        mirrored = np.array([width - base[b, 0], base[b, 1]])
        assert np.linalg.norm(lm[a, :2] - mirrored) < 0.06 * interocular


def test_models_are_shared_and_thread_safe(astronaut, obama):
    images = [astronaut, obama] * 3
    expected = [fm.face_landmarks(im, fm.detect_faces(im)[0]) for im in images[:2]] * 3
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda im: fm.face_landmarks(im, fm.detect_faces(im)[0]), images))
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, atol=1e-3)
    assert fm._model("face_landmark.tflite") is fm._model("face_landmark.tflite")


def test_rejects_images_that_are_not_rgb_uint8(astronaut):
    with pytest.raises(InputError, match="RGB uint8"):
        fm.detect_faces(astronaut.astype(np.float32))
    with pytest.raises(InputError, match="RGB uint8"):
        fm.detect_faces(astronaut[..., 0])
