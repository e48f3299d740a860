"""The ingest protocol's validation: every bad message becomes a ProtocolError with a stable code."""

from __future__ import annotations

import json

import pytest

from avatarcast.live.protocol import (
    PROTOCOL_VERSION,
    AlignmentMessage,
    ErrorCode,
    InterruptMessage,
    PingMessage,
    ProtocolError,
    SpeechEndMessage,
    StartMessage,
    check_pcm_chunk,
    parse_client_message,
    parse_server_event,
)


def _code(text: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    assert info.value.message  # says what was wrong
    return info.value.code


def test_valid_messages_parse_to_their_models():
    start = parse_client_message(json.dumps({"type": "start", "version": PROTOCOL_VERSION, "sample_rate": 24000}))
    assert isinstance(start, StartMessage) and start.sample_rate == 24000
    assert isinstance(parse_client_message('{"type": "speech.end"}'), SpeechEndMessage)
    assert isinstance(parse_client_message('{"type": "interrupt"}'), InterruptMessage)
    assert parse_client_message('{"type": "ping", "id": 7}') == PingMessage(id=7)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe", "[1, 2]", '"start"', "null"])
def test_malformed_json_is_invalid_json(text):
    assert _code(text) == ErrorCode.INVALID_JSON


@pytest.mark.parametrize("body", [{"type": "speak"}, {"sample_rate": 16000}, {"type": None}, {"type": 3}])
def test_unknown_or_missing_type_is_unknown_type(body):
    assert _code(json.dumps(body)) == ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("rate", [8000, 44100, 96000, 0, -16000])
def test_unsupported_sample_rate(rate):
    assert _code(json.dumps({"type": "start", "sample_rate": rate})) == ErrorCode.UNSUPPORTED_SAMPLE_RATE


def test_wrong_protocol_version():
    assert _code(json.dumps({"type": "start", "version": 99, "sample_rate": 16000})) == ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize("body", [
    {"type": "start"},  # sample_rate missing
    {"type": "start", "sample_rate": "fast"},
    {"type": "start", "sample_rate": 16000, "channels": 2},
    {"type": "start", "sample_rate": 16000, "encoding": "opus"},
    {"type": "start", "sample_rate": 16000, "surprise": True},  # extra fields are refused, not ignored
    {"type": "instruction"},
    {"type": "instruction", "text": "x" * 5000},
    {"type": "alignment"},
    {"type": "alignment", "words": [{"word": "hi", "start_ms": 50, "end_ms": 10}]},
    {"type": "alignment", "chars": ["a", "b"], "char_start_times_ms": [0]},
    {"type": "alignment", "chars": ["a"]},
    {"type": "alignment", "words": [], "chars": ["a"], "char_start_times_ms": [0]},
])
def test_invalid_fields_are_invalid_message(body):
    assert _code(json.dumps(body)) == ErrorCode.INVALID_MESSAGE


def test_word_alignment_to_seconds_with_offset():
    msg = parse_client_message(json.dumps({"type": "alignment", "offset_ms": 1000, "words": [
        {"word": "ask", "start_ms": 0, "end_ms": 250}, {"word": "not", "start_ms": 300, "end_ms": 500}]}))
    assert msg.word_timings_s() == [("ask", 1.0, 1.25), ("not", 1.3, 1.5)]


def test_elevenlabs_char_alignment_groups_words_at_spaces():
    chars = list("ask not")
    starts = [0, 50, 100, 150, 200, 250, 300]
    durs = [50, 50, 50, 50, 50, 50, 60]
    msg = AlignmentMessage(chars=chars, char_start_times_ms=starts, char_durations_ms=durs)
    words = msg.word_timings_s()
    assert [w[0] for w in words] == ["ask", "not"]
    assert words[0][1:] == pytest.approx((0.0, 0.15))
    assert words[1][1:] == pytest.approx((0.2, 0.36))


def test_char_alignment_without_durations_ends_words_at_the_next_start():
    msg = AlignmentMessage(chars=list("hi yo"), char_start_times_ms=[0, 40, 80, 120, 160])
    words = msg.word_timings_s()
    assert [w[0] for w in words] == ["hi", "yo"]
    assert words[0][2] == pytest.approx(0.12)


def test_pcm_chunk_checks():
    check_pcm_chunk(b"\x00\x01" * 160, max_bytes=1024, started=True)
    for data, started, code in [
        (b"\x00" * 321, True, ErrorCode.ODD_LENGTH_PCM),
        (b"\x00" * 320, False, ErrorCode.AUDIO_BEFORE_START),
        (b"\x00" * 2048, True, ErrorCode.MESSAGE_TOO_LARGE),
    ]:
        with pytest.raises(ProtocolError) as info:
            check_pcm_chunk(data, max_bytes=1024, started=started)
        assert info.value.code == code


def test_server_events_round_trip():
    event = parse_server_event(json.dumps({"type": "playback.finished", "utterance_id": "utt_1",
                                           "position_ms": 1234.5, "interrupted": True}))
    assert event.interrupted is True and event.position_ms == 1234.5
    stats = parse_server_event(json.dumps({"type": "stats", "session_id": "s", "underrun_ms": 0.0}))
    assert stats.underrun_ms == 0.0
