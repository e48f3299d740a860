"""Keyframe placement and the clip specs between keyframes."""

from __future__ import annotations

import numpy as np
import pytest

from avatarcast.audio.io import load_audio
from avatarcast.audio.visemes import mouth_track
from avatarcast.blueprint import (
    ACTION_SNAP_S,
    BLINK_DURATION_S,
    BLINK_LOOKBACK_S,
    build_blueprint,
    clip_specs,
    iter_clip_runs,
    longest_first,
    mouth_openness,
    run_bounds,
)
from avatarcast.core.types import MOUTH_FIELDS
from avatarcast.direction.storyboard import Storyboard, action_peaks, state_at
from avatarcast.offline.encoding import n_video_frames

FPS = 25.0


@pytest.fixture(scope="module")
def speech_case(speech):
    audio = load_audio(speech / "ljspeech" / "LJ001-0001.wav")  # 9.7 s
    n = n_video_frames(audio.duration_s, FPS)
    mouth = mouth_track(audio.samples, audio.rate_hz, FPS)[:n]
    d = audio.duration_s
    sb = Storyboard(
        duration_s=d,
        segments=[{"start_s": 0.0, "end_s": 3.1, "emotion": "happy", "intensity": 0.6},
                  {"start_s": 3.1, "end_s": 6.4, "kind": "speech", "emotion": "thoughtful"},
                  {"start_s": 6.4, "end_s": d, "emotion": "calm"}],
        actions=[{"kind": "nod", "time_s": 1.0, "duration_s": 0.7},
                 {"kind": "look_left", "time_s": 4.5, "duration_s": 1.2},
                 {"kind": "shake", "time_s": 7.0, "duration_s": 1.0}],
        blink_times_s=[0.5, 2.3, 3.05, 5.9, 8.8],
    )
    return audio, mouth, sb, n


def test_keyframes_cover_the_timeline_with_bounded_spacing(speech_case):
    audio, mouth, sb, n = speech_case
    bp = build_blueprint(sb, mouth, FPS, n_frames=n, max_spacing_s=2.0)
    assert bp.frames[0] == 0 and bp.frames[-1] == n
    gaps = np.diff(bp.frames)
    assert gaps.min() >= 1
    assert gaps.max() <= 2.0 * FPS
    assert [k.time_s for k in bp.keyframes] == [f / FPS for f in bp.frames]
    tighter = build_blueprint(sb, mouth, FPS, n_frames=n, max_spacing_s=0.8)
    assert np.diff(tighter.frames).max() <= 0.8 * FPS
    assert len(tighter.frames) > len(bp.frames)


def test_keyframes_pin_actions_and_segment_borders(speech_case):
    audio, mouth, sb, n = speech_case
    bp = build_blueprint(sb, mouth, FPS, n_frames=n)
    frames = set(bp.frames)
    # action anchors keep their times, give or take the frame or two that finds a quiet join (ACTION_SNAP_S)
    snap = round(ACTION_SNAP_S * FPS)

    def pinned(t: float) -> bool:
        return any(abs(f - round(t * FPS)) <= snap for f in frames)

    for t in action_peaks(sb):
        assert pinned(t), f"no keyframe at the action peak {t}"
    for a in sb.actions:
        assert pinned(a.time_s) and pinned(a.end_s)
    for seg in sb.segments[1:]:
        assert min(abs(f / FPS - seg.start_s) for f in bp.frames) <= 0.25 + 1e-9


def test_keyframe_states_follow_storyboard_and_mouth_track(speech_case):
    audio, mouth, sb, n = speech_case
    bp = build_blueprint(sb, mouth, FPS, n_frames=n)
    for f, kf in zip(bp.frames, bp.keyframes):
        expected = state_at(sb, min(f / FPS, sb.duration_s))
        row = mouth[min(f, n - 1)]
        for name in expected.field_names():
            want = float(row[MOUTH_FIELDS.index(name)]) if name in MOUTH_FIELDS else getattr(expected, name)
            assert getattr(kf.state, name) == pytest.approx(want, abs=1e-6), name


def test_movable_keyframes_avoid_blinks(speech_case):
    audio, mouth, sb, n = speech_case
    bp = build_blueprint(sb, mouth, FPS, n_frames=n)
    for f, why in zip(bp.frames, bp.reasons):
        if why in ("fill", "segment border"):
            t = f / FPS
            assert not any(b - 0.05 <= t <= b + BLINK_DURATION_S for b in sb.blink_times_s), (t, why)


def test_movable_keyframes_prefer_a_nearby_closed_mouth():
    """Mouth wide open everywhere except one frame 0.12 s from the segment border (2.9 s) and one 0.14 s from the
    evenly spaced filler position (half-way to the border, 1.5 s): both keyframes move there."""
    n = int(4.0 * FPS)
    mouth = np.tile(np.array([[0.9, 0.2, 0.0]], np.float32), (n, 1))
    closed = [int(1.64 * FPS), int(3.02 * FPS)]
    for c in closed:
        mouth[c] = 0.0
    sb = Storyboard(duration_s=4.0, segments=[{"start_s": 0.0, "end_s": 2.9}, {"start_s": 2.9, "end_s": 4.0}])
    bp = build_blueprint(sb, mouth, FPS, n_frames=n, max_spacing_s=2.0)
    inner = [f for f, why in zip(bp.frames, bp.reasons) if why in ("fill", "segment border")]
    assert inner == closed
    assert all(mouth_openness(mouth[f:f + 1])[0] < 0.1 for f in inner), inner


def test_clip_specs_partition_frames_audio_and_mouth_exactly(speech_case):
    audio, mouth, sb, n = speech_case
    bp = build_blueprint(sb, mouth, FPS, n_frames=n, max_spacing_s=1.3)
    clips = clip_specs(bp, audio, mouth, FPS)
    assert len(clips) == len(bp.keyframes) - 1
    covered = np.concatenate([np.arange(c.start_frame, c.start_frame + c.n_frames) for c in clips])
    assert np.array_equal(covered, np.arange(n)), "every frame exactly once, in order"
    joined_audio = np.concatenate([c.audio for c in clips])
    expected_samples = round(n * audio.rate_hz / FPS)
    assert len(joined_audio) == expected_samples
    assert np.array_equal(joined_audio[:len(audio.samples)], audio.samples)
    assert not joined_audio[len(audio.samples):].any()
    assert np.array_equal(np.concatenate([c.mouth for c in clips]), mouth)
    for i, c in enumerate(clips):
        assert c.index == i and c.n_frames >= 1
        assert c.first == bp.keyframes[i] and c.last == bp.keyframes[i + 1]
        assert c.first.time_s == pytest.approx(c.start_s) and c.last.time_s == pytest.approx(c.end_s)
        assert len(c.audio) == round(c.n_frames * audio.rate_hz / FPS)
        assert tuple(float(v) for v in c.mouth[0]) == pytest.approx(
            tuple(getattr(c.first.state, f) for f in MOUTH_FIELDS))
        assert all(c.start_s - BLINK_LOOKBACK_S <= b < c.end_s for b in c.blink_times_s)
    assert sorted({b for c in clips for b in c.blink_times_s}) == sorted(sb.blink_times_s)


def test_partition_holds_at_odd_frame_rates(speech_case):
    audio, _, sb, _ = speech_case
    for fps in (29.97, 48.0, 7.0):
        n = n_video_frames(audio.duration_s, fps)
        mouth = mouth_track(audio.samples, audio.rate_hz, fps)[:n]
        bp = build_blueprint(sb, mouth, fps, n_frames=n)
        clips = clip_specs(bp, audio, mouth, fps)
        assert sum(c.n_frames for c in clips) == n
        assert all(b.start_frame == a.start_frame + a.n_frames for a, b in zip(clips, clips[1:]))
        assert sum(len(c.audio) for c in clips) >= len(audio.samples)


def test_very_short_timeline_has_two_keyframes():
    sb = Storyboard(duration_s=0.1, segments=[{"start_s": 0.0, "end_s": 0.1}])
    bp = build_blueprint(sb, np.zeros((3, 3), np.float32), FPS, n_frames=3)
    assert bp.frames == [0, 3]


def test_action_keyframes_move_to_a_quiet_join():
    """A nod whose onset falls on the frame where the jaw snaps open gets its onset keyframe a frame earlier, where
    nothing changes, so the join does not coincide with the onset's jump."""
    n = int(3.0 * FPS)
    mouth = np.zeros((n, 3), np.float32)
    onset = int(1.0 * FPS)
    mouth[onset:, 0] = 0.8  # the mouth opens at once at 1.0 s
    sb = Storyboard(duration_s=3.0, segments=[{"start_s": 0.0, "end_s": 3.0}],
                    actions=[{"kind": "nod", "time_s": 1.0, "duration_s": 0.8}])
    bp = build_blueprint(sb, mouth, FPS, n_frames=n)
    onset_frames = [f for f, why in zip(bp.frames, bp.reasons) if why == "nod onset"]
    assert len(onset_frames) == 1
    assert onset_frames[0] != onset and abs(onset_frames[0] - onset) <= round(ACTION_SNAP_S * FPS)


def test_runs_group_consecutive_clips_and_the_longest_go_first(speech_case):
    audio, mouth, sb, n = speech_case
    bp = build_blueprint(sb, mouth, FPS, n_frames=n, max_spacing_s=0.8)
    starts = run_bounds(bp, mouth, max_run_s=2.0)
    n_clips = len(bp.frames) - 1
    assert starts[0] == 0 and starts == sorted(set(starts)) and starts[-1] < n_clips
    runs = list(iter_clip_runs(clip_specs(bp, audio, mouth, FPS), starts))
    assert [r.index for r in runs] == list(range(len(starts)))
    assert [c.index for r in runs for c in r.clips] == list(range(n_clips)), "every clip once, in order"
    assert len(runs) < n_clips, "clips are grouped"
    for r in runs:
        assert r.n_frames <= 2.0 * FPS or len(r.clips) == 1
    assert starts == run_bounds(bp, mouth, max_run_s=2.0), "deterministic"
    order = longest_first(runs)
    assert sorted(r.index for r in order) == list(range(len(runs)))
    assert [r.n_frames for r in order] == sorted((r.n_frames for r in runs), reverse=True)


def test_runs_end_in_pauses():
    """Speech with two pauses, keyframes every 0.5 s: runs end at the joins in the pauses, not in the speech."""
    n = int(8.0 * FPS)
    mouth = np.zeros((n, 3), np.float32)
    t = np.arange(n) / FPS
    speaking = ~(((t >= 2.4) & (t < 2.8)) | ((t >= 5.4) & (t < 5.8)))
    mouth[speaking, 0] = 0.5 + 0.4 * np.sin(2 * np.pi * 4.0 * t[speaking]) ** 2
    sb = Storyboard(duration_s=8.0, segments=[{"start_s": 0.0, "end_s": 8.0}])
    bp = build_blueprint(sb, mouth, FPS, n_frames=n, max_spacing_s=0.5)
    starts = run_bounds(bp, mouth, max_run_s=5.0, target_s=3.0)
    boundary_times = [bp.frames[i] / FPS for i in starts[1:]]
    assert boundary_times, "the 8 s are split"
    for b in boundary_times:
        assert 2.4 <= b <= 2.8 or 5.4 <= b <= 5.8, boundary_times
