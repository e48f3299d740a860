"""`avatarcast prepare` from the command line: the saved folder, face choice, and errors without tracebacks."""

from __future__ import annotations

import json

import cv2
import numpy as np

from avatarcast.cli.main import main
from avatarcast.face.avatar import Avatar


def _assert_clean_error(code: int, capsys, *fragments: str) -> None:
    out, err = capsys.readouterr()
    assert code != 0
    assert err.startswith("error: "), err
    assert "Traceback" not in err + out
    for fragment in fragments:
        assert fragment in err, err


def test_prepare_writes_a_loadable_avatar_folder(portraits, tmp_path, capsys):
    out_dir = tmp_path / "astronaut"
    assert main(["prepare", str(portraits / "astronaut.png"), "-o", str(out_dir)]) == 0
    out, _ = capsys.readouterr()
    assert f"avatar saved to {out_dir}" in out and "head pose" in out
    meta = json.loads((out_dir / "avatar.json").read_text())
    assert meta["format"] == "avatarcast-avatar" and meta["num_landmarks"] == 478
    avatar = Avatar.load(out_dir)
    assert avatar.landmarks.shape == (478, 3) and avatar.source.endswith("astronaut.png")


def test_face_option_picks_the_face(portraits, tmp_path, capsys):
    path = str(portraits / "two_people.jpg")
    assert main(["prepare", path, "-o", str(tmp_path / "left"), "--face", "0"]) == 0
    assert main(["prepare", path, "-o", str(tmp_path / "right"), "--face", "1"]) == 0
    capsys.readouterr()
    left, right = Avatar.load(tmp_path / "left"), Avatar.load(tmp_path / "right")
    width = left.image.shape[1]
    assert left.face_box[2] < width / 2 < right.face_box[0]


def test_face_index_out_of_range_is_a_clear_error(portraits, tmp_path, capsys):
    code = main(["prepare", str(portraits / "two_people.jpg"), "-o", str(tmp_path / "x"), "--face", "5"])
    _assert_clean_error(code, capsys, "out of range", "2 faces")
    assert not (tmp_path / "x").exists()


def test_missing_portrait_is_a_clear_error(tmp_path, capsys):
    code = main(["prepare", str(tmp_path / "nobody.jpg"), "-o", str(tmp_path / "x")])
    _assert_clean_error(code, capsys, "not found")
    assert code == 2


def test_non_image_file_is_a_clear_error(tmp_path, capsys):
    fake = tmp_path / "portrait.png"
    fake.write_text("hello")
    code = main(["prepare", str(fake), "-o", str(tmp_path / "x")])
    _assert_clean_error(code, capsys, "as an image")


def test_no_face_is_a_clear_error(tmp_path, capsys):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 200, np.uint8))
    code = main(["prepare", str(blank), "-o", str(tmp_path / "x")])
    _assert_clean_error(code, capsys, "no face found")


def test_output_that_is_a_file_is_a_clear_error(portraits, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    code = main(["prepare", str(portraits / "astronaut.png"), "-o", str(target)])
    _assert_clean_error(code, capsys, "not a folder")
