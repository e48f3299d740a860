"""Avatar preparation on real portraits: face choice, refusals, scaling, head pose, regions, warp mesh, save/load."""

from __future__ import annotations

import json
import logging
import time

import cv2
import numpy as np
import pytest

from avatarcast.core.errors import FaceError, InputError
from avatarcast.face import avatar as av
from avatarcast.face.avatar import Avatar, prepare_avatar
from avatarcast.face.loading import load_avatar


def _rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def obama_avatar(portraits) -> Avatar:
    return prepare_avatar(portraits / "obama.jpg")


@pytest.fixture(scope="module")
def astronaut_avatar(portraits) -> Avatar:
    return prepare_avatar(portraits / "astronaut.png")


def _interocular(a: Avatar) -> float:
    return float(np.linalg.norm(a.landmarks[468, :2] - a.landmarks[473, :2]))


def _inside(point, polygon) -> bool:
    return cv2.pointPolygonTest(polygon.reshape(-1, 1, 2).astype(np.float32), tuple(map(float, point)), False) > 0


@pytest.mark.parametrize("name", ["astronaut.png", "obama.jpg", "obama-1080p.jpg"])
def test_prepares_real_portraits(portraits, name):
    a = prepare_avatar(portraits / name)
    h, w = a.image.shape[:2]
    assert a.image.dtype == np.uint8 and a.landmarks.shape == (478, 3) and a.landmarks.dtype == np.float32
    x0, y0, x1, y1 = a.face_box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    inside = (a.landmarks[:, 0] >= x0 - 1) & (a.landmarks[:, 0] <= x1 + 1) & (a.landmarks[:, 1] >= y0 - 1) \
        & (a.landmarks[:, 1] <= y1 + 1)
    assert inside.all()
    yaw, pitch, roll = a.head_pose_deg
    assert abs(roll) < 4.0 and abs(yaw) < 8.0  # frontal portraits
    assert a.source.endswith(name)


def test_regions_are_where_faces_have_them(obama_avatar):
    a = obama_avatar
    lm = a.landmarks
    assert set(a.regions) == set(av.REGIONS)
    y = {k: lm[v, 1].mean() for k, v in a.regions.items()}
    x = {k: lm[v, 0].mean() for k, v in a.regions.items()}
    assert y["right_brow"] < y["right_eye"] < y["nose"] < y["mouth_outer"] < y["jaw"]
    assert y["left_brow"] < y["left_eye"] < y["nose"]
    assert x["right_eye"] < x["nose"] < x["left_eye"] and x["right_brow"] < x["left_brow"]
    for eye, iris in (("right_eye", "right_iris"), ("left_eye", "left_iris")):
        assert _inside(lm[a.regions[iris][0], :2], lm[a.regions[eye], :2])
    assert _inside(lm[a.regions["mouth_inner"], :2].mean(0), lm[a.regions["mouth_outer"], :2])
    assert set(a.regions["jaw"].tolist()) <= set(a.regions["face_oval"].tolist())
    for name, idx in a.regions.items():
        if name not in ("face_oval", "jaw"):
            assert all(_inside(p, lm[a.regions["face_oval"], :2]) for p in lm[idx, :2]), name


def test_warp_mesh_covers_the_face_but_not_its_openings(obama_avatar):
    a = obama_avatar
    tri, pts = a.triangles, a.landmarks[:, :2]
    assert tri.dtype == np.int32 and tri.ndim == 2 and tri.shape[1] == 3 and len(tri) > 700
    assert tri.min() >= 0 and tri.max() < 468
    e1, e2 = pts[tri[:, 1]] - pts[tri[:, 0]], pts[tri[:, 2]] - pts[tri[:, 0]]
    area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) / 2
    oval = pts[a.regions["face_oval"]].astype(np.float32)
    openings = sum(abs(cv2.contourArea(pts[a.regions[k]].astype(np.float32)))
                   for k in ("mouth_inner", "left_eye", "right_eye"))
    assert area.sum() == pytest.approx(cv2.contourArea(oval) - openings, rel=0.05)
    upper_lip = {80, 81, 82, 13, 312, 311, 310, 191, 415}
    lower_lip = {88, 178, 87, 14, 317, 402, 318, 95, 324}
    for t in tri:
        s = set(t.tolist())
        assert not (s & upper_lip and s & lower_lip), t
        assert not (s & {159, 158, 160} and s & {145, 144, 153}), t
        assert not (s & {386, 385, 387} and s & {374, 373, 380}), t
    for name in ("mouth_inner", "left_eye", "right_eye"):
        ring = pts[a.regions[name]]
        assert not any(_inside(c, ring) for c in pts[tri].mean(axis=1)), name


def test_head_pose_follows_an_in_plane_rotation(portraits, obama_avatar):
    image = _rgb(portraits / "obama.jpg")
    h, w = image.shape[:2]
    # OpenCV's positive angle turns the picture counter-clockwise: the head tilts anticlockwise (negative roll)
    tilted = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1.0), (w, h),
                            borderMode=cv2.BORDER_REPLICATE)
    yaw, pitch, roll = prepare_avatar(tilted).head_pose_deg
    base_yaw, base_pitch, base_roll = obama_avatar.head_pose_deg
    assert roll - base_roll == pytest.approx(-15.0, abs=2.0)
    assert yaw == pytest.approx(base_yaw, abs=3.0) and pitch == pytest.approx(base_pitch, abs=3.0)


def test_head_pose_of_turned_faces_and_their_mirror_images(portraits):
    # in two_people.jpg both men turn their heads towards the viewer's right and look down into the camera
    image = _rgb(portraits / "two_people.jpg")
    for index in (0, 1):
        yaw, pitch, roll = prepare_avatar(image, face_index=index).head_pose_deg
        assert yaw > 5.0
        # mirroring the picture turns the head the other way and tilts it the other way; the nod stays
        mirrored = np.ascontiguousarray(image[:, ::-1])
        m_yaw, m_pitch, m_roll = prepare_avatar(mirrored, face_index=1 - index).head_pose_deg
        assert m_yaw == pytest.approx(-yaw, abs=2.0)
        assert m_roll == pytest.approx(-roll, abs=1.0)
        assert m_pitch == pytest.approx(pitch, abs=2.0)


def test_several_faces_largest_by_default_and_index_picks(portraits, caplog):
    path = portraits / "two_people.jpg"
    with caplog.at_level(logging.WARNING, logger="avatarcast"):
        default = prepare_avatar(path)
    assert "2 faces" in caplog.text
    left = prepare_avatar(path, face_index=0)
    right = prepare_avatar(path, face_index=1)
    assert left.face_box[2] < right.face_box[0]
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (left.face_box, right.face_box)]
    assert default.face_box == (left, right)[int(np.argmax(areas))].face_box
    with pytest.raises(FaceError, match=r"face index 2 is out of range.*2 faces"):
        prepare_avatar(path, face_index=2)
    with pytest.raises(FaceError, match="out of range"):
        prepare_avatar(path, face_index=-1)


def test_partial_face_is_accepted_with_a_warning(portraits, caplog):
    path = portraits / "obama_partial_face.jpg"
    with caplog.at_level(logging.WARNING, logger="avatarcast"):
        a = prepare_avatar(path)
    assert "cut by the image edge" in caplog.text
    assert (a.landmarks[a.regions["face_oval"], 0] < 0).any()  # the mesh extends past the edge
    for name in ("left_eye", "right_eye", "mouth_outer"):
        centre = a.landmarks[a.regions[name], :2].mean(0)
        assert 0 < centre[0] < a.image.shape[1]


def test_face_cut_through_an_eye_is_refused(portraits, obama_avatar):
    image = _rgb(portraits / "obama.jpg")
    eye_x = int(obama_avatar.landmarks[468, 0])  # cut through the subject's right iris
    with pytest.raises(FaceError, match=r"cut by the image edge.*right eye"):
        prepare_avatar(np.ascontiguousarray(image[:, eye_x:]))


@pytest.mark.parametrize("kind", ["flat", "landscape"])
def test_no_face_is_a_clear_error(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "flat":
        image = np.full((400, 600, 3), (40, 120, 200), np.uint8)
    else:  # sky gradient over noisy green hills
        image = np.zeros((400, 600, 3), np.uint8)
        image[:, :, 2] = np.linspace(255, 150, 400)[:, None]
        image[:, :, 1] = np.linspace(200, 120, 400)[:, None]
        hills = (260 + 40 * np.sin(np.arange(600) / 60.0)).astype(int)
        for x, top in enumerate(hills):
            image[top:, x] = (30, 110, 40)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    path = tmp_path / f"{kind}.png"
    cv2.imwrite(str(path), image)
    with pytest.raises(FaceError, match="no face found"):
        prepare_avatar(path)


def test_tiny_image_is_refused_with_the_minimum_size(portraits, tmp_path):
    small = cv2.resize(cv2.imread(str(portraits / "obama.jpg")), (60, 75), interpolation=cv2.INTER_AREA)
    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), small)
    with pytest.raises(FaceError, match=f"at least {av.MIN_FACE_SIZE_PX} pixels"):
        prepare_avatar(path)


def test_tiny_face_in_a_larger_image_is_refused_with_the_minimum_size(portraits):
    image = _rgb(portraits / "obama-1080p.jpg")
    small = cv2.resize(image, (320, 180), interpolation=cv2.INTER_AREA)  # the face becomes ~45 px
    with pytest.raises(FaceError, match=f"{av.MIN_FACE_SIZE_PX} pixels"):
        prepare_avatar(small)


def test_huge_image_is_scaled_and_works(portraits, tmp_path, obama_avatar):
    image = cv2.imread(str(portraits / "obama.jpg"))
    huge = cv2.resize(image, (4800, 6000), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "huge.jpg"
    cv2.imwrite(str(path), huge, [cv2.IMWRITE_JPEG_QUALITY, 90])
    a = prepare_avatar(path)
    assert max(a.image.shape[:2]) == av.MAX_IMAGE_SIDE_PX and a.image.shape[:2] == (2048, 1638)
    # the same face as in the original, scaled
    scale_x, scale_y = 1638 / 910, 2048 / 1137
    expected = obama_avatar.landmarks[:, :2] * [scale_x, scale_y]
    err = np.linalg.norm(a.landmarks[:, :2] - expected, axis=1).mean()
    assert err < 0.05 * _interocular(a)


def test_unreadable_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        prepare_avatar(tmp_path / "missing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(5000))
    with pytest.raises(InputError, match="cannot read .* as an image"):
        prepare_avatar(corrupt)
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture\n")
    with pytest.raises(InputError, match="cannot read .* as an image"):
        prepare_avatar(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="cannot read"):
        prepare_avatar(empty)
    with pytest.raises(InputError, match="is a folder"):
        prepare_avatar(tmp_path)
    with pytest.raises(InputError, match="RGB uint8"):
        prepare_avatar(np.zeros((100, 100), np.float32))


def test_save_load_round_trip(tmp_path, astronaut_avatar):
    a = astronaut_avatar
    folder = tmp_path / "avatar"
    a.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "avatar.json", "image.png"]
    meta = json.loads((folder / "avatar.json").read_text())
    assert meta["format_version"] == av.AVATAR_FORMAT_VERSION and meta["image_size"] == [512, 512]
    start = time.perf_counter()
    b = Avatar.load(folder)
    load_s = time.perf_counter() - start
    assert load_s < 1.0  # a few milliseconds normally; generous for a busy machine
    np.testing.assert_array_equal(b.image, a.image)
    np.testing.assert_array_equal(b.landmarks, a.landmarks)
    np.testing.assert_array_equal(b.triangles, a.triangles)
    assert b.face_box == a.face_box and b.source == a.source
    assert b.head_pose_deg == pytest.approx(a.head_pose_deg, abs=1e-3)
    assert set(b.regions) == set(a.regions)
    for k in a.regions:
        np.testing.assert_array_equal(b.regions[k], a.regions[k])
    assert isinstance(load_avatar(folder), Avatar)


def test_load_refuses_foreign_or_outdated_folders(tmp_path, astronaut_avatar):
    with pytest.raises(InputError, match="not an avatar folder"):
        Avatar.load(tmp_path)
    folder = tmp_path / "old"
    astronaut_avatar.save(folder)
    meta = json.loads((folder / "avatar.json").read_text())
    meta["format_version"] = 99
    (folder / "avatar.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="version 99"):
        load_avatar(folder)
    folder2 = tmp_path / "damaged"
    astronaut_avatar.save(folder2)
    (folder2 / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged"):
        load_avatar(folder2)


def test_load_avatar_from_an_image_and_the_default(portraits):
    a = load_avatar(portraits / "astronaut.png")
    assert a.landmarks.shape == (478, 3)
    d = load_avatar(None)
    assert d.source == "default portrait" and d.image.shape == (512, 512, 3)
    assert abs(d.head_pose_deg[2]) < 5.0


def test_mirror_pairs_match_the_known_symmetry():
    _, pairs = av.canonical_mesh()
    for a, b in ((33, 263), (133, 362), (61, 291), (78, 308), (234, 454), (468 - 1, 467)):
        if b == 467:
            continue
        assert pairs[a] == b and pairs[b] == a
    for midline in (1, 4, 10, 13, 14, 152, 168):
        assert pairs[midline] == midline
    assert np.array_equal(pairs[pairs], np.arange(468))
