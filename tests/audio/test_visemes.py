"""Per-frame mouth features: closed in silence, open in speech, following loudness, live == offline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from avatarcast.audio.alignment import Phone
from avatarcast.audio.io import AUDIO_RATE_HZ, load_audio
from avatarcast.audio.vad import speech_regions
from avatarcast.audio.visemes import (VISEMES, StreamingMouthAnalyzer, VisemeTrack, lpc_formants_batch,
                                        mouth_track)

FPS = 25.0


@pytest.fixture(scope="module")
def jfk(speech: Path) -> np.ndarray:
    return load_audio(speech / "jfk.flac").samples


@pytest.fixture(scope="module")
def padded_lj(speech: Path) -> np.ndarray:
    """Real speech with a second of digital silence and a second of faint room noise around it."""
    x = load_audio(speech / "ljspeech" / "LJ001-0004.wav").samples
    noise = (np.random.default_rng(0).standard_normal(AUDIO_RATE_HZ) * 3e-4).astype(np.float32)  # ~ -70 dBFS
    return np.concatenate([np.zeros(AUDIO_RATE_HZ, np.float32), x, noise])


def _frame_times(n: int, fps: float) -> np.ndarray:
    return (np.arange(n) + 0.5) / fps


def _mask(times: np.ndarray, regions: list[tuple[float, float]], margin_s: float) -> np.ndarray:
    m = np.zeros(len(times), bool)
    for a, b in regions:
        m |= (times >= a - margin_s) & (times <= b + margin_s)
    return m


@pytest.mark.parametrize("fps", [25.0, 30.0, 60.0])
def test_one_row_per_frame_in_range(jfk: np.ndarray, fps: float) -> None:
    track = mouth_track(jfk, AUDIO_RATE_HZ, fps)
    assert track.shape == (math.ceil(len(jfk) / AUDIO_RATE_HZ * fps), 3)
    assert track.dtype == np.float32 and track.min() >= 0.0 and track.max() <= 1.0


def test_closed_in_silence_open_in_speech(padded_lj: np.ndarray) -> None:
    track = mouth_track(padded_lj, AUDIO_RATE_HZ, FPS)
    t = _frame_times(len(track), FPS)
    regions = speech_regions(padded_lj, AUDIO_RATE_HZ)
    silent = ~_mask(t, regions, margin_s=0.15)
    speaking = _mask(t, regions, margin_s=0.0)
    assert silent.sum() > 40 and speaking.sum() > 80
    assert track[silent, 0].max() < 0.05 and track[silent].max() < 0.05
    assert track[speaking, 0].mean() > 0.25
    assert (track[speaking, 0] > 0.1).mean() > 0.6


def test_jaw_follows_the_loudness_envelope(jfk: np.ndarray) -> None:
    track = mouth_track(jfk, AUDIO_RATE_HZ, FPS)
    hop = AUDIO_RATE_HZ / FPS
    env = np.array([np.sqrt(np.mean(jfk[int(i * hop): int((i + 1) * hop)] ** 2) + 1e-12) for i in range(len(track))])
    env_db = np.maximum(20 * np.log10(env), 20 * np.log10(env.max()) - 50)
    corr = {lag: np.corrcoef(track[3:-3, 0], np.roll(env_db, lag)[3:-3])[0, 1] for lag in range(-2, 3)}
    assert corr[0] > 0.6
    assert max(corr, key=corr.get) in (-1, 0)  # in sync, or a frame ahead (lips lead the sound)


def test_normalised_per_utterance(jfk: np.ndarray) -> None:
    loud = mouth_track(jfk, AUDIO_RATE_HZ, FPS)
    quiet = mouth_track(jfk * np.float32(0.1), AUDIO_RATE_HZ, FPS)  # the same speech 20 dB quieter
    assert np.corrcoef(loud[:, 0], quiet[:, 0])[0, 1] > 0.95
    assert abs(loud[:, 0].mean() - quiet[:, 0].mean()) < 0.05


@pytest.mark.parametrize("fps, seed", [(25.0, 0), (30.0, 1), (29.97, 2)])
def test_streaming_equals_offline(jfk: np.ndarray, fps: float, seed: int) -> None:
    offline = mouth_track(jfk, AUDIO_RATE_HZ, fps)
    analyzer = StreamingMouthAnalyzer(fps)
    rng = np.random.default_rng(seed)
    rows, i = [], 0
    while i < len(jfk):
        n = int(rng.integers(1, 5000))
        rows.append(analyzer.push(jfk[i:i + n]))
        i += n
    rows.append(analyzer.flush())
    np.testing.assert_array_equal(np.concatenate(rows), offline)


def test_formants_of_a_window_do_not_depend_on_its_batch(jfk: np.ndarray) -> None:
    windows = np.lib.stride_tricks.sliding_window_view(jfk, 400)[::160]
    f1, f2 = lpc_formants_batch(windows, AUDIO_RATE_HZ)
    voiced = np.isfinite(f1)
    assert 0.3 < voiced.mean() < 0.95  # formants where there is voice, none in the pauses
    assert np.all((f1[voiced] >= 200) & (f1[voiced] <= 1100))
    assert np.all(np.isnan(f2) | (f2 > f1 + 200))
    for lo, hi in ((0, 1), (5, 8), (100, 357), (len(windows) - 3, len(windows))):
        g1, g2 = lpc_formants_batch(windows[lo:hi], AUDIO_RATE_HZ)
        np.testing.assert_array_equal(g1, f1[lo:hi])
        np.testing.assert_array_equal(g2, f2[lo:hi])


def test_formants_of_a_synthetic_vowel() -> None:
    """Two resonances at 700 Hz and 1200 Hz (an /a/-like vowel) are found where they are."""
    from scipy.signal import lfilter

    rate = AUDIO_RATE_HZ
    excitation = np.zeros(rate // 10)
    excitation[:: rate // 120] = 1.0  # a 120 Hz glottal pulse train
    x = excitation
    for f, bw in ((700.0, 80.0), (1200.0, 90.0)):
        r = math.exp(-math.pi * bw / rate)
        x = lfilter([1.0], [1.0, -2 * r * math.cos(2 * math.pi * f / rate), r * r], x)
    f1, f2 = lpc_formants_batch(x[None, 400:800].astype(np.float32), rate)
    assert abs(f1[0] - 700.0) < 60.0 and abs(f2[0] - 1200.0) < 80.0


@pytest.mark.parametrize("lookahead_s", [0.06, 0.02])
def test_streaming_looks_ahead_at_most_lookahead(jfk: np.ndarray, lookahead_s: float) -> None:
    offline = mouth_track(jfk, AUDIO_RATE_HZ, FPS, lookahead_s=lookahead_s)
    # frame i is final as soon as its own audio plus lookahead_s has arrived, and no later
    for i in (0, 7, 60, 133, 250):
        n = int(math.ceil(((i + 1) / FPS + lookahead_s) * AUDIO_RATE_HZ))
        rows = StreamingMouthAnalyzer(FPS, lookahead_s=lookahead_s).push(jfk[:n])
        assert len(rows) > i
        np.testing.assert_array_equal(rows[i], offline[i])
    analyzer = StreamingMouthAnalyzer(FPS, lookahead_s=lookahead_s)
    emitted = 0
    for end in range(320, len(jfk), 320):  # 20 ms packets, as in live mode
        emitted += len(analyzer.push(jfk[end - 320:end]))
        assert emitted >= math.floor((end / AUDIO_RATE_HZ - lookahead_s) * FPS + 1e-9)


def test_next_utterance_starts_at_frame_zero(jfk: np.ndarray) -> None:
    analyzer = StreamingMouthAnalyzer(FPS)
    first = np.concatenate([analyzer.push(jfk[:AUDIO_RATE_HZ]), analyzer.flush()])
    second = np.concatenate([analyzer.push(jfk[:AUDIO_RATE_HZ]), analyzer.flush()])
    assert len(first) == len(second) == 25
    # the first onset differs (the speech level starts from a prior the first time); after it the shapes agree
    assert np.abs(first[8:] - second[8:]).max() < 0.1


def test_phones_drive_shapes_and_bilabials_close(jfk: np.ndarray) -> None:
    # "my fellow Americans": take real timings from the aligner to put phones on the real audio
    from avatarcast.audio.alignment import align_transcript

    words, phones = align_transcript(jfk, AUDIO_RATE_HZ, "And so my fellow Americans, ask not what your country "
                                                         "can do for you, ask what you can do for your country.")
    track = mouth_track(jfk, AUDIO_RATE_HZ, FPS, phones=phones)
    t = _frame_times(len(track), FPS)
    closures = [p for p in phones if p.phone in ("P", "B", "M") and p.end_s - p.start_s >= 0.04]
    assert closures, "expected bilabials in the transcript"
    for p in closures:  # every bilabial shows as a closed mouth in a frame during it (or the frame next to it)
        near = (t >= p.start_s - 1 / FPS) & (t <= p.end_s + 1 / FPS)
        assert track[near, 0].min() < 0.05, f"{p.phone} at {p.start_s:.2f} s not closed: {track[near, 0]}"
    vowel_frames = [int(np.argmin(np.abs(t - 0.5 * (p.start_s + p.end_s)))) for p in phones
                    if p.phone in ("AA", "AE", "AO", "AW", "AY") and p.end_s - p.start_s >= 0.06]
    assert np.mean(track[vowel_frames, 0]) > 0.3
    # rounded vowels round the lips, spread ones spread them
    rounded = [int(np.argmin(np.abs(t - 0.5 * (p.start_s + p.end_s)))) for p in phones if p.phone in ("UW", "OW")]
    assert track[rounded, 2].mean() > track[rounded, 1].mean()
    regions = speech_regions(jfk, AUDIO_RATE_HZ)
    silent = ~_mask(t, regions, margin_s=0.15)
    assert track[silent].max() < 0.05 if silent.any() else True


def test_viseme_blending_is_continuous_and_closes_on_bilabials() -> None:
    track = VisemeTrack([Phone("AA", 0.0, 0.2), Phone("M", 0.2, 0.28), Phone("IY", 0.28, 0.5)])
    ts = np.arange(0.0, 0.5, 0.005)
    values = np.array([track.targets(float(x)) for x in ts])
    assert np.abs(np.diff(values, axis=0)).max() < 0.25  # no jumps at phone borders
    assert values[np.argmin(np.abs(ts - 0.24)), 0] == 0.0  # lips together mid-M
    assert values[np.argmin(np.abs(ts - 0.1)), 0] > 0.8 * VISEMES["AA"].jaw_open
    assert values[np.argmin(np.abs(ts - 0.42)), 1] > 0.6  # IY spreads the lips


@pytest.mark.parametrize("step", [1, 37, 320, 5000])
def test_needed_samples_says_which_rows_exist(jfk: np.ndarray, step: int) -> None:
    """A consumer that only counts samples (the live scheduler) knows exactly how many rows the analyzer it feeds
    has produced: after every push, the rows are the frames whose needed_samples have arrived."""
    analyzer = StreamingMouthAnalyzer(FPS, lookahead_s=0.03)
    counter = StreamingMouthAnalyzer(FPS, lookahead_s=0.03)  # never fed
    emitted = ready = 0
    x = jfk[: AUDIO_RATE_HZ * 2 + 123]
    for pos in range(0, len(x), step):
        emitted += len(analyzer.push(x[pos:pos + step]))
        n = min(pos + step, len(x))
        while counter.needed_samples(ready) <= n:
            ready += 1
        assert emitted == ready
    emitted += len(analyzer.flush())
    assert emitted == counter.frames_for(len(x))
