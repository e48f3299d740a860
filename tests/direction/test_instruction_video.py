"""An instruction's actions land where the storyboard puts them and can be seen in the video.

The example instruction of the design ("smile warmly and nod at the start; look surprised when you say X") is
rendered on real speech with its transcript; the head pitch and the brow height are then measured on the decoded
MP4 by the independent evaluator (dlib's 68 landmarks and ``solvePnP``), never read from the renderer.
"""

from __future__ import annotations

import numpy as np
import pytest

from avatarcast.direction.director import find_phrase
from avatarcast.direction.storyboard import ActionKind, Emotion

pytestmark = pytest.mark.slow

PHRASE = "differs from most"
INSTRUCTION = f"Smile warmly and nod at the start. Look surprised when you say '{PHRASE}'."
FPS = 25.0


@pytest.fixture(scope="module")
def directed(tmp_path_factory, speech, portraits, transcripts):
    from avatarcast.audio.alignment import align_transcript
    from avatarcast.audio.io import load_audio
    from avatarcast.offline.cascade import render_video
    from avatarcast_bench.evaluation import evaluate_video

    wav = speech / "ljspeech" / "LJ001-0001.wav"
    transcript = transcripts["LJ001-0001"]
    out = tmp_path_factory.mktemp("directed") / "directed.mp4"
    result = render_video(portraits / "obama.jpg", wav, out, transcript=transcript, instruction=INSTRUCTION,
                          size="512x512", fps=FPS, executor="inline", progress=False)
    audio = load_audio(wav)
    words, _ = align_transcript(audio.samples, audio.rate_hz, transcript)
    evaluation = evaluate_video(out, portraits / "obama.jpg")
    return result, words, evaluation


def _frames(a_s: float, b_s: float, n: int) -> np.ndarray:
    return np.arange(max(int(a_s * FPS), 0), min(int(np.ceil(b_s * FPS)), n))


def test_the_nod_at_the_start_is_seen_as_head_pitch(directed):
    result, _, evaluation = directed
    sb = result.storyboard
    nods = [a for a in sb.actions if a.kind == ActionKind.nod]
    assert nods and nods[0].end_s <= 1.5, "the storyboard should open with a nod"
    pitch = np.asarray(evaluation.series["pitch_deg"], float)
    n = len(pitch)
    nod = _frames(nods[0].time_s, nods[0].end_s, n)
    rest = np.setdiff1d(np.arange(n), _frames(nods[0].time_s - 0.3, nods[0].end_s + 0.3, n))
    baseline = np.nanmedian(pitch[rest])
    peak = np.nanmax(pitch[nod]) - baseline
    spread = np.nanpercentile(np.abs(pitch[rest] - baseline), 90)
    print(f"nod: pitch peak {peak:+.1f} deg over the baseline; 90th percentile elsewhere {spread:.1f} deg")
    assert peak > 3.0 and peak > 2.0 * spread


def test_surprise_on_the_phrase_is_seen_as_raised_brows(directed):
    result, words, evaluation = directed
    sb = result.storyboard
    span = find_phrase(words, PHRASE)
    assert span is not None
    mid = 0.5 * (span[0] + span[1])
    assert sb.segment_at(mid).emotion == Emotion.surprised
    brows = np.asarray(evaluation.series["brow_height"], float)
    n = len(brows)
    surprised = np.concatenate([_frames(s.start_s, s.end_s, n) for s in sb.segments if s.emotion == Emotion.surprised])
    nods = [a for a in sb.actions if a.kind == ActionKind.nod]
    excluded = np.concatenate([surprised] + [_frames(a.time_s - 0.3, a.end_s + 0.3, n) for a in nods]
                              + [_frames(mid - 1.0, mid + 1.0, n)])
    rest = np.setdiff1d(np.arange(n), excluded)
    during, elsewhere = np.nanmedian(brows[_frames(span[0], span[1], n)]), np.nanmedian(brows[rest])
    noise = np.nanstd(brows[rest])
    print(f"brow height (per inter-ocular distance): {during:.4f} on the phrase, {elsewhere:.4f} elsewhere "
          f"(sd {noise:.4f})")
    assert during - elsewhere > 2.0 * noise and during > elsewhere * 1.03
