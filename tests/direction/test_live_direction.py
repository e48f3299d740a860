"""The live director plans an utterance as the offline director plans the whole recording.

The same 16 kHz audio, word timings and instruction go to ``RuleDirector.storyboard`` once, and to a
``LiveDirector`` the way the scheduler gives them while the utterance plays: frame by frame, the audio that has
arrived so far (at real-time pace, ``LEAD_S`` ahead of playback, as a TTS stream that has sent its first second),
the words (TTS timings, all at once) and what playback has committed. Every action of the offline storyboard, the
instructed ones and the prosodic nods and brow raises, must be among the actions the live director committed, at
most 0.2 s from its offline time, and the emotion must agree wherever the offline one holds.
"""

from __future__ import annotations

import numpy as np
import pytest

from avatarcast.audio.io import load_audio, resample
from avatarcast.blueprint import build_blueprint
from avatarcast.direction.director import LIVE_REPLAN_S, EMPHASIS_CONTEXT_S, LiveDirector, RuleDirector
from avatarcast.direction.storyboard import ActionKind
from avatarcast.live.scheduler import PLAN_HORIZON_S, PLAN_MARGIN_S  # (speaking)

FPS = 25.0
START_S = 1.0  # the utterance starts playing at this session time, after a second of idling
LEAD_S = EMPHASIS_CONTEXT_S + 0.3 + LIVE_REPLAN_S
"""How far the arrived audio runs ahead of playback: an emphasis is decided by EMPHASIS_CONTEXT_S of audio after
it, its gesture starts up to 0.3 s before it, and a new plan is made every LIVE_REPLAN_S of new audio."""

ANCHORS = ["nod at the start", "shake your head after 3 seconds", "nod at the end",
           "raise your brows throughout", "tilt your head left when you say 'country'", "look sad"]
CASES = [
    ("ljspeech/LJ001-0001.wav", "LJ001-0001",
     "Smile warmly and nod at the start. Look surprised when you say 'differs from most'."),
    ("ljspeech/LJ001-0005.wav", "LJ001-0005", "raise your brows when you say 'the invention of movable'"),
    ("jfk.flac", None, "nod when you say 'country' and look happy"),
]


def _words(path, transcript_id, transcripts, x16):
    from avatarcast.audio.alignment import align_transcript

    text = transcripts[transcript_id] if transcript_id else (
        "And so my fellow Americans ask not what your country can do for you ask what you can do for your country")
    words, _ = align_transcript(x16, 16000, text)
    return list(words)


def _cut(keyframes: list | None, t: float) -> float:
    """The scheduler's cut of its plan at ``t``: the keyframes after it dropped, one pinned there."""
    if keyframes is not None:
        keyframes[:] = [k for k in keyframes if k < t - 1e-9] + [t]
    return t


def _live(x16: np.ndarray, words, instruction: str, lead_s: float, keyframes: list | None = None):
    """Feed the live director as the scheduler does; return the actions it committed and the emotions it played
    (and the keyframe times it returned, into ``keyframes``)."""
    d = LiveDirector(instruction, seed=0, background=False, fps=FPS)
    plan_end = 0.0
    committed: dict[tuple, object] = {}
    emotions: list[tuple[float, str]] = []
    n_frames = int(np.ceil(len(x16) / 16000 * FPS)) + 13
    start_slot = int(START_S * FPS)
    was_speaking = False
    for k in range(n_frames + start_slot):
        t, t1 = k / FPS, (k + 1) / FPS
        speaking = start_slot <= k < start_slot + n_frames - 12
        if speaking != was_speaking and plan_end > t:  # as the scheduler does: a change of mode cuts the plan
            plan_end = _cut(keyframes, t)
            d.rewind(t, d.state_on_path(t))
        was_speaking = speaking
        if speaking:
            arrived = min(len(x16), int((t - START_S + lead_s) * 16000))
            cut = d.stream("utt", START_S, x16[:arrived], words, arrived >= len(x16), t)
            if cut is not None:
                plan_end = _cut(keyframes, cut) if cut < plan_end else plan_end
                d.rewind(cut, d.state_on_path(cut))
        while plan_end < t1 + PLAN_MARGIN_S:
            plan = d.plan_next(plan_end, PLAN_HORIZON_S, speaking)
            if keyframes is not None:
                keyframes[:] = [k for k in keyframes if k < plan_end + 1e-6] + [kf.time_s for kf in plan.keyframes]
            # the scheduler goes on from the last keyframe returned (from the window's end when none came back)
            plan_end = max(kf.time_s for kf in plan.keyframes) if plan.keyframes else plan_end + PLAN_HORIZON_S
        for a in d.actions:
            if a.time_s < t:
                committed[(a.kind, a.time_s)] = a
        if speaking:
            emotions.append((t - START_S, d.emotion_at(t)[0].value))
    return list(committed.values()), emotions


@pytest.mark.parametrize("path,tid,instruction", CASES + [("jfk.flac", None, a) for a in ANCHORS],
                         ids=["lj1", "lj5", "jfk"] + [f"jfk-{a.split()[0]}-{a.split()[-1]}" for a in ANCHORS])
def test_live_rolling_plan_matches_the_offline_storyboard(speech, transcripts, path, tid, instruction):
    audio = load_audio(speech / path)
    x16 = resample(audio.samples, audio.rate_hz, 16000).astype(np.float32)
    words = _words(path, tid, transcripts, x16)
    offline = RuleDirector(seed=0).storyboard(x16, instruction=instruction, words=words)
    wanted = [a for a in offline.actions if a.kind != ActionKind.blink]
    assert wanted, "the offline storyboard should have actions to compare"
    live_keyframes: list[float] = []
    live, emotions = _live(x16, words, instruction, LEAD_S, live_keyframes)
    report = []
    for a in wanted:
        match = [b for b in live if b.kind == a.kind and abs((b.time_s - START_S) - a.time_s) <= 0.2]
        report.append(f"{a.kind.value} offline {a.time_s:.2f} s live "
                      f"{[round(b.time_s - START_S, 2) for b in live if b.kind == a.kind]}")
        assert match, "\n".join(report)
    print("\n".join(report))
    # Emotions: wherever the offline segment holds (0.1 s away from its borders), live plays the same one.
    for t, emotion in emotions:
        seg = offline.segment_at(t) if t < offline.duration_s else None
        if seg is None or min(t - seg.start_s, seg.end_s - t) < 0.1:
            continue
        assert emotion == seg.emotion.value, f"at {t:.2f} s live plays {emotion}, offline {seg.emotion.value}"
    # Keyframes: the blueprint's placement on the offline storyboard (segment borders, action onsets, peaks and
    # ends; the mouth track left out, as live cannot know it ahead) is among the live keyframes, within a frame.
    n = int(round(offline.duration_s * FPS))
    bp = build_blueprint(offline, np.zeros((n + 1, 3), np.float32), FPS, n_frames=n)
    live_kf = np.array(live_keyframes) - START_S
    for t, reason in zip([k.time_s for k in bp.keyframes], bp.reasons):
        if reason in ("start", "end", "fill"):
            continue
        assert np.min(np.abs(live_kf - t)) <= 1.0 / FPS + 1e-6, (reason, t, live_kf[np.abs(live_kf - t) < 1.0])


def test_late_audio_still_gives_the_instructed_action_and_no_gesture_twice(speech, transcripts):
    """With the audio only a frame ahead of playback (a real-time sender), an instructed action on a word still
    plays (its words came ahead), and replanning never doubles a gesture."""
    audio = load_audio(speech / "ljspeech/LJ001-0001.wav")
    x16 = resample(audio.samples, audio.rate_hz, 16000).astype(np.float32)
    words = _words(None, "LJ001-0001", transcripts, x16)
    instruction = "nod when you say 'differs'"
    offline = RuleDirector(seed=0).storyboard(x16, instruction=instruction, words=words)
    nod = [a for a in offline.actions if a.kind == ActionKind.nod and a.intensity >= 0.55]
    assert nod
    live, _ = _live(x16, words, instruction, 0.06)
    assert any(b.kind == ActionKind.nod and abs(b.time_s - START_S - nod[0].time_s) <= 0.2 for b in live)
    for kind in {b.kind for b in live}:
        times = sorted(b.time_s for b in live if b.kind == kind)
        assert all(b - a >= 0.3 for a, b in zip(times, times[1:])), (kind, times)


def test_a_long_utterance_is_planned_on_its_last_stretch(speech):
    """An utterance longer than LIVE_PLAN_WINDOW_S is planned on its last LIVE_PLAN_WINDOW_S of audio (a plan's
    cost stays bounded), and a word late in it still gets its instructed action at the right time."""
    from avatarcast.direction.director import LIVE_PLAN_WINDOW_S, TimedWord

    audio = load_audio(speech / "jfk.flac")
    one = resample(audio.samples, audio.rate_hz, 16000).astype(np.float32)
    x16 = np.concatenate([one] * 4)  # 44 s
    word_s = len(x16) / 16000 - 3.0
    words = [TimedWord("alpha", word_s, word_s + 0.4)]
    d = LiveDirector("nod when you say 'alpha'", seed=0, background=False, fps=FPS)
    longest, t = 0, 0.0
    while t < len(x16) / 16000:
        arrived = min(len(x16), int((t + 1.0) * 16000))
        cut = d.stream("long", 0.0, x16[:arrived], words, arrived >= len(x16), t)
        if cut is not None:
            d.rewind(cut, d.state_on_path(cut))
        d.plan_next(t, 0.5, True)
        longest = max(longest, len(d._stream.window.audio) if d._stream and d._stream.window else 0)
        nods = [a for a in d.actions if a.kind == ActionKind.nod and abs(a.time_s + 0.25 - word_s) < 0.2]
        t += 0.5
    assert longest <= LIVE_PLAN_WINDOW_S * 16000
    assert nods, [(a.kind.value, a.time_s) for a in d.actions]


def test_an_instruction_mid_utterance_acts_now(speech):
    """Live, "nod at the start" given while an utterance plays means now, and "after N seconds" counts from then;
    the next utterance does not repeat them."""
    audio = load_audio(speech / "jfk.flac")
    x16 = resample(audio.samples, audio.rate_hz, 16000).astype(np.float32)[: 16000 * 8]
    d = LiveDirector(seed=0, background=False, fps=FPS, prosody_actions=False)
    t, given = 0.0, 3.0
    while t < 16.0:
        key = "first" if t < 8.0 else "second"
        t_utt = t if t < 8.0 else t - 8.0
        if t >= given and t - 0.04 < given:
            d.set_instruction("nod at the start and shake your head after 2 seconds")
        arrived = min(len(x16), int((t_utt + 1.0) * 16000))
        cut = d.stream(key, 0.0 if key == "first" else 8.0, x16[:arrived], None, arrived >= len(x16), t)
        if cut is not None:
            d.rewind(cut, d.state_on_path(cut))
        d.plan_next(t, 0.04, True)
        if t < 8.0:
            first = d.actions
        t += 0.04
    nods = [a for a in first if a.kind == ActionKind.nod]
    shakes = [a for a in first if a.kind == ActionKind.shake]
    assert len(nods) == 1 and given <= nods[0].time_s <= given + 0.6, [(a.kind.value, a.time_s) for a in first]
    assert len(shakes) == 1 and abs(shakes[0].time_s - (nods[0].time_s - 0.25 + 2.0)) <= 0.3, shakes
    later = [a for a in d.actions if a.time_s >= 8.0]
    assert not later, [(a.kind.value, a.time_s) for a in later]
