"""End to end: real speech rendered on real portraits by `avatarcast render`, then measured by `avatarcast eval`
with dlib's detector, a model family independent of the renderer's face mesh.

Thresholds, from what the measure can tell apart (figures measured on these renders, 256x256 at 25 fps):
- Correlation over the whole clip is dominated by speech against pauses: the same render scored against the
  *other* case's speech (a different utterance with a similar speech/pause layout) still reaches r = 0.53-0.59 at
  lag 0 and 0.63-0.64 at its best lag, while the right speech gives r = 0.90-0.94. So a render must clear r > 0.7,
  above any lag of the wrong speech, not the r > 0.4 that a mouth opening on any speech would pass.
- Within speech frames only (does the mouth follow the syllables?) the right speech gives r = 0.52-0.85 and the
  wrong one 0.15-0.20: a render must clear 0.35.
- The best lag was 0 or -1 frames (the mouth track looks up to 60 ms ahead): within one frame of 0.
- The median mouth opening in pauses was 10-25 % of that in speech: under half.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avatarcast.cli.main import main

MIN_CORRELATION = 0.7
MIN_CORRELATION_IN_SPEECH = 0.35
MAX_LAG_FRAMES = 1
MAX_SILENCE_RATIO = 0.5
SIZE = "256x256"


def jfk_excerpt(speech: Path, out: Path) -> Path:
    """The first 5.5 s of the inaugural-address clip ("And so, my fellow Americans, ask not..."), with its natural
    pauses and crowd noise, in the source's own format: 44.1 kHz stereo 24-bit FLAC."""
    info = sf.info(str(speech / "jfk.flac"))
    data, rate = sf.read(str(speech / "jfk.flac"), dtype="int32", frames=int(5.5 * info.samplerate))
    sf.write(str(out), data, rate, format="FLAC", subtype=info.subtype)
    return out


def lj_with_pause(speech: Path, out: Path) -> Path:
    """Two LJ Speech sentences with a 0.8 s pause between them, 22.05 kHz mono PCM16 WAV like the source."""
    a, rate = sf.read(str(speech / "ljspeech" / "LJ001-0002.wav"), dtype="int16")
    b, rate_b = sf.read(str(speech / "ljspeech" / "LJ001-0008.wav"), dtype="int16")
    assert rate == rate_b
    gap = np.zeros(int(0.8 * rate), np.int16)
    lead = np.zeros(int(0.4 * rate), np.int16)
    sf.write(str(out), np.concatenate([lead, a, gap, b, lead]), rate, subtype="PCM_16")
    return out


CASES = {
    # portrait, audio builder, extra render arguments, evaluate against the file (True) or the video's own track
    "astronaut-jfk-flac": ("astronaut.png", jfk_excerpt, ["--executor", "inline"], False),
    "obama-ljspeech-wav": ("obama.jpg", lj_with_pause, ["--executor", "process", "--workers", "2"], True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_speech_is_lip_synced(tmp_path, portraits, speech, case, capsys):
    portrait_name, make_audio, render_args, eval_with_file = CASES[case]
    portrait = portraits / portrait_name
    suffix = ".flac" if "flac" in case else ".wav"
    audio = make_audio(speech, tmp_path / f"speech{suffix}")
    video = tmp_path / "avatar.mp4"
    rc = main(["render", "--portrait", str(portrait), "--audio", str(audio), "--size", SIZE, "--fps", "25",
               "-o", str(video), "--no-progress", *render_args])
    assert rc == 0 and video.is_file()

    metrics_path = tmp_path / "metrics.json"
    eval_args = ["eval", str(video), "--portrait", str(portrait), "--json", str(metrics_path),
                 "--report", str(tmp_path / "report.png")]
    if eval_with_file:
        eval_args += ["--audio", str(audio)]
    assert main(eval_args) == 0
    m = json.loads(metrics_path.read_text())
    ls, ident = m["lipsync"], m["identity"]
    with capsys.disabled():
        print(f"\n{case}: r={ls['correlation']:.3f} best lag {ls['best_lag_frames']} "
              f"(r={ls['best_lag_correlation']:.3f}); open speech {ls['open_speech']:.3f} silence "
              f"{ls['open_silence']:.3f} ratio {ls['silence_ratio']:.3f}; identity mean {ident['mean']:.3f} "
              f"max {ident['max']:.3f}")

    assert m["video"]["face_fraction"] == 1.0
    assert m["video"]["duration_s"] == pytest.approx(sf.info(str(audio)).duration, abs=0.05)
    assert ls["correlation"] > MIN_CORRELATION
    assert ls["correlation_in_speech"] > MIN_CORRELATION_IN_SPEECH
    assert abs(ls["best_lag_frames"]) <= MAX_LAG_FRAMES
    assert ls["silence_frames"] >= 10 and ls["speech_frames"] >= 40
    assert ls["silence_ratio"] < MAX_SILENCE_RATIO
    assert ident["max"] < 0.6  # dlib's same-person threshold: the avatar is still the portrait's person

    # control: the same video against the other case's speech must not pass
    from avatarcast_bench.evaluation import evaluate_video

    other = next(c for c in CASES if c != case)
    wrong = CASES[other][1](speech, tmp_path / f"other{'.flac' if 'flac' in other else '.wav'}")
    control = evaluate_video(video, portrait, wrong, identity_frames=1).lipsync
    with capsys.disabled():
        print(f"  control with the other speech: r={control['correlation']:.3f}, "
              f"max |r| over lags {max(abs(v) for v in control['correlation_by_lag'].values()):.3f}; "
              f"in speech r={ls['correlation_in_speech']:.3f}, control in speech r={control['correlation_in_speech']:.3f}")
    assert max(abs(v) for v in control["correlation_by_lag"].values()) < MIN_CORRELATION
    assert control["correlation_in_speech"] < MIN_CORRELATION_IN_SPEECH
    assert control["correlation"] < ls["correlation"] - 0.2
