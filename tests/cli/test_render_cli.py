"""`avatarcast render` end to end on real speech and a real portrait, and its answers to bad input."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import soundfile as sf

from avatarcast.cli.main import main
from avatarcast.direction.storyboard import load_storyboard
from avatarcast.offline.encoding import inspect_video

FPS = 25


@pytest.fixture(scope="module")
def inputs(portraits, speech):
    wav = speech / "ljspeech" / "LJ001-0002.wav"  # 1.9 s: "in being comparatively modern."
    text = "in being comparatively modern."
    return portraits / "astronaut.png", wav, text


@pytest.fixture(scope="module")
def rendered(inputs, tmp_path_factory):
    portrait, wav, text = inputs
    d = tmp_path_factory.mktemp("render")
    out, sb, bp = d / "out.mp4", d / "storyboard.json", d / "blueprint.mp4"
    rc = main(["render", "--portrait", str(portrait), "--audio", str(wav), "--transcript", text,
               "--instruction", "smile and nod at the start", "--size", "256x256", "--fps", str(FPS),
               "--workers", "2", "--storyboard-out", str(sb), "--blueprint-out", str(bp), "-o", str(out),
               "--no-progress"])
    return rc, out, sb, bp, sf.info(str(wav)).duration


def test_render_writes_a_playable_mp4_as_long_as_the_speech(rendered):
    rc, out, _, _, duration_s = rendered
    assert rc == 0
    info = inspect_video(out)  # decodes every frame and audio sample
    assert (info.width, info.height) == (256, 256)
    assert info.n_frames == math.ceil(duration_s * FPS)
    assert info.audio_duration_s == pytest.approx(duration_s, abs=1e-3)
    assert info.video_start_s == pytest.approx(0.0, abs=1e-6) and info.audio_start_s == pytest.approx(0.0, abs=1e-6)
    assert info.video_duration_s == pytest.approx(info.n_frames / FPS, abs=1e-3)


def test_storyboard_out_and_blueprint_preview(rendered):
    _, _, sb_path, bp_path, duration_s = rendered
    sb = load_storyboard(sb_path)
    assert sb.duration_s == pytest.approx(duration_s, abs=1e-3)
    assert any(a.kind.value == "nod" for a in sb.actions), "the instruction asked for a nod"
    preview = inspect_video(bp_path)
    assert preview.height <= 256 and preview.fps < FPS
    assert preview.video_duration_s == pytest.approx(duration_s, abs=1.0 / preview.fps + 1e-3)


def test_rendering_a_saved_storyboard_reproduces_the_video(rendered, inputs, tmp_path):
    _, out, sb_path, _, _ = rendered
    portrait, wav, text = inputs
    again = tmp_path / "again.mp4"
    rc = main(["render", "--portrait", str(portrait), "--audio", str(wav), "--transcript", text,
               "--storyboard", str(sb_path), "--size", "256x256", "--fps", str(FPS), "--executor", "inline",
               "-o", str(again), "--no-progress"])
    assert rc == 0
    assert again.read_bytes() == out.read_bytes()


# ---- bad input: a one-line error, a non-zero status, never a traceback ------------------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, portraits):
    d = tmp_path_factory.mktemp("bad")
    (d / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" + bytes(range(256)) * 4)
    sf.write(str(d / "empty.wav"), np.zeros(0, np.float32), 16000)
    sf.write(str(d / "silent.wav"), np.zeros(32000, np.float32), 16000)
    sky = np.zeros((400, 400, 3), np.uint8)
    sky[:] = np.linspace(80, 200, 400, dtype=np.uint8)[:, None, None]
    cv2.imwrite(str(d / "no_face.png"), sky)
    (d / "broken.json").write_text("{ not json", encoding="utf-8")
    (d / "wrong_length.json").write_text(json.dumps(
        {"duration_s": 30.0, "segments": [{"start_s": 0.0, "end_s": 30.0}]}), encoding="utf-8")
    (d / "bad_action.json").write_text(json.dumps(
        {"duration_s": 1.9, "segments": [{"start_s": 0.0, "end_s": 1.9}],
         "actions": [{"kind": "backflip", "time_s": 0.5}]}), encoding="utf-8")
    return d


def _render_args(portrait, audio, out, *extra):
    return ["render", "--portrait", str(portrait), "--audio", str(audio), "-o", str(out), "--size", "128x128",
            "--executor", "inline", "--no-progress", *extra]


@pytest.mark.parametrize("case, expect", [
    ("missing_audio", "audio"),
    ("missing_portrait", "portrait"),
    ("corrupt_audio", "corrupt"),
    ("empty_audio", "empty"),
    ("silent_audio", "no speech"),
    ("no_face", "face"),
    ("size_not_wxh", "--size"),
    ("size_too_large", "too large"),
    ("size_odd", "even"),
    ("fps_too_high", "--fps"),
    ("storyboard_not_json", "JSON"),
    ("storyboard_wrong_length", "audio is"),
    ("storyboard_unknown_action", "actions[0].kind"),
    ("neural_without_model", "--model-dir"),
    ("llm_without_url", "--llm-url"),
    ("llm_url_not_http", "http"),
    ("output_folder_missing", "does not exist"),
])
def test_bad_input_is_reported_without_traceback(case, expect, inputs, bad_files, tmp_path, capsys):
    portrait, wav, _ = inputs
    out = tmp_path / "out.mp4"
    args = {
        "missing_audio": _render_args(portrait, tmp_path / "nope.wav", out),
        "missing_portrait": _render_args(tmp_path / "nobody.png", wav, out),
        "corrupt_audio": _render_args(portrait, bad_files / "corrupt.wav", out),
        "empty_audio": _render_args(portrait, bad_files / "empty.wav", out),
        "silent_audio": _render_args(portrait, bad_files / "silent.wav", out),
        "no_face": _render_args(bad_files / "no_face.png", wav, out),
        "size_not_wxh": _render_args(portrait, wav, out) + ["--size", "512"],
        "size_too_large": _render_args(portrait, wav, out) + ["--size", "3840x2160"],
        "size_odd": _render_args(portrait, wav, out) + ["--size", "255x256"],
        "fps_too_high": _render_args(portrait, wav, out) + ["--fps", "240"],
        "storyboard_not_json": _render_args(portrait, wav, out, "--storyboard", str(bad_files / "broken.json")),
        "storyboard_wrong_length": _render_args(portrait, wav, out, "--storyboard",
                                                str(bad_files / "wrong_length.json")),
        "storyboard_unknown_action": _render_args(portrait, wav, out, "--storyboard",
                                                  str(bad_files / "bad_action.json")),
        "neural_without_model": _render_args(portrait, wav, out, "--generator", "neural"),
        "llm_without_url": _render_args(portrait, wav, out, "--director", "llm"),
        "llm_url_not_http": _render_args(portrait, wav, out, "--director", "llm", "--llm-url", "ftp://x",
                                         "--llm-model", "m"),
        "output_folder_missing": _render_args(portrait, wav, tmp_path / "no" / "such" / "out.mp4"),
    }[case]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, err
    assert expect.lower() in error_lines[0].lower(), error_lines[0]
    assert not out.exists()


def test_allow_silence_renders_an_idle_avatar(inputs, bad_files, tmp_path):
    portrait, _, _ = inputs
    out = tmp_path / "idle.mp4"
    rc = main(_render_args(portrait, bad_files / "silent.wav", out, "--allow-silence"))
    assert rc == 0
    info = inspect_video(out)
    assert info.n_frames == 50 and info.audio_duration_s == pytest.approx(2.0, abs=1e-3)


def test_llm_director_that_cannot_be_reached_falls_back_to_rules(inputs, tmp_path, caplog):
    """A closed port on loopback: the render still succeeds, with the rule-based storyboard, and says why."""
    import socket

    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    portrait, wav, text = inputs
    out, sb_path = tmp_path / "llm.mp4", tmp_path / "sb.json"
    rc = main(_render_args(portrait, wav, out, "--transcript", text, "--director", "llm",
                           "--llm-url", f"http://127.0.0.1:{port}/v1", "--llm-model", "tiny",
                           "--storyboard-out", str(sb_path)))
    assert rc == 0 and out.exists()
    sb = load_storyboard(sb_path)
    assert sb.director == "rules" and sb.fallback, sb


def test_joins_out_lists_the_first_frame_of_every_later_clip(inputs, tmp_path):
    portrait, wav, text = inputs
    out, joins_path = tmp_path / "j.mp4", tmp_path / "joins.json"
    rc = main(_render_args(portrait, wav, out, "--keyframe-spacing", "0.5", "--joins-out", str(joins_path)))
    assert rc == 0
    data = json.loads(joins_path.read_text())
    joins = data["joins"]
    assert joins == sorted(joins) and len(joins) >= 2
    assert 0 < joins[0] and joins[-1] < data["n_frames"] == inspect_video(out).n_frames


def test_library_messages_name_settings_and_the_command_line_names_its_flags():
    """Library errors name a setting by its parameter name (so the REST API and Python callers read it as theirs);
    the command line shows the flags of the command that ran, and leaves everything else alone."""
    from avatarcast.cli.main import as_flags
    from avatarcast.core.errors import InputError
    from avatarcast.offline.cascade import check_fps, parse_size

    for call, name in ((lambda: parse_size("512"), "size"), (lambda: check_fps(240), "fps")):
        with pytest.raises(InputError) as info:
            call()
        text = str(info.value)
        assert f"`{name}`" in text and "--" not in text
        assert f"--{name}" in as_flags(text, {name, "workers"})
    assert as_flags("set `allow_silence`, see `portrait` and `x264_params`", {"allow_silence", "x264_params"}) == \
        "set --allow-silence, see `portrait` and --x264-params"
