"""The storyboard schema: round trip, JSON Schema, clear errors, and the mapping to avatar states."""

from __future__ import annotations

import json

import pytest

from avatarcast.core.errors import StoryboardError
from avatarcast.core.types import AvatarState
from avatarcast.direction.storyboard import (
    Action,
    ActionKind,
    GazeShift,
    Segment,
    Storyboard,
    action_peaks,
    blink_times,
    load_storyboard,
    parse_storyboard,
    resolve_action_overlaps,
    state_at,
    storyboard_json_schema,
    write_json_schema,
)


def _board(**kw) -> Storyboard:
    base = dict(
        duration_s=4.0,
        segments=[Segment(start_s=0, end_s=2, emotion="happy", intensity=0.8, text="hello there"),
                  Segment(start_s=2, end_s=4, kind="silence")],
        actions=[Action(kind="nod", time_s=0.5, duration_s=0.6, intensity=1.0),
                 Action(kind="shake", time_s=2.0, duration_s=1.0),
                 Action(kind="wink", time_s=3.0, duration_s=0.4, intensity=1.0)],
        gaze=[GazeShift(time_s=0.0), GazeShift(time_s=1.0, x=0.3, y=-0.1)],
        blink_times_s=[1.5, 3.6],
    )
    base.update(kw)
    return Storyboard(**base)


def _json(**kw) -> str:
    data = {"duration_s": 2.0, "segments": [{"start_s": 0, "end_s": 2}]}
    data.update(kw)
    return json.dumps(data)


def test_round_trip_through_json(tmp_path):
    sb = _board()
    path = tmp_path / "sb.json"
    sb.save(path)
    again = load_storyboard(path)
    assert again == sb
    assert again.version == 1
    assert [a.kind for a in again.actions] == [ActionKind.nod, ActionKind.shake, ActionKind.wink]


def test_json_schema_export_lists_enums_and_bounds(tmp_path):
    out = write_json_schema(tmp_path / "schema.json")
    schema = json.loads(out.read_text())
    assert schema == json.loads(json.dumps(storyboard_json_schema()))
    defs = schema["$defs"]
    assert "nod" in defs["ActionKind"]["enum"] and "wink" in defs["ActionKind"]["enum"]
    assert "surprised" in defs["Emotion"]["enum"]
    assert schema["properties"]["actions"]["maxItems"] > 0
    assert schema["properties"]["segments"]["maxItems"] > 0
    assert set(schema["required"]) == {"duration_s", "segments"}


@pytest.mark.parametrize("text, expected", [
    ("{\"duration_s\": 2, ", "not valid JSON"),
    (_json(actions=[{"kind": "dance", "time_s": 1}]), "actions[0].kind"),
    (_json(actions=[{"kind": "nod", "time_s": 2.5}]), "actions[0].time_s"),
    (_json(actions=[{"kind": "nod", "time_s": 1.5, "duration_s": 1.0}]), "past the end"),
    (_json(actions=[{"kind": "nod", "time_s": 0.2, "duration_s": 0.8},
                    {"kind": "nod", "time_s": 0.6, "duration_s": 0.8}]), "overlaps actions[0]"),
    (_json(segments=[{"start_s": 0, "end_s": 1.2}, {"start_s": 1.2, "end_s": 0.5}]), "segments[1]"),
    (_json(segments=[{"start_s": 0, "end_s": 1.0}, {"start_s": 1.5, "end_s": 2.0}]), "gap between segments[0]"),
    (_json(segments=[{"start_s": 0, "end_s": 1.0}]), "must end at duration_s"),
    (_json(segments=[{"start_s": 0, "end_s": 2, "emotion": "bored"}]), "segments[0].emotion"),
    (_json(colour="red"), "colour"),
    ("[1, 2]", "JSON object"),
])
def test_invalid_storyboards_name_the_field(text, expected):
    with pytest.raises(StoryboardError) as err:
        parse_storyboard(text)
    assert expected in str(err.value)


def test_end_before_start_message_says_what_to_do():
    with pytest.raises(StoryboardError, match=r"segments\[0\].*end_s \(0.5 s\) must be greater than start_s"):
        parse_storyboard(_json(duration_s=0.5, segments=[{"start_s": 1.0, "end_s": 0.5}]))


def test_overlaps_on_different_body_parts_are_fine_and_resolution_rule():
    sb = _board(actions=[Action(kind="nod", time_s=0.5, duration_s=0.6),
                         Action(kind="raise_brows", time_s=0.6, duration_s=0.6)])
    assert len(sb.actions) == 2
    acts = [Action(kind="nod", time_s=0.5, duration_s=0.6), Action(kind="nod", time_s=0.8, duration_s=0.6),
            Action(kind="look_left", time_s=3.5, duration_s=1.0), Action(kind="look_up", time_s=3.6, duration_s=1)]
    out, notes = resolve_action_overlaps(acts, duration_s=4.0)
    assert [(a.kind.value, a.time_s) for a in out][:2] == [("nod", 0.5), ("nod", 1.1)]
    assert [a.kind.value for a in out] == ["nod", "nod", "look_left"]  # look_left clipped to the end; look_up dropped
    assert out[2].end_s == pytest.approx(4.0)
    assert any("moved nod" in n for n in notes) and any("dropped look_up" in n for n in notes)


def test_state_at_nod_peaks_mid_action_and_is_zero_outside():
    sb = _board(segments=[Segment(start_s=0, end_s=4, emotion="neutral")])
    mid = state_at(sb, 0.8)
    assert mid.head_pitch_deg == pytest.approx(8.0, abs=1e-6)
    assert state_at(sb, 0.49).head_pitch_deg == pytest.approx(0.0, abs=1e-6)
    assert 0 < state_at(sb, 0.6).head_pitch_deg < mid.head_pitch_deg
    assert state_at(sb, 1.2).head_pitch_deg == pytest.approx(0.0, abs=1e-6)
    # Shake swings both ways; wink closes one eye only.
    yaws = [state_at(sb, 2.0 + k * 0.05).head_yaw_deg for k in range(20)]
    assert max(yaws) > 2 and min(yaws) < -2
    w = state_at(sb, 3.2)
    assert w.eye_open_left < 0.2 and w.eye_open_right == pytest.approx(1.0)
    assert 1.5 in blink_times(sb)


def test_emotion_offsets_scale_with_intensity_and_leave_the_mouth_alone():
    def board(emotion, intensity):
        return Storyboard(duration_s=2, segments=[Segment(start_s=0, end_s=2, emotion=emotion, intensity=intensity)])

    weak, strong = state_at(board("surprised", 0.3), 1.0), state_at(board("surprised", 0.9), 1.0)
    assert 0 < weak.brow_raise < strong.brow_raise
    assert 1.0 < weak.eye_open_left < strong.eye_open_left
    happy = state_at(board("happy", 1.0), 1.0, base=AvatarState(jaw_open=0.7))
    assert happy.smile > 0.5 and happy.jaw_open == 0.7
    assert state_at(board("angry", 1.0), 1.0).brow_raise < -0.5


def test_emotions_blend_across_segment_borders_and_gaze_follows_plan():
    sb = _board()
    assert state_at(sb, 1.0).smile > state_at(sb, 2.0).smile > state_at(sb, 3.0).smile
    assert state_at(sb, 1.5).gaze_x == pytest.approx(0.3)


def test_action_peaks_for_keyframes():
    sb = _board(actions=[Action(kind="nod", time_s=0.5, duration_s=0.6),
                         Action(kind="look_left", time_s=1.0, duration_s=2.0),
                         Action(kind="blink", time_s=3.0, duration_s=0.15)])
    assert action_peaks(sb) == [0.8, 1.3, 2.7]
    shake = _board(actions=[Action(kind="shake", time_s=1.0, duration_s=1.0)])
    peaks = action_peaks(shake)
    assert len(peaks) == 4 and all(1.0 < p < 2.0 for p in peaks)
    for p in peaks:
        assert abs(state_at(shake, p).head_yaw_deg) >= abs(state_at(shake, p + 0.03).head_yaw_deg)
