"""Instruction parsing: emotions, actions, intensities, anchors, and unknown words reported."""

from __future__ import annotations

from avatarcast.direction.instructions import parse_instruction
from avatarcast.direction.storyboard import ActionKind, Emotion


def test_example_instruction():
    p = parse_instruction("Smile warmly and nod at the start. Look surprised when you say 'harder than it sounds'.")
    assert p.warnings == []
    assert [(e.emotion, e.anchor.kind) for e in p.emotions] == [
        (Emotion.happy, "throughout"), (Emotion.surprised, "phrase")]
    assert p.emotions[1].anchor.phrase == "harder than it sounds"
    assert [(a.kind, a.anchor.kind) for a in p.actions] == [(ActionKind.nod, "start")]


def test_actions_and_directions():
    p = parse_instruction("shake your head at the end; raise your eyebrows on \"welcome\", then look left, "
                          "wink, lean in, tilt your head to the right and blink")
    kinds = [a.kind for a in p.actions]
    assert kinds == [ActionKind.shake, ActionKind.raise_brows, ActionKind.look_left, ActionKind.wink,
                     ActionKind.lean_in, ActionKind.tilt_right, ActionKind.blink]
    assert p.actions[0].anchor.kind == "end"
    assert p.actions[1].anchor.phrase == "welcome"
    assert p.warnings == []


def test_intensity_words_scale():
    levels = {w: parse_instruction(f"nod {w}").actions[0].intensity for w in ("slightly", "very", "extremely")}
    plain = parse_instruction("nod").actions[0].intensity
    assert levels["slightly"] < plain < levels["very"] < levels["extremely"] == 1.0
    assert parse_instruction("look a little sad").emotions[0].intensity == levels["slightly"]


def test_time_anchors():
    assert parse_instruction("nod after 2 seconds").actions[0].anchor.time_s == 2.0
    assert parse_instruction("look up after two seconds").actions[0].anchor.time_s == 2.0
    assert parse_instruction("wink at 1.5 s").actions[0].anchor.time_s == 1.5
    a = parse_instruction("be calm throughout").emotions[0]
    assert (a.emotion, a.anchor.kind) == (Emotion.calm, "throughout")


def test_unknown_words_are_reported_not_dropped():
    p = parse_instruction("nod and juggle flamingos happily")
    assert [a.kind for a in p.actions] == [ActionKind.nod]
    assert p.emotions[0].emotion == Emotion.happy
    assert any("'juggle'" in w for w in p.warnings) and any("'flamingos'" in w for w in p.warnings)
    assert parse_instruction("xyzzy").warnings
    assert parse_instruction(None).empty and parse_instruction("").warnings == []
