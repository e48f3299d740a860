"""Forced alignment of real speech with its transcript."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from avatarcast.audio.alignment import (
    Word, align_transcript, normalize_transcript, phones_from_words, pronunciation,
)
from avatarcast.audio.io import AUDIO_RATE_HZ, load_audio
from avatarcast.audio.vad import speech_regions


def _inside(t0: float, t1: float, regions: list[tuple[float, float]], tol_s: float) -> bool:
    return any(a - tol_s <= t0 and t1 <= b + tol_s for a, b in regions)


@pytest.mark.parametrize("clip", ["LJ001-0001", "LJ001-0005"])
def test_words_in_order_inside_speech(speech: Path, transcripts: dict[str, str], clip: str) -> None:
    audio = load_audio(speech / "ljspeech" / f"{clip}.wav")
    words, phones = align_transcript(audio.samples, audio.rate_hz, transcripts[clip])
    expected, dropped = normalize_transcript(transcripts[clip])
    assert not dropped
    assert [w.text for w in words] == expected
    starts = [w.start_s for w in words]
    assert starts == sorted(starts) and all(w.end_s > w.start_s for w in words)
    assert words[-1].end_s <= audio.duration_s + 1e-6
    regions = speech_regions(audio.samples, audio.rate_hz)
    assert all(_inside(w.start_s, w.end_s, regions, tol_s=0.1) for w in words if w.end_s - w.start_s > 0.05)
    # phones lie inside their words, cover most of them, and are real ARPAbet
    assert len(phones) > 2 * len(words)
    for w in words:
        inside = [p for p in phones if p.start_s >= w.start_s - 1e-6 and p.end_s <= w.end_s + 1e-6]
        assert inside, w
    assert all(p.phone.isalpha() and p.phone.isupper() for p in phones)


def test_jfk_word_timings(speech: Path) -> None:
    audio = load_audio(speech / "jfk.flac")
    words, _ = align_transcript(audio.samples, audio.rate_hz, "And so my fellow Americans, ask not what your "
                                "country can do for you, ask what you can do for your country.")
    assert len(words) == 22 and words[0].text == "and" and words[-1].text == "country"
    # the long pause after "Americans" (the applause-free gap in the recording) falls between words
    gaps = [b.start_s - a.end_s for a, b in zip(words, words[1:])]
    assert max(gaps) > 0.5 and words[gaps.index(max(gaps))].text in ("americans", "not", "you")


def test_the_same_audio_and_text_align_the_same_whatever_came_before(speech: Path, transcripts: dict[str, str]) -> None:
    """The decoder is shared by the process and its cepstral means adapt to what it hears: each alignment starts
    from the same state, so a storyboard rendered again gives the same video."""
    short = load_audio(speech / "ljspeech" / "LJ001-0002.wav")
    first = align_transcript(short.samples, short.rate_hz, transcripts["LJ001-0002"])
    other = load_audio(speech / "jfk.flac")
    align_transcript(other.samples, other.rate_hz, "And so my fellow Americans, ask not what your country can do "
                     "for you, ask what you can do for your country.")
    assert align_transcript(short.samples, short.rate_hz, transcripts["LJ001-0002"]) == first


def test_unknown_words_are_dropped_with_a_warning(speech: Path, transcripts: dict[str, str], caplog) -> None:
    audio = load_audio(speech / "ljspeech" / "LJ001-0002.wav")
    with caplog.at_level(logging.WARNING, logger="avatarcast.audio.alignment"):
        words, _ = align_transcript(audio.samples, audio.rate_hz, "in being zqxwv comparatively modern.")
    assert [w.text for w in words] == ["in", "being", "comparatively", "modern"]
    assert any("zqxwv" in r.getMessage() for r in caplog.records)


def test_long_audio_is_aligned_in_pieces(speech: Path, transcripts: dict[str, str]) -> None:
    clips = ["LJ001-0001", "LJ001-0002", "LJ001-0003"]
    parts, starts, t = [], [], 0.0
    gap = np.zeros(AUDIO_RATE_HZ // 2, np.float32)
    for clip in clips:
        x = load_audio(speech / "ljspeech" / f"{clip}.wav").samples
        starts.append(t)
        parts += [x, gap]
        t += (len(x) + len(gap)) / AUDIO_RATE_HZ
    audio = np.concatenate(parts)
    assert len(audio) / AUDIO_RATE_HZ > 20
    words, _ = align_transcript(audio, AUDIO_RATE_HZ, " ".join(transcripts[c] for c in clips))
    expected = sum((normalize_transcript(transcripts[c])[0] for c in clips), [])
    assert [w.text for w in words] == expected
    # the first word of each clip starts where that clip starts
    first_index = 0
    for clip, start in zip(clips, starts):
        assert abs(words[first_index].start_s - start) < 0.25, (clip, words[first_index], start)
        first_index += len(normalize_transcript(transcripts[clip])[0])


def test_transcript_normalisation() -> None:
    words, dropped = normalize_transcript("In 1961, the U.S. spent 25 dollars on woodcutters' NASA-style xqzv!")
    assert words[:5] == ["in", "nineteen", "sixty", "one", "the"]
    assert "twenty" in words and "five" in words and "dollars" in words
    assert dropped == ["xqzv"]
    assert all(pronunciation(w) for w in words)


def test_phones_from_words_spread_over_the_word() -> None:
    phones = phones_from_words([Word("hello", 0.0, 0.5), Word("moon", 0.6, 1.0)])
    assert [p.phone for p in phones] == pronunciation("hello") + pronunciation("moon")
    assert phones[0].start_s == 0.0 and abs(phones[len(pronunciation("hello")) - 1].end_s - 0.5) < 1e-9
    assert all(b.start_s >= a.end_s - 1e-9 for a, b in zip(phones, phones[1:]))
    assert phones[-1].end_s == pytest.approx(1.0)
