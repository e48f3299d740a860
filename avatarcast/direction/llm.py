"""An optional director that asks a language model for the storyboard, with the rule-based one as its safety net.

The model is any OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, Ollama, a hosted API): only the
configured base URL is contacted (``POST {base_url}/chat/completions``), with explicit timeouts. The request carries
the storyboard JSON Schema as ``response_format={"type": "json_schema", ...}``; servers that reject that (llama.cpp
answers HTTP 500) get one retry with ``{"type": "json_object", "schema": ...}``, the schema without its length
bounds (see ``grammar_schema``).

The answer is validated and repaired (times clamped into the timeline, segments made contiguous, unknown actions and
emotions dropped or neutralised with a warning, overlapping actions resolved). When the endpoint times out, errors,
truncates its answer (``finish_reason == "length"``) or returns something that cannot be repaired, the rule-based
storyboard is used instead and says so: ``storyboard.fallback`` holds the reason and a warning is added and logged.

The request shows the model the timeline, the word timings, a prosody summary (offline) and the rule-based draft;
with ``send_portrait`` it also shows the avatar's portrait as an image content part, for endpoints that accept
images (one that refuses it with a 4xx is asked again without the image, so text-only endpoints keep working).

For live use, ``LLMPlanner`` runs a request in the background and never blocks: ``poll()`` returns the storyboard
only once it has arrived (and only before its deadline); ``LiveDirector`` adopts it for the part of the utterance
not yet committed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from avatarcast.audio.prosody import analyze_prosody
from avatarcast.core.errors import AvatarcastError, InputError
from avatarcast.core.realtime import demote
from avatarcast.direction.director import PlanWindow, RuleDirector, _samples_of, _speech_regions, stream_emphasis
from avatarcast.direction.storyboard import (
    MAX_ACTION_DURATION_S,
    MIN_ACTION_DURATION_S,
    ActionKind,
    Emotion,
    SegmentKind,
    Action,
    Storyboard,
    StoryboardError,
    parse_storyboard,
    resolve_action_overlaps,
    storyboard_json_schema,
)

log = logging.getLogger(__name__)

LLM_TIMEOUT_S = 30.0
LLM_CONNECT_TIMEOUT_S = 5.0
LLM_MAX_TOKENS = 3000
LLM_MAX_RESPONSE_BYTES = 2_000_000
MAX_PROMPT_WORDS = 600

SYSTEM_PROMPT = (
    "You direct a talking-head avatar. Given the timeline of a speech recording (speech and silence segments with "
    "their words and times) and the user's instruction, write a storyboard as JSON that follows the given JSON "
    "Schema exactly: segments covering 0..duration_s in order, an emotion and intensity per segment, timed actions "
    "(only the listed kinds) that suit the words and the instruction, a gaze plan and blink times. Keep the draft's "
    "segment borders unless the instruction asks otherwise. Answer with the JSON object only."
)


class LLMError(AvatarcastError):
    """The endpoint could not give a usable storyboard (the reason is in the message)."""


def grammar_schema(schema: Any) -> Any:
    """``schema`` without length bounds (``maxItems``, ``minItems``, ``maxLength``, ``minLength``), for servers that
    compile the schema into a sampling grammar: llama.cpp expands a bound of N items into N copies of the item's
    rules, and the storyboard's bounds (up to 20000 items) make it fail to parse the grammar and drop the connection.
    The answer is validated against the full schema afterwards (``repair_storyboard``), so nothing is lost."""
    if isinstance(schema, dict):
        return {k: grammar_schema(v) for k, v in schema.items()
                if k not in ("maxItems", "minItems", "maxLength", "minLength")}
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    return schema


@dataclass
class LLMConfig:
    """Where and how to ask. ``api_key`` defaults to the environment variable ``AVATARCAST_LLM_API_KEY``."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = LLM_TIMEOUT_S
    connect_timeout_s: float = LLM_CONNECT_TIMEOUT_S
    max_tokens: int = LLM_MAX_TOKENS
    temperature: float = 0.2
    portrait: str | Path | None = None
    """The avatar's portrait (an image file), shown to the model when ``send_portrait`` is set (and it is given)."""
    send_portrait: bool = False

    def __post_init__(self) -> None:
        u = urlparse(self.base_url or "")
        if u.scheme not in ("http", "https") or not u.netloc:
            raise InputError(f"LLM base URL {self.base_url!r} is not an http(s) URL; give one like "
                             "http://127.0.0.1:8000/v1")
        if not self.model:
            raise InputError("an LLM model name is needed (`llm_model`)")
        if self.api_key is None:
            self.api_key = os.environ.get("AVATARCAST_LLM_API_KEY") or None
        if self.send_portrait and self.portrait is not None and not Path(self.portrait).is_file():
            raise InputError(f"the portrait to show the LLM director ({self.portrait}) is not a file")

    def portrait_url(self) -> str | None:
        """The portrait as a data URL (None unless ``send_portrait``)."""
        if not self.send_portrait or self.portrait is None:
            return None
        path = Path(self.portrait)
        mime = {".png": "image/png", ".webp": "image/webp"}.get(path.suffix.lower(), "image/jpeg")
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@dataclass
class _Attempt:
    response_format: dict[str, Any]
    label: str


class LLMDirector:
    """Storyboards from an OpenAI-compatible chat model, falling back to ``RuleDirector`` (see module docs)."""

    def __init__(self, config: LLMConfig, fallback: RuleDirector | None = None) -> None:
        self.config = config
        self.fallback = fallback or RuleDirector()

    # -- public --
    def storyboard(self, audio: Any, transcript: str | None = None, instruction: str | None = None,
                   words: list[Any] | None = None) -> Storyboard:
        """Blocking variant of ``astoryboard`` (runs its own event loop, or a worker thread inside a running one)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.astoryboard(audio, transcript, instruction, words))
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["sb"] = asyncio.run(self.astoryboard(audio, transcript, instruction, words))
            except BaseException as exc:  # re-raised in the caller's thread
                box["exc"] = exc

        th = threading.Thread(target=work, name="llm-director", daemon=True)
        th.start()
        th.join()
        if "exc" in box:
            raise box["exc"]
        return box["sb"]

    async def astoryboard(self, audio: Any, transcript: str | None = None, instruction: str | None = None,
                          words: list[Any] | None = None) -> Storyboard:
        return await self.aplan(PlanWindow(audio=audio, transcript=transcript, instruction=instruction, words=words))

    async def aplan(self, window: PlanWindow, draft: Storyboard | None = None) -> Storyboard:
        """The model's storyboard for what is known of a stretch of the timeline (see ``RuleDirector.plan``);
        ``draft``: the rule-based plan of the same window when the caller has it already (live)."""
        prosody = None
        if draft is None:
            draft = await asyncio.to_thread(self.fallback.plan, window)
            prosody = await asyncio.to_thread(prosody_summary, window.audio)
        instruction = window.instruction
        try:
            content = await self._ask(self._messages(draft, instruction, window.words, prosody))
            sb, notes = repair_storyboard(content, draft.duration_s)
        except (LLMError, StoryboardError) as exc:
            reason = str(exc)
            msg = f"LLM director failed ({reason}); the rule-based storyboard is used instead"
            log.warning("%s", msg)
            return draft.model_copy(update={"fallback": reason[:500], "warnings": (draft.warnings + [msg])[:200],
                                            "director": "rules"})
        for n in notes:
            log.warning("LLM storyboard repaired: %s", n)
        return sb.model_copy(update={"director": "llm", "instruction": instruction, "fallback": None,
                                     "warnings": (draft.warnings + notes)[:200]})

    # -- internals --
    def _messages(self, draft: Storyboard, instruction: str | None, words: list[Any] | None = None,
                  prosody: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        segs = [{"start_s": s.start_s, "end_s": s.end_s, "kind": s.kind.value, "text": s.text}
                for s in draft.segments]
        context: dict[str, Any] = {
            "duration_s": draft.duration_s,
            "instruction": instruction or "",
            "segments": segs,
        }
        if words:
            context["words"] = [{"word": str(w.text), "start_s": round(float(w.start_s), 3),
                                 "end_s": round(float(w.end_s), 3)} for w in words[:MAX_PROMPT_WORDS]]
        if prosody:
            context["prosody"] = prosody
        context["draft"] = json.loads(draft.model_dump_json(include={"segments", "actions", "gaze", "blink_times_s"}))
        text = json.dumps(context)
        if len(text) > 60_000:  # very long audio: send the timeline without the draft and the words
            context.pop("draft")
            context.pop("words", None)
            text = json.dumps(context)[:60_000]
        url = self.config.portrait_url()
        user: dict[str, Any] = {"role": "user", "content": text}
        if url is not None:
            user["content"] = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
        return [{"role": "system", "content": SYSTEM_PROMPT + (PORTRAIT_PROMPT if url else "")}, user]

    async def _ask(self, messages: list[dict[str, str]]) -> str:
        schema = storyboard_json_schema()
        attempts = [
            _Attempt({"type": "json_schema", "json_schema": {"name": "storyboard", "schema": schema,
                                                              "strict": False}}, "json_schema"),
            _Attempt({"type": "json_object", "schema": grammar_schema(schema)}, "json_object"),
        ]
        deadline = time.monotonic() + self.config.timeout_s
        last_error = ""
        for attempt in attempts:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LLMError(f"timed out after {self.config.timeout_s:g} s")
            status, body = await self._post(messages, attempt.response_format, left)
            if 400 <= status < 500 and _has_image(messages):
                # an endpoint without image input: ask again with the text only
                log.info("LLM endpoint answered HTTP %s to the portrait; asking without it", status)
                messages = _text_only(messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LLMError(f"timed out after {self.config.timeout_s:g} s")
                status, body = await self._post(messages, attempt.response_format, left)
            if 400 <= status:
                last_error = f"HTTP {status} for response_format {attempt.label}: {body[:200]!r}"
                log.info("LLM endpoint answered %s; retrying with the next response_format", last_error)
                continue
            return self._content(body)
        raise LLMError(last_error or "no answer")

    async def _post(self, messages, response_format: dict[str, Any], timeout_s: float) -> tuple[int, str]:
        import aiohttp

        cfg = self.config
        payload = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                   "max_tokens": cfg.max_tokens, "response_format": response_format}
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(cfg.connect_timeout_s, timeout_s))
        try:
            async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
                async with session.post(cfg.chat_url, json=payload, headers=headers, allow_redirects=False) as r:
                    raw = await r.content.read(LLM_MAX_RESPONSE_BYTES + 1)
                    if len(raw) > LLM_MAX_RESPONSE_BYTES:
                        raise LLMError(f"response larger than {LLM_MAX_RESPONSE_BYTES} bytes")
                    return r.status, raw.decode("utf-8", errors="replace")
        except asyncio.TimeoutError:
            raise LLMError(f"timed out after {timeout_s:.1f} s waiting for {cfg.chat_url}") from None
        except aiohttp.ClientError as exc:
            raise LLMError(f"cannot reach {cfg.chat_url}: {exc}") from None

    @staticmethod
    def _content(body: str) -> str:
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError(f"the endpoint's answer is not an OpenAI chat completion: {body[:200]!r}") from None
        if choice.get("finish_reason") == "length":
            raise LLMError("the answer was truncated (finish_reason 'length'); raise max_tokens")
        if not isinstance(content, str) or not content.strip():
            raise LLMError("the answer is empty")
        return content


PORTRAIT_PROMPT = (
    " The image is the avatar's portrait: suit the gestures and their strength to this face and its framing."
)


def _has_image(messages: list[dict[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) for m in messages)


def _text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        elif m.get("role") == "system" and isinstance(content, str):
            content = content.replace(PORTRAIT_PROMPT, "")
        out.append({**m, "content": content})
    return out


def prosody_summary(audio: Any) -> dict[str, Any]:
    """What the model is told of the speech's prosody: energy, loudness and the emphasis peaks."""
    samples, rate_hz = _samples_of(audio)
    regions = _speech_regions(samples, rate_hz)
    p = analyze_prosody(samples, rate_hz, regions)
    return {"energy": round(p.energy, 3), "loudness_dbfs": round(p.loudness_dbfs, 1),
            "emphasis": [{"time_s": round(e.time_s, 2), "strength": round(e.strength, 2)}
                         for e in stream_emphasis(p, regions)][:200],
            "pauses": [[round(a, 2), round(b, 2)] for a, b in p.pauses][:200]}


_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.IGNORECASE)


def _num(x: Any, default: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if v == v and abs(v) != float("inf") else default


def repair_storyboard(content: str | dict, duration_s: float) -> tuple[Storyboard, list[str]]:
    """Validate a model's storyboard against the real ``duration_s``, fixing what can be fixed safely.

    Fixes: code fences, a wrong or missing duration/version, times clamped into ``[0, duration_s]``, segments sorted
    and made contiguous (gaps closed, overlaps trimmed, empty ones dropped), unknown emotions -> neutral, unknown
    segment kinds -> speech, unknown actions dropped, intensities clamped, same-body-part overlaps resolved.
    Raises ``LLMError`` when it is not a JSON object, has no usable segment, or still fails validation.
    """
    notes: list[str] = []
    if isinstance(content, str):
        text = _FENCE_RE.sub("", content.strip())
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LLMError(f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    else:
        data = content
    if not isinstance(data, dict):
        raise LLMError("the answer is not a JSON object")
    d = float(duration_s)

    def clamp_t(x: Any) -> float:
        return round(min(d, max(0.0, _num(x, 0.0))), 4)

    def unit(x: Any, default: float) -> float:
        return min(1.0, max(0.0, _num(x, default)))

    emotions = {e.value for e in Emotion}
    kinds = {k.value for k in ActionKind}
    segs_in = data.get("segments")
    if not isinstance(segs_in, list):
        raise LLMError("the answer has no segments list")
    segs = []
    for i, s in enumerate(segs_in[:5000]):
        if not isinstance(s, dict):
            continue
        a, b = clamp_t(s.get("start_s")), clamp_t(s.get("end_s"))
        emo = s.get("emotion", "neutral")
        if emo not in emotions:
            notes.append(f"segments[{i}].emotion '{emo}' is unknown; used neutral")
            emo = "neutral"
        kind = s.get("kind", "speech")
        if kind not in (SegmentKind.speech.value, SegmentKind.silence.value):
            kind = "speech"
        segs.append({"start_s": a, "end_s": b, "kind": kind, "text": str(s.get("text", ""))[:4000],
                     "emotion": emo, "intensity": unit(s.get("intensity"), 0.5)})
    segs.sort(key=lambda s: s["start_s"])
    fixed: list[dict[str, Any]] = []
    for s in segs:
        if fixed:
            s["start_s"] = fixed[-1]["end_s"]  # close gaps and trim overlaps
        if s["end_s"] - s["start_s"] <= 1e-3:
            continue
        fixed.append(s)
    if not fixed:
        raise LLMError("the answer has no usable segment")
    fixed[0]["start_s"] = 0.0
    if abs(fixed[-1]["end_s"] - d) > 1e-3:
        fixed[-1]["end_s"] = d
    actions = []
    for i, a in enumerate(data.get("actions") or []):
        if not isinstance(a, dict):
            continue
        if a.get("kind") not in kinds:
            notes.append(f"actions[{i}].kind '{a.get('kind')}' is not a known action; dropped")
            continue
        t = clamp_t(a.get("time_s"))
        dur = min(MAX_ACTION_DURATION_S, max(MIN_ACTION_DURATION_S, _num(a.get("duration_s"), 0.8)))
        dur = min(dur, d - t)
        if dur < MIN_ACTION_DURATION_S / 2:
            t = max(0.0, d - MIN_ACTION_DURATION_S)
            dur = d - t
        if dur <= 0:
            continue
        actions.append(Action(kind=a["kind"], time_s=t, duration_s=round(dur, 4),
                              intensity=unit(a.get("intensity"), 0.6)))
    actions, moved = resolve_action_overlaps(actions, d)
    notes.extend(moved)
    gaze = []
    for g in data.get("gaze") or []:
        if isinstance(g, dict):
            gaze.append({"time_s": clamp_t(g.get("time_s")), "x": max(-1.0, min(1.0, _num(g.get("x"), 0.0))),
                         "y": max(-1.0, min(1.0, _num(g.get("y"), 0.0)))})
    gaze.sort(key=lambda g: g["time_s"])
    blinks = sorted({clamp_t(b) for b in (data.get("blink_times_s") or []) if _num(b, -1.0) >= 0.0})
    repaired = {
        "version": 1, "duration_s": d, "segments": fixed[:5000],
        "actions": [a.model_dump(mode="json") for a in actions][:5000],
        "gaze": gaze[:5000], "blink_times_s": blinks[:20000], "director": "llm",
    }
    try:
        return parse_storyboard(repaired, source="LLM storyboard"), notes
    except StoryboardError as exc:
        raise LLMError(str(exc)) from None


# ---- live: never wait on the model ----------------------------------------------------------------------------------

@dataclass
class LLMPlanner:
    """Background storyboard requests for live mode: ``submit`` returns at once; ``poll`` returns the storyboard
    only if it has arrived (and only before the deadline given to ``submit``). A late answer is discarded."""

    director: LLMDirector
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _result: Storyboard | None = field(default=None, init=False, repr=False)
    _deadline: float = field(default=0.0, init=False, repr=False)
    _generation: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def submit(self, samples: Any, transcript: str | None, instruction: str | None, words: list[Any] | None,
               deadline_s: float) -> None:
        """Start a request; its answer counts only if it arrives within ``deadline_s`` seconds from now."""
        self._start(lambda: self.director.storyboard(samples, transcript, instruction, words), deadline_s)

    def submit_window(self, window: PlanWindow, draft: Storyboard | None, deadline_s: float) -> None:
        """Like ``submit``, for a window of the timeline (live: the utterance so far, with its rule-based plan as
        the draft)."""
        self._start(lambda: asyncio.run(self.director.aplan(window, draft)), deadline_s)

    def _start(self, ask: Callable[[], Storyboard], deadline_s: float) -> None:
        """Run ``ask`` in a thread of its own; keep its storyboard if no newer request came and the deadline held."""
        with self._lock:
            self._generation += 1
            gen = self._generation
            self._result = None
            self._deadline = time.monotonic() + deadline_s

        def work() -> None:
            demote()  # started by a render worker, maybe a real-time one: a request is not on its deadline
            try:
                sb = ask()
            except Exception as exc:  # never raised on the live path
                log.warning("live LLM planner failed: %s", exc)
                return
            with self._lock:
                if gen == self._generation and time.monotonic() <= self._deadline and sb.fallback is None:
                    self._result = sb

        self._thread = threading.Thread(target=work, name="llm-planner", daemon=True)
        self._thread.start()

    def poll(self) -> Storyboard | None:
        """The storyboard if it arrived in time; None otherwise (use the live director's own plan)."""
        with self._lock:
            return self._result

    def cancel(self) -> None:
        with self._lock:
            self._generation += 1
            self._result = None

