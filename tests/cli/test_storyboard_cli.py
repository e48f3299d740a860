"""`avatarcast storyboard`: schema export and validation from the command line."""

from __future__ import annotations

import json

from avatarcast.cli.main import main


def test_schema_is_written_and_describes_actions(tmp_path):
    out = tmp_path / "schema.json"
    assert main(["storyboard", "schema", "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    text = json.dumps(schema)
    assert "segments" in text and "actions" in text and "nod" in text


def test_validate_accepts_a_valid_storyboard(tmp_path, capsys):
    sb = {"version": 1, "duration_s": 3.0,
          "segments": [{"start_s": 0.0, "end_s": 3.0, "kind": "speech", "text": "hello", "emotion": "happy",
                        "intensity": 0.5}],
          "actions": [{"kind": "nod", "time_s": 0.5, "duration_s": 0.6, "intensity": 0.7}]}
    path = tmp_path / "sb.json"
    path.write_text(json.dumps(sb))
    assert main(["storyboard", "validate", str(path)]) == 0
    assert "ok: 1 segments, 1 actions" in capsys.readouterr().out


def test_validate_names_the_bad_field(tmp_path, capsys):
    sb = {"version": 1, "duration_s": 3.0,
          "segments": [{"start_s": 0.0, "end_s": 3.0, "kind": "speech"}],
          "actions": [{"kind": "moonwalk", "time_s": 0.5, "duration_s": 0.6}]}
    path = tmp_path / "sb.json"
    path.write_text(json.dumps(sb))
    assert main(["storyboard", "validate", str(path)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "actions" in err and "Traceback" not in err


def test_validate_reports_a_missing_file(tmp_path, capsys):
    assert main(["storyboard", "validate", str(tmp_path / "missing.json")]) != 0
    assert "error: " in capsys.readouterr().err
