"""`avatarcast eval` from the command line: outputs, arguments and the errors a user can make."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from avatarcast.cli.main import main

FPS = 25
SIZE_PX = 192


def write_video(path: Path, frames: list[np.ndarray], audio: np.ndarray | None = None, rate_hz: int = 16000) -> Path:
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=Fraction(FPS))
    video.width, video.height = frames[0].shape[1], frames[0].shape[0]
    video.pix_fmt = "yuv420p"
    video.options = {"preset": "ultrafast"}
    sound = None
    if audio is not None:
        sound = container.add_stream("aac", rate=rate_hz)
        sound.layout = "mono"
    for frame in frames:
        for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if sound is not None:
        for start in range(0, len(audio), 1024):
            chunk = av.AudioFrame.from_ndarray(audio[start:start + 1024].reshape(1, -1), format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = rate_hz, start
            for packet in sound.encode(chunk):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    container.close()
    return path


@pytest.fixture(scope="module")
def portrait_video(tmp_path_factory, portraits: Path, speech: Path) -> Path:
    """Two seconds of the astronaut portrait drifting slowly, with real speech as its audio track."""
    import soundfile as sf

    image = cv2.cvtColor(cv2.imread(str(portraits / "astronaut.png")), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image[40:360, 60:380], (SIZE_PX, SIZE_PX), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(2 * FPS):
        m = np.float32([[1, 0, 0.2 * i], [0, 1, 0]])
        frames.append(cv2.warpAffine(image, m, (SIZE_PX, SIZE_PX), borderMode=cv2.BORDER_REFLECT))
    samples, rate = sf.read(str(speech / "ljspeech" / "LJ001-0002.wav"), dtype="float32")
    return write_video(tmp_path_factory.mktemp("cli") / "portrait.mp4", frames, samples[: 2 * rate], rate)


def test_eval_writes_json_and_report(tmp_path, portrait_video, portraits, capsys):
    joins = tmp_path / "joins.json"
    joins.write_text("[12, 25, 37]")
    out, png = tmp_path / "metrics.json", tmp_path / "report.png"
    rc = main(["eval", str(portrait_video), "--portrait", str(portraits / "astronaut.png"), "--json", str(out),
               "--report", str(png), "--joins", str(joins), "--series"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "lip sync: correlation" in printed and "identity: distance to portrait" in printed
    data = json.loads(out.read_text())
    assert data["video"]["n_frames"] == 2 * FPS and data["video"]["fps"] == FPS
    assert data["audio"]["source"] == "video" and data["audio"]["duration_s"] == pytest.approx(2.0, abs=0.1)
    assert set(data["lipsync"]) >= {"correlation", "best_lag_frames", "open_speech", "open_silence", "silence_ratio"}
    assert data["lipsync"]["lag_convention"].startswith("positive = video late")
    assert data["identity"]["frames_used"] >= 1 and data["identity"]["max"] < 0.4  # the same face, scaled and moved
    assert data["seams"]["joins"] == 3
    assert len(data["series"]["mouth_open"]) == 2 * FPS
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_with_separate_audio_and_joins_every(tmp_path, portrait_video, portraits, speech):
    out = tmp_path / "m.json"
    rc = main(["eval", str(portrait_video), "--portrait", str(portraits / "astronaut.png"),
               "--audio", str(speech / "jfk.flac"), "--joins-every", "10", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["audio"]["source"].endswith("jfk.flac")
    assert data["seams"]["joins"] == 4
    assert "series" not in data


def test_missing_video_is_reported(tmp_path, portraits, capsys):
    rc = main(["eval", str(tmp_path / "nope.mp4"), "--portrait", str(portraits / "astronaut.png")])
    assert rc == 2
    assert "video not found" in capsys.readouterr().err


def test_missing_portrait_argument_is_a_usage_error(portrait_video, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(portrait_video)])
    assert exc.value.code == 2
    assert "--portrait" in capsys.readouterr().err


def test_missing_portrait_file_and_audio_file(tmp_path, portrait_video, portraits, capsys):
    assert main(["eval", str(portrait_video), "--portrait", str(tmp_path / "who.png")]) == 2
    assert "portrait not found" in capsys.readouterr().err
    assert main(["eval", str(portrait_video), "--portrait", str(portraits / "astronaut.png"),
                 "--audio", str(tmp_path / "none.wav")]) == 2
    assert "audio file not found" in capsys.readouterr().err


def test_no_face_in_video(tmp_path, portraits, capsys):
    sky = [np.full((SIZE_PX, SIZE_PX, 3), (90, 140, 200 - i), np.uint8) for i in range(10)]
    video = write_video(tmp_path / "sky.mp4", sky)
    rc = main(["eval", str(video), "--portrait", str(portraits / "astronaut.png")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no face found in any of the 10 frames") and "Traceback" not in err


def test_portrait_without_a_face(tmp_path, portrait_video, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 200, np.uint8))
    assert main(["eval", str(portrait_video), "--portrait", str(blank)]) == 2
    assert "no face found in the portrait" in capsys.readouterr().err


def test_not_a_video_and_bad_joins(tmp_path, portrait_video, portraits, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    assert main(["eval", str(text), "--portrait", str(portraits / "astronaut.png")]) == 2
    assert "cannot decode video" in capsys.readouterr().err
    joins = tmp_path / "joins.json"
    joins.write_text('{"joins": "every second"}')
    assert main(["eval", str(portrait_video), "--portrait", str(portraits / "astronaut.png"),
                 "--joins", str(joins)]) == 2
    assert "list of non-negative frame indices" in capsys.readouterr().err
