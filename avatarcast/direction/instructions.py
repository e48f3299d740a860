"""Free-text instructions ("smile warmly and nod at the start") parsed into emotion and action cues with anchors.

The parser is deliberately small and predictable: a fixed vocabulary, no guessing. An instruction is split into
sentences (``.``, ``!``, ``?``, ``;``) and each sentence into clauses (``,``, ``and``, ``then``). In each clause it
finds:

- emotions: adjectives and adverbs (``happy``, ``warmly``, ``sad``, ``surprised``, ...); ``smile`` is the happy
  emotion, and also a ``smile`` action when it is anchored to a moment;
- actions: ``nod``, ``shake your head``, ``tilt your head left``, ``raise your brows``, ``look left``, ``wink``,
  ``lean in``, ``blink``, ...;
- intensities: ``slightly``/``a little`` (0.3), ``very`` (0.85), ``extremely`` (1.0); default 0.6. They apply to
  every cue in their clause;
- anchors: ``at the start``, ``at the end``, ``throughout``, ``after N seconds`` / ``at N seconds``,
  ``when you say 'X'`` / ``on 'X'`` (quoted phrases, anchored later to word timings).

An anchor applies to the cues of its clause. An action in a clause without an anchor takes the sentence's anchor
(so "smile and nod at the start" nods at the start); an emotion without its own anchor holds throughout.
Every word that is neither a cue, an anchor, an intensity nor a common function word is reported in ``warnings``,
never silently dropped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Literal

from avatarcast.direction.storyboard import ActionKind, Emotion

log = logging.getLogger(__name__)

DEFAULT_INTENSITY = 0.6
MAX_INSTRUCTION_CHARS = 4000

AnchorKind = Literal["start", "end", "throughout", "time", "phrase", "none"]


@dataclass(frozen=True)
class Anchor:
    """When a cue applies: a named moment, a time in seconds, or a quoted phrase to find in the words."""

    kind: AnchorKind = "none"
    time_s: float | None = None
    phrase: str | None = None

    def describe(self) -> str:
        if self.kind == "time":
            return f"at {self.time_s:g} s"
        if self.kind == "phrase":
            return f"on '{self.phrase}'"
        return self.kind


@dataclass(frozen=True)
class EmotionCue:
    emotion: Emotion
    intensity: float
    anchor: Anchor


@dataclass(frozen=True)
class ActionCue:
    kind: ActionKind
    intensity: float
    anchor: Anchor


@dataclass
class ParsedInstruction:
    text: str
    emotions: list[EmotionCue] = field(default_factory=list)
    actions: list[ActionCue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.emotions and not self.actions


EMOTION_WORDS: dict[str, Emotion] = {}
for _emotion, _words in {
    Emotion.happy: "happy happily cheerful cheerfully joyful joyfully glad gladly warm warmly friendly pleased "
                   "smile smiles smiling grin grins grinning delighted kind kindly warmth joy happiness",
    Emotion.sad: "sad sadly unhappy sorrowful sorrowfully melancholy melancholic somber sombre gloomy mournful "
                 "mournfully sadness upset",
    Emotion.angry: "angry angrily mad annoyed irritated furious furiously stern sternly anger cross",
    Emotion.surprised: "surprised surprise surprisedly astonished amazed shocked startled stunned",
    Emotion.thoughtful: "thoughtful thoughtfully pensive pensively reflective reflectively contemplative thinking "
                        "serious seriously",
    Emotion.excited: "excited excitedly enthusiastic enthusiastically energetic energetically thrilled eager "
                     "eagerly lively animated excitement",
    Emotion.calm: "calm calmly relaxed serene serenely peaceful peacefully soothing composed",
    Emotion.fearful: "afraid scared fearful fearfully nervous nervously anxious anxiously worried frightened",
    Emotion.disgusted: "disgusted disgust grossed revolted",
    Emotion.confident: "confident confidently assertive assertively proud proudly bold boldly",
    Emotion.curious: "curious curiously intrigued inquisitive inquisitively interested",
    Emotion.neutral: "neutral neutrally deadpan expressionless impassive",
}.items():
    for _w in _words.split():
        EMOTION_WORDS[_w] = _emotion

INTENSITY_WORDS: dict[str, float] = {
    "slightly": 0.3, "slight": 0.3, "subtly": 0.3, "subtle": 0.3, "gently": 0.3, "gentle": 0.3, "softly": 0.3,
    "mildly": 0.3, "lightly": 0.3, "barely": 0.2, "small": 0.3, "faintly": 0.25, "a little": 0.3, "a bit": 0.3,
    "a touch": 0.3, "somewhat": 0.45, "moderately": 0.5,
    "very": 0.85, "really": 0.85, "strongly": 0.85, "deeply": 0.85, "big": 0.85, "broadly": 0.85, "firmly": 0.8,
    "clearly": 0.75, "quite": 0.75,
    "extremely": 1.0, "incredibly": 1.0, "hugely": 1.0, "intensely": 1.0, "enormously": 1.0, "super": 1.0,
    "totally": 1.0,
}

_DIR = r"(?:to\s+(?:the\s+|your\s+)?)?"
# (pattern, action); longer patterns first so "shake your head" wins over bare words.
ACTION_PATTERNS: list[tuple[str, ActionKind]] = [
    (r"shak(?:e|es|ing)\s+(?:your\s+|the\s+|his\s+|her\s+)?head(?:\s+no)?", ActionKind.shake),
    (r"head\s+shakes?", ActionKind.shake),
    (r"tilt(?:s|ing)?\s+(?:your\s+|the\s+)?head\s+" + _DIR + r"left", ActionKind.tilt_left),
    (r"tilt(?:s|ing)?\s+(?:your\s+|the\s+)?head\s+" + _DIR + r"right", ActionKind.tilt_right),
    (r"tilt(?:s|ing)?\s+" + _DIR + r"left", ActionKind.tilt_left),
    (r"tilt(?:s|ing)?\s+" + _DIR + r"right", ActionKind.tilt_right),
    (r"tilt(?:s|ing)?(?:\s+(?:your\s+|the\s+)?head)?", ActionKind.tilt_right),
    (r"look(?:s|ing)?\s+" + _DIR + r"left", ActionKind.look_left),
    (r"look(?:s|ing)?\s+" + _DIR + r"right", ActionKind.look_right),
    (r"look(?:s|ing)?\s+(?:up|upward|upwards)", ActionKind.look_up),
    (r"look(?:s|ing)?\s+(?:down|downward|downwards)", ActionKind.look_down),
    (r"glanc(?:e|es|ing)\s+" + _DIR + r"left", ActionKind.look_left),
    (r"glanc(?:e|es|ing)\s+" + _DIR + r"right", ActionKind.look_right),
    (r"(?:raise|raises|raising|lift|lifts|lifting)\s+(?:your\s+|the\s+)?(?:eye)?brows",
     ActionKind.raise_brows),
    (r"(?:eye)?brows?\s+(?:up|raised)", ActionKind.raise_brows),
    (r"frown(?:s|ing)?", ActionKind.frown),
    (r"furrow(?:s|ing)?\s+(?:your\s+|the\s+)?(?:eye)?brows", ActionKind.frown),
    (r"wink(?:s|ing)?", ActionKind.wink),
    (r"lean(?:s|ing)?\s+(?:in|forward|closer|towards?\s+(?:the\s+)?camera)", ActionKind.lean_in),
    (r"lean(?:s|ing)?\s+(?:back|backward|backwards|away)", ActionKind.lean_back),
    (r"blink(?:s|ing)?", ActionKind.blink),
    (r"nod(?:s|ding|ded)?(?:\s+(?:your\s+|the\s+)?head)?", ActionKind.nod),
    (r"shak(?:e|es|ing)", ActionKind.shake),
]
_ACTION_RES = [(re.compile(r"\b" + p + r"\b"), k) for p, k in ACTION_PATTERNS]

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "half a": 0.5, "a": 1,
}
_NUM = r"(\d+(?:\.\d+)?|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")"
_SECONDS = r"(?:seconds?|secs?|s)\b"

ANCHOR_PATTERNS: list[tuple[str, str]] = [
    (r"(?:at|in)\s+the\s+(?:very\s+)?(?:start|beginning|outset)(?:\s+of\s+(?:it|the\s+\w+))?", "start"),
    (r"(?:to\s+(?:start|begin)(?:\s+with)?|first(?:\s+of\s+all)?|initially|right\s+away|straight\s+away"
     r"|from\s+the\s+(?:start|beginning))", "start"),
    (r"(?:at|by|near|towards?)\s+the\s+(?:very\s+)?(?:end|close|finish)(?:\s+of\s+(?:it|the\s+\w+))?", "end"),
    (r"(?:finally|lastly|to\s+(?:finish|end|close)(?:\s+with)?|in\s+the\s+end)", "end"),
    (r"(?:throughout(?:\s+the\s+\w+)?|the\s+whole\s+(?:time|way|thing)|all\s+(?:the\s+)?(?:time|along|through)"
     r"|the\s+entire\s+time|always|continuously|constantly|everywhere)", "throughout"),
    (r"(?:after|at|around|about)\s+" + _NUM + r"\s*" + _SECONDS + r"(?:\s+in)?", "time"),
    (_NUM + r"\s*" + _SECONDS + r"\s+in", "time"),
]
_ANCHOR_RES = [(re.compile(r"\b" + p), k) for p, k in ANCHOR_PATTERNS]
# A placeholder token stands for each quoted phrase; the words around it say it is an anchor.
_PHRASE_TOKEN = "qphrase"
_PHRASE_ANCHOR_RE = re.compile(
    r"\b(?:(?:when|while|as)\s+(?:you\s+)?(?:say|says|said|saying|reach|reaching|get\s+to|hit|speak|utter)"
    r"(?:\s+the\s+(?:words?|phrase))?|(?:on|at|during|with|before|after)(?:\s+the\s+(?:words?|phrase))?)\s+"
    + _PHRASE_TOKEN + r"(\d+)\b"
)
_QUOTE_RE = re.compile(r"(?<![\w])['\"‘“«]([^'\"‘’“”«»]+?)['\"’”»](?![\w])")
_INTENSITY_RES = [(re.compile(r"\b" + re.escape(w) + r"\b"), v)
                  for w, v in sorted(INTENSITY_WORDS.items(), key=lambda kv: -len(kv[0]))]

FILLER_WORDS = frozenset("""
a an the and or then also too as so but to at on in of for with by from into onto about like this that these those
it its it's you your you're yourself please be are is am was were been being do does doing keep stay remain
when while whenever say says saying said speak speaking talk talking sound sounding look looks looking seem seems
seeming act acting appear appearing make making feel feeling show showing express expressing give giving
head face eyes eye expression expressions mood tone voice manner way bit little lot touch while during each every
just some all time times moment moments word words phrase phrases sentence sentences part i me my we our us let
let's can could would should will now here there again more most less once twice occasionally sometimes often
same well kind of sort start end beginning try sure go going get gets getting it's one's yes no not very
""".split())
"""Grammar words that carry no direction; everything else that is not understood is reported."""


def _number(text: str) -> float:
    text = text.strip()
    if text in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[text])
    return float(text)


def _split(text: str, pattern: str) -> list[str]:
    return [p for p in re.split(pattern, text) if p and p.strip()]


def parse_instruction(text: str | None) -> ParsedInstruction:
    """Parse an instruction into emotion and action cues with anchors; unknown words go to ``warnings``."""
    result = ParsedInstruction(text=text or "")
    if not text or not text.strip():
        return result
    if len(text) > MAX_INSTRUCTION_CHARS:
        result.warnings.append(f"instruction is {len(text)} characters; only the first {MAX_INSTRUCTION_CHARS} "
                               "were read")
        text = text[:MAX_INSTRUCTION_CHARS]
    phrases: list[str] = []

    def _take_phrase(m: re.Match) -> str:
        phrases.append(" ".join(m.group(1).split()))
        return f" {_PHRASE_TOKEN}{len(phrases) - 1} "

    body = _QUOTE_RE.sub(_take_phrase, text)
    body = body.lower().replace("’", "'")
    unknown: list[str] = []
    # Split sentences on . ! ? ; but not on decimal points ("after 2.5 seconds").
    for sentence in _split(body, r"(?<!\d)[.!?;]+|[.!?;]+(?!\d)"):
        clause_results = []
        sentence_anchor: Anchor | None = None
        for clause in _split(sentence, r",|\band\b|\bthen\b|\bbut\b"):
            emotions, actions, anchor, intensity, leftovers = _parse_clause(clause, phrases)
            unknown.extend(leftovers)
            clause_results.append((emotions, actions, anchor, intensity))
            if anchor is not None and sentence_anchor is None:
                sentence_anchor = anchor
        for emotions, actions, anchor, intensity in clause_results:
            level = intensity if intensity is not None else DEFAULT_INTENSITY
            for emo, is_smile in emotions:
                emo_anchor = anchor or Anchor("throughout")
                cue = EmotionCue(emo, level, emo_anchor)
                if cue not in result.emotions:
                    result.emotions.append(cue)
                if is_smile and anchor is not None and anchor.kind in ("start", "end", "time", "phrase"):
                    result.actions.append(ActionCue(ActionKind.smile, level, anchor))
            for kind in actions:
                result.actions.append(ActionCue(kind, level, anchor or sentence_anchor or Anchor("none")))
    seen = set()
    for w in unknown:
        if w not in seen:
            seen.add(w)
            result.warnings.append(f"instruction word '{w}' was not understood and was ignored")
    if result.empty and not result.warnings:
        result.warnings.append("instruction has no emotion or action the director knows")
    for w in result.warnings:
        log.warning("%s", w)
    return result


def _parse_clause(clause: str, phrases: list[str]):
    consumed = [False] * len(clause)

    def mark(m: re.Match) -> None:
        for i in range(m.start(), m.end()):
            consumed[i] = True

    def free(m: re.Match) -> bool:
        return not any(consumed[m.start():m.end()])

    anchor: Anchor | None = None
    for m in _PHRASE_ANCHOR_RE.finditer(clause):
        if anchor is None:
            anchor = Anchor("phrase", phrase=phrases[int(m.group(1))])
        mark(m)
    for rx, kind in _ANCHOR_RES:
        for m in rx.finditer(clause):
            if not free(m):
                continue
            if anchor is None:
                if kind == "time":
                    anchor = Anchor("time", time_s=_number(m.group(1)))
                else:
                    anchor = Anchor(kind)  # type: ignore[arg-type]
            mark(m)
    actions: list[ActionKind] = []
    for rx, kind in _ACTION_RES:
        for m in rx.finditer(clause):
            if free(m):
                actions.append(kind)
                mark(m)
    intensity: float | None = None
    for rx, value in _INTENSITY_RES:
        for m in rx.finditer(clause):
            if free(m):
                intensity = value if intensity is None else max(intensity, value)
                mark(m)
    emotions: list[tuple[Emotion, bool]] = []
    leftovers: list[str] = []
    for m in re.finditer(r"[a-z0-9']+", clause):
        if not free(m):
            continue
        word = m.group(0).strip("'")
        if word.startswith(_PHRASE_TOKEN):
            # A quoted phrase that no anchor words introduce ("'hello' with a smile" is read as on 'hello').
            idx = int(word[len(_PHRASE_TOKEN):] or 0)
            if anchor is None:
                anchor = Anchor("phrase", phrase=phrases[idx])
            continue
        if word in EMOTION_WORDS:
            emotions.append((EMOTION_WORDS[word], word.startswith(("smil", "grin"))))
        elif word and word not in FILLER_WORDS and not word.isdigit():
            leftovers.append(word)
    return emotions, actions, anchor, intensity, leftovers
