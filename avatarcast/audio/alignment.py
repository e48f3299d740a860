"""Forced alignment: when and how each word of a known transcript is spoken (pocketsphinx, US English).

``align_transcript`` gives word and phone (ARPAbet) timings for a recording and its transcript. Transcripts are
normalised to the dictionary's words first: numbers are spelled out, punctuation dropped, and words the dictionary
does not know are spelled letter by letter when they look like acronyms, or dropped otherwise, with a warning that
names them. Long recordings are aligned in pieces cut at pauses, the text shared out in proportion to speech time;
a piece that does not align gets its words spread over its speech instead (with a warning), so alignment never
fails on a usable recording.

``phones_from_words`` turns word timings that come from elsewhere (a TTS's side information in live mode) into
phone timings, with the same dictionary.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

import numpy as np

from avatarcast.audio.io import float_to_pcm16, resample
from avatarcast.audio.vad import speech_regions
from avatarcast.core.errors import AudioError, MissingDependencyError
from avatarcast.core.types import AUDIO_RATE_HZ

logger = logging.getLogger(__name__)

ALIGN_FRAME_S = 0.010
"""pocketsphinx reports times in frames of 10 ms."""

ALIGN_MAX_CHUNK_S = 15.0
"""Recordings longer than this are aligned in pieces cut at pauses (the aligner loses its way on long audio)."""

ALIGN_SEARCH_WORDS = 4
"""Around the estimated end of a piece's text, this many words more or fewer are tried."""

ALIGN_MIN_CUT_GAP_S = 0.15
"""Only pauses at least this long are used as cut points."""

VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())


@dataclass
class Word:
    """A word of the transcript and when it is spoken."""

    text: str
    start_s: float
    end_s: float


@dataclass
class Phone:
    """An ARPAbet phone (no stress marks) and when it is spoken."""

    phone: str
    start_s: float
    end_s: float


# --- the decoder and its dictionary -----------------------------------------------------------------------------

_decoder = None
_decoder_cmn: str | None = None  # the new decoder's cepstral means, restored before each alignment
_decoder_lock = threading.RLock()


def _get_decoder():
    """One pocketsphinx decoder per process (building one loads the acoustic model: ~0.1 s)."""
    global _decoder, _decoder_cmn
    if _decoder is None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise MissingDependencyError(
                "forced alignment needs pocketsphinx 5 (pip install 'pocketsphinx>=5')"
            ) from exc
        # No language model: alignment only needs the acoustic model and the dictionary.
        _decoder = Decoder(samprate=AUDIO_RATE_HZ, lm=None, bestpath=False, loglevel="FATAL")
        _decoder_cmn = _decoder.get_cmn()
    return _decoder


def pronunciation(word: str) -> list[str] | None:
    """The dictionary's phones for ``word`` (lower case), or None when it is not in the dictionary."""
    with _decoder_lock:
        phones = _get_decoder().lookup_word(word.lower())
    return phones.split() if phones else None


# --- transcript normalisation -----------------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> list[str]:
    """English words for a non-negative integer below one billion: 1961 -> one thousand nine hundred sixty one."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])
    for size, name in ((1_000_000, "million"), (1000, "thousand")):
        if n >= size:
            return number_words(n // size) + [name] + (number_words(n % size) if n % size else [])
    raise ValueError(n)


def _year_words(n: int) -> list[str]:
    """Four-digit years the way they are read: 1961 -> nineteen sixty one; 2005 -> two thousand five."""
    hi, lo = divmod(n, 100)
    if hi % 10 == 0:
        return number_words(n)
    return number_words(hi) + (["hundred"] if lo == 0 else (["oh"] if lo < 10 else []) + number_words(lo))


def normalize_transcript(transcript: str) -> tuple[list[str], list[str]]:
    """Dictionary words for a transcript, and the tokens that had to be dropped.

    Numbers become words, punctuation goes, hyphenated and possessive forms are tried in pieces, acronyms that
    the dictionary lacks are spelled letter by letter.
    """
    words: list[str] = []
    dropped: list[str] = []
    for token in re.findall(r"[A-Za-z0-9][A-Za-z0-9'\-]*", transcript.replace("\u2019", "'")):
        token = token.strip("'-")
        if not token:
            continue
        if token.isdigit() and len(token) <= 9:
            n = int(token)
            words.extend(_year_words(n) if len(token) == 4 and 1100 <= n <= 2099 else number_words(n))
            continue
        lower = token.lower()
        if pronunciation(lower):
            words.append(lower)
            continue
        parts = [p for p in re.split(r"[\-']", lower) if p]
        if lower.endswith("'s") and pronunciation(lower[:-2]):
            words.append(lower[:-2])
            continue
        if len(parts) > 1 and all(pronunciation(p) for p in parts):
            words.extend(parts)
            continue
        split = next(((lower[:i], lower[i:]) for i in range(2, len(lower) - 1)
                      if pronunciation(lower[:i]) and pronunciation(lower[i:])), None)
        if split and len(lower) >= 7 and lower.isalpha() and min(map(len, split)) >= 3:
            words.extend(split)  # a compound: woodcutters -> wood cutters
            continue
        letters = [c for c in lower if c.isalpha()]
        if token.isupper() and 1 < len(token) <= 6 and letters and all(pronunciation(c) for c in letters):
            words.extend(letters)  # an acronym: spell it
            continue
        dropped.append(token)
    return words, dropped


# --- alignment --------------------------------------------------------------------------------------------------


def align_transcript(samples: np.ndarray, rate_hz: int, transcript: str) -> tuple[list[Word], list[Phone]]:
    """Word and phone timings (seconds) of ``transcript`` as spoken in ``samples``.

    Words are in transcript order (as dictionary words); phones are ARPAbet without stress, silences omitted.
    Raises ``AudioError`` only for an empty recording; an empty or unusable transcript gives empty lists with a
    warning. The same audio and transcript give the same timings whatever the process aligned before: the
    decoder's live cepstral mean normalisation adapts to what it hears, so each alignment starts from the new
    decoder's means, one alignment at a time.
    """
    with _decoder_lock:
        decoder = _get_decoder()
        decoder.reinit_feat()
        decoder.set_cmn(_decoder_cmn)
        return _align_transcript(samples, rate_hz, transcript)


def _align_transcript(samples: np.ndarray, rate_hz: int, transcript: str) -> tuple[list[Word], list[Phone]]:
    x = resample(np.asarray(samples, np.float32), rate_hz, AUDIO_RATE_HZ)
    if len(x) == 0:
        raise AudioError("cannot align a transcript to empty audio; give a recording that contains speech")
    words, dropped = normalize_transcript(transcript)
    if dropped:
        logger.warning("transcript words not in the pronunciation dictionary were left out of the alignment: %s",
                       ", ".join(repr(w) for w in dropped))
    if not words:
        logger.warning("the transcript has no words to align; mouth shapes will follow the audio alone")
        return [], []

    duration_s = len(x) / AUDIO_RATE_HZ
    regions = speech_regions(x, AUDIO_RATE_HZ) or [(0.0, duration_s)]
    bounds = _piece_bounds(regions, duration_s)
    estimates = _word_shares(words, regions, bounds)
    out_words: list[Word] = []
    out_phones: list[Phone] = []
    first = 0
    for n, (t0, t1) in enumerate(bounds):
        a, b = int(round(t0 * AUDIO_RATE_HZ)), int(round(t1 * AUDIO_RATE_HZ))
        last_piece = n == len(bounds) - 1
        # The text is shared out in proportion to speech time; the share is only an estimate, so try word
        # counts around it and keep the one the acoustic model likes best.
        if last_piece:
            candidates = [len(words)]
        else:
            est = max(first, min(len(words), estimates[n]))
            candidates = sorted({max(first, min(len(words), est + d)) for d in range(-ALIGN_SEARCH_WORDS,
                                                                                     ALIGN_SEARCH_WORDS + 1)})
        best = None
        piece_regions = [(max(s, t0) - t0, min(e, t1) - t0) for s, e in regions if e > t0 and s < t1]
        for upto in candidates:
            if upto == first:
                continue
            result = _align_piece(x[a:b], words[first:upto])
            if result is None:
                continue
            # Too few words leave speech unexplained (the aligner calls it silence); too many squeeze words
            # into pauses. Prefer the count that explains the speech, then the better acoustic score.
            cost = (round(_misfit_s(result[0], piece_regions), 1), -result[2])
            logger.debug("piece %.1f-%.1f s, %d words: misfit %.1f s, score %.1f", t0, t1, upto - first, *cost)
            if best is None or cost < best[2]:
                best = (upto, result, cost)
        if best is None:
            upto = len(words) if last_piece else max(first, min(len(words), estimates[n]))
            if upto > first:
                logger.warning("forced alignment failed for %.1f-%.1f s (%d words); their timings are estimated "
                               "from the speech regions instead (check that the transcript matches the audio)",
                               t0, t1, upto - first)
                w, p = _spread(words[first:upto], piece_regions or [(0.0, t1 - t0)])
            else:
                w, p = [], []
        else:
            upto, (w, p, _), _ = best
        first = upto
        out_words += [Word(v.text, float(v.start_s + t0), float(v.end_s + t0)) for v in w]
        out_phones += [Phone(v.phone, float(v.start_s + t0), float(v.end_s + t0)) for v in p]
    return out_words, out_phones


def _misfit_s(words: list[Word], regions: list[tuple[float, float]]) -> float:
    """Seconds of speech that no word covers plus seconds of words outside speech (10 ms resolution)."""
    if not regions:
        return 0.0
    n = int(np.ceil(max(max(e for _, e in regions), max((w.end_s for w in words), default=0.0)) / 0.01)) + 1
    speech = np.zeros(n, bool)
    covered = np.zeros(n, bool)
    for s, e in regions:
        speech[int(s / 0.01): int(e / 0.01)] = True
    for w in words:
        covered[int(w.start_s / 0.01): int(w.end_s / 0.01)] = True
    return 0.01 * float(np.count_nonzero(speech & ~covered) + np.count_nonzero(covered & ~speech))


def _piece_bounds(regions: list[tuple[float, float]], duration_s: float) -> list[tuple[float, float]]:
    """Cut a long recording at pauses into pieces of at most ALIGN_MAX_CHUNK_S (at the midpoints of pauses;
    a stretch without a usable pause is cut evenly)."""
    if duration_s <= ALIGN_MAX_CHUNK_S:
        return [(0.0, duration_s)]
    cuts = [0.0]
    pauses = [(0.5 * (e + s), s - e) for (_, e), (s, _) in zip(regions, regions[1:]) if s - e >= ALIGN_MIN_CUT_GAP_S]
    while duration_s - cuts[-1] > ALIGN_MAX_CHUNK_S:
        usable = [(mid, gap) for mid, gap in pauses if cuts[-1] + 0.4 * ALIGN_MAX_CHUNK_S < mid
                  <= cuts[-1] + ALIGN_MAX_CHUNK_S]
        if usable:
            cuts.append(max(usable, key=lambda mg: (mg[1], mg[0]))[0])  # the longest pause in reach
        else:
            cuts.append(cuts[-1] + ALIGN_MAX_CHUNK_S)
    cuts.append(duration_s)
    return list(zip(cuts, cuts[1:]))


def _word_shares(words: list[str], regions: list[tuple[float, float]], bounds: list[tuple[float, float]]
                 ) -> list[int]:
    """For each piece, the estimated index after its last word: the text shared out in proportion to each
    piece's speech time (weighted by letters, a fair proxy for speaking time)."""
    speech = np.array([sum(max(0.0, min(e, b) - max(s, a)) for s, e in regions) for a, b in bounds])
    share = np.cumsum(speech) / max(speech.sum(), 1e-9)
    letters = np.cumsum([len(w) + 1 for w in words]).astype(float)
    letters /= letters[-1]
    return [int(np.argmin(np.abs(letters - u))) + 1 for u in share]


def _align_piece(x: np.ndarray, words: list[str]) -> tuple[list[Word], list[Phone], float] | None:
    """Align ``words`` to ``x``: (words, phones, acoustic score per frame), or None when it does not align."""
    pcm = float_to_pcm16(x)
    with _decoder_lock:
        decoder = _get_decoder()
        try:
            decoder.set_align_text(" ".join(words))
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            if hyp is None:
                return None
            score = float(hyp.best_score) / max(1, len(pcm) // 320)
            decoder.set_alignment()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            alignment = decoder.get_alignment()
        except RuntimeError as exc:
            logger.debug("pocketsphinx alignment failed: %s", exc)
            return None
        if alignment is None:
            return None
        out_words: list[Word] = []
        out_phones: list[Phone] = []
        for w in alignment:
            name = re.sub(r"\(\d+\)$", "", w.name)
            if name.startswith("<") or name.startswith("[") or name.startswith("+"):
                continue
            out_words.append(Word(name, w.start * ALIGN_FRAME_S, (w.start + w.duration) * ALIGN_FRAME_S))
            for p in w:
                if p.name.upper() == "SIL":
                    continue
                out_phones.append(Phone(p.name.upper(), p.start * ALIGN_FRAME_S,
                                        (p.start + p.duration) * ALIGN_FRAME_S))
    if [w.text for w in out_words] != words:
        return None
    return out_words, out_phones, score


def _spread(words: list[str], regions: list[tuple[float, float]]) -> tuple[list[Word], list[Phone]]:
    """Place words over speech regions in proportion to their letters (a fallback when alignment fails)."""
    total = sum(e - s for s, e in regions)
    weights = np.array([len(w) + 1.0 for w in words])
    edges = np.concatenate(([0.0], np.cumsum(weights) / weights.sum() * total))

    def to_time(u: float) -> float:
        for s, e in regions:
            if u <= e - s + 1e-9:
                return s + u
            u -= e - s
        return regions[-1][1]

    out = [Word(w, float(to_time(edges[i])), float(to_time(edges[i + 1]))) for i, w in enumerate(words)]
    return out, phones_from_words(out)


def phones_from_words(words: list[Word]) -> list[Phone]:
    """Phone timings from word timings: each word's dictionary pronunciation spread over its span, vowels given
    more time than consonants. Words not in the dictionary give no phones (the audio drives the mouth there)."""
    phones: list[Phone] = []
    missing: list[str] = []
    for w in words:
        if w.end_s <= w.start_s:
            continue
        pron: list[str] = []
        tokens, dropped = normalize_transcript(w.text)
        for t in tokens:
            pron += pronunciation(t) or []
        if dropped:
            missing += dropped
        if not pron:
            continue
        weights = np.array([1.6 if p in VOWELS else 1.0 for p in pron])
        edges = w.start_s + (w.end_s - w.start_s) * np.concatenate(([0.0], np.cumsum(weights))) / weights.sum()
        phones += [Phone(p, float(edges[i]), float(edges[i + 1])) for i, p in enumerate(pron)]
    if missing:
        logger.warning("no pronunciation for %s; the audio alone drives the mouth for them",
                       ", ".join(repr(m) for m in missing))
    return phones
