"""The start cushion of a live session: how long an utterance waits beyond its first frame's audio before it starts
(``StartCushion``: adaptive, like a receiver's jitter buffer, or fixed)."""

from __future__ import annotations

from collections import deque

import numpy as np

from avatarcast.core.errors import InputError, InvalidValueError

START_CUSHION_S = 0.02
"""Audio buffered beyond the first frame before an utterance starts, so real-time senders do not starve it (the
least the adaptive ``StartCushion`` uses)."""
CUSHION_MAX_EXTRA_S = 0.08
"""The most ``StartCushion`` adds to ``START_CUSHION_S`` (beyond it the scheduler's look-ahead of ``LOOKAHEAD_FRAMES`` frames
limits how early a speech frame can be rendered anyway)."""
CUSHION_TARGET_MARGIN_S = 0.01
CUSHION_QUANTILE = 0.5
"""``StartCushion`` aims to have the ``CUSHION_QUANTILE`` percentile of the recent speech frames' margins (their
deadline minus the time their render was done) at ``CUSHION_TARGET_MARGIN_S``: about one frame in 200 is done
less than 10 ms before it is due."""
CUSHION_WINDOW = 500
"""How many recent speech frames it looks at (20 s of speech at 25 fps)."""
CUSHION_MIN_FRAMES = 50
"""Speech frames it needs before it moves."""
CUSHION_SHRINK_S = 0.005
"""Its step down after one utterance (it steps up at once)."""
MAX_START_CUSHION_S = 0.5
"""The largest fixed start cushion accepted (``--start-cushion-ms``)."""

class StartCushion:
    """How long an utterance waits beyond its first frame's audio before it starts: ``START_CUSHION_S`` of audio,
    plus an extra that follows how close to their deadlines the session's speech frames are rendered, by which its
    first frame is placed further ahead (``audio_s``); or a fixed amount of audio, ``fixed_s``, that never moves.

    Once an utterance has started, each speech frame's audio arrives (from a sender at real-time pace) about
    ``START_CUSHION_S`` plus the render budget before the frame is shown, and its frame must be analysed and
    rendered in that time. An idle machine does that with tens of milliseconds to spare, but on a busy one (several
    sessions on two cores) the render process and the server's event loop wait for a CPU, and a few frames in a
    thousand miss their deadline (an underrun: the last frame is shown while the audio plays on). Like a
    receiver's adaptive jitter buffer, the extra is what would have put the ``CUSHION_QUANTILE`` percentile of the
    last ``CUSHION_WINDOW`` speech frames' margins at ``CUSHION_TARGET_MARGIN_S`` (a margin grows one for one with
    the cushion: the audio arrives when it does, the deadline moves), at most ``CUSHION_MAX_EXTRA_S``. It follows a
    rise at once and a fall by ``CUSHION_SHRINK_S`` an utterance, and changes only between utterances, so audio
    and video never move within one. Its cost is its extra in first-frame latency, only where frames were near
    their deadlines. A sender that pushes faster than real time leaves every frame a wide margin: no extra.

    A sender whose audio comes late (network or TTS jitter) makes the speech pause mid-utterance (``gap`` slots,
    ``starved_ms``): when its audio goes on after ``n`` gap slots, the pause counts as one frame ``n`` frames late.
    Once the window is full, a single pause is below the percentile and changes nothing; pauses that recur (three
    or more in the window) raise the cushion to absorb them, as a receiver's jitter buffer absorbs the network's
    jitter. Gaps that end the utterance (the audio stopped before ``speech.end``, or an interrupt) say nothing
    about jitter and are not counted.
    """

    def __init__(self, fixed_s: float | None = None) -> None:
        if fixed_s is not None and not 0.0 <= fixed_s <= MAX_START_CUSHION_S:
            raise InvalidValueError(f"a fixed start cushion must be 0-{MAX_START_CUSHION_S * 1000:g} ms, got {fixed_s}")
        self.fixed_s = fixed_s
        self.extra_s = 0.0
        self._margins: deque[float] = deque(maxlen=CUSHION_WINDOW)  # each as it would be with no extra

    @property
    def adaptive(self) -> bool:
        return self.fixed_s is None

    @property
    def seconds(self) -> float:
        return self.fixed_s if self.fixed_s is not None else START_CUSHION_S + self.extra_s

    @property
    def audio_s(self) -> float:
        """The audio beyond its first frame an utterance waits for; the scheduler adds ``extra_s`` to the render
        budget of its first frame instead. For a sender at real-time pace the two come to the same (waiting for
        ``extra_s`` more audio takes ``extra_s``), but only the second gives the utterance's first frames, which
        are rendered as soon as it starts, more time too."""
        return self.fixed_s if self.fixed_s is not None else START_CUSHION_S

    def margin(self, margin_s: float, extra_s: float) -> None:
        """A speech frame's render was done ``margin_s`` before its deadline (negative: after it), in an utterance
        that started with ``extra_s``."""
        self._margins.append(margin_s - extra_s)

    def update(self) -> None:
        """Between utterances: set the extra from the recent margins."""
        if self.fixed_s is not None or len(self._margins) < CUSHION_MIN_FRAMES:
            return
        low = float(np.percentile(np.asarray(self._margins, np.float64), CUSHION_QUANTILE))
        target = min(max(CUSHION_TARGET_MARGIN_S - low, 0.0), CUSHION_MAX_EXTRA_S)
        self.extra_s = target if target >= self.extra_s else max(target, self.extra_s - CUSHION_SHRINK_S)


def parse_start_cushion(text: str | float | None) -> float | None:
    """The ``--start-cushion-ms`` setting, checked: ``auto`` (adaptive, ``None``) or a fixed number of
    milliseconds."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return None
    try:
        ms = float(text)
    except ValueError:
        raise InputError(f"`start_cushion_ms` must be 'auto' or milliseconds, got {text!r}") from None
    if not 0.0 <= ms <= MAX_START_CUSHION_S * 1000.0:
        raise InputError(f"`start_cushion_ms` must be 'auto' or 0-{MAX_START_CUSHION_S * 1000:g} ms, got {ms:g}")
    return ms
