"""Where a live session's frames are rendered: in a thread of the server process, or in a child process of its own.

The scheduler asks a renderer for one frame at a time: frame ``i`` of a sub-clip (``frame(clip, i, ...)``), the
``ClipSpec`` between two consecutive keyframes of the session's plan. The renderer keeps the sub-clip open in its
generator (``SubClipCursor``) and advances it a frame per request, writing that frame's mouth row into the clip just
before the generator renders the frame: the speech arrives while the clip plays, so the clip's mouth rows are
streamed (``ClipSpec.mouth_streamed``). A request for another clip, or for a frame other than the next one (the
scheduler held or replaced frames), reopens the generator at that frame. The scheduler decides everything else
itself: which slots exist, deadlines, underruns, interrupts. The two renderers give the same frames for the same
requests.

- ``ThreadRenderer`` runs the generator in the caller's thread (the scheduler's render thread). All sessions then
  share the server's one Python interpreter: the generator's numpy/OpenCV work releases the GIL only in pieces, so
  with several sessions their render threads, the event loop and the encoders queue for the GIL and a 2-core
  machine tops out at about 1.3 cores.
- ``ProcessRenderer`` runs the generator in a child process (``multiprocessing`` spawn) that owns it. The scheduler's
  render thread sends each request over a pipe (a sub-clip's ``ClipSpec``, a few hundred bytes pickled, travels
  once, with its first request); the child converts the frame to yuv420p straight into a shared-memory buffer
  (384 KB at 512x512) and answers with a short message, and the parent copies the frame out. Sending the frames
  through the pipe instead cost both processes about 0.4 ms a frame at 512x512 (socket copies and, in the parent, a
  GIL round trip per 64 KB read). The server process keeps only planning, playout and WebRTC. One frame is in
  flight at a time, so one buffer is enough.

The streaming mouth analysis (``StreamingMouthAnalyzer``: speech -> jaw, width and rounding per frame) runs in the
renderer too, off the server's event loop (it was a third of that thread's work with 4 sessions on 2 cores). The
scheduler hands each utterance's 16 kHz audio over as it arrives (``mouth_push``, ``mouth_end``, ``mouth_phones``,
``mouth_discard``; no answer) and asks for a speech frame with ``mouth_of=(utterance, frame)``; the renderer puts
that frame's row into the sub-clip before rendering and returns it with the frame. The scheduler knows from the sample
counts alone which rows exist (``StreamingMouthAnalyzer.needed_samples``), and the audio is handed over before any
request for its frames, so a row is always there when asked for. A render process gets the audio with the next frame
request, in the same message: it wakes once a frame, not once for each 20 ms of audio as well, and analyses the
audio in the same wake-up as the frame, while its caches still hold the analyzer's work (a process woken every
40 ms spends about twice the CPU on a frame that a busy one does; ``bench render``'s paced figure).

A render process ends when the session is closed (``close``), when the server process ends normally (it is a
daemon process), and when the server process dies: its end of the pipe closes (the child reads EOF) and a watchdog
thread in the child also checks that its parent is still the process that started it. If the child dies, the next
frame request raises ``RendererDied``; the scheduler reports that as a session error and holds the last frame.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import replace
from multiprocessing import shared_memory
from typing import Any, Protocol

import cv2
import numpy as np

from avatarcast.audio.visemes import StreamingMouthAnalyzer
from avatarcast.core.errors import AvatarcastError, InputError, RenderFailedError
from avatarcast.core.realtime import WorkerPriority
from avatarcast.core.types import NEUTRAL_STATE, ClipSpec, Keyframe, render_into_one_buffer
from avatarcast.generators.factory import make_generator

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
"""How long starting a render process may take (Python start, imports, building the generator)."""
STOP_TIMEOUT_S = 3.0
"""How long a render process gets to exit after being asked to, before it is terminated."""
PARENT_CHECK_S = 1.0
"""How often the child's watchdog checks that the server process is still its parent."""


class RenderError(RenderFailedError):
    """A frame could not be rendered (the generator raised); later clips may still render."""


class RendererDied(RenderError):
    """The render process is gone: nothing more will be rendered for this session."""


def to_yuv420p(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """RGB (H, W, 3) uint8 -> yuv420p planes as one (H * 3 / 2, W) uint8 array (what the video encoders take;
    converting here with OpenCV is cheaper than leaving it to them: swscale takes ~3 ms a 512x512 frame). With
    ``out`` (a contiguous array of that shape) the planes are written there."""
    if out is None:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420, dst=out)


def yuv420p_bytes(size: tuple[int, int]) -> int:
    """Bytes of one yuv420p frame of ``size`` (width, height)."""
    w, h = int(size[0]), int(size[1])
    return w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)


MOUTH_STEPS_PER_FRAME = 3
"""Audio messages a thread renderer analyses ahead at each frame (a 25 fps stream gets two 20 ms messages a frame)."""
MOUTH_ROWS_KEPT = 3
"""Utterances whose mouth rows a renderer keeps (a render asked for just before an interrupt still finds its row)."""


class Renderer(Protocol):
    mode: str

    def start(self) -> None: ...

    def use_mouth_analyzer(self, analyzer: Any) -> None: ...

    def mouth_push(self, utterance: int, samples16: np.ndarray) -> None: ...

    def mouth_end(self, utterance: int) -> None: ...

    def mouth_phones(self, phones: list) -> None: ...

    def mouth_discard(self) -> None: ...

    def frame(self, clip: Any, i: int, mouth_of: tuple[int, int] | None = None,
              row: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]: ...

    prepares: bool  # the generator wants the sub-clips ahead of playback

    def prepare(self, clip: Any) -> None: ...

    def close(self) -> None: ...


class MouthRows:
    """A streaming mouth analyzer fed in stream order, with the rows of the last few utterances (one per renderer;
    used from one thread at a time).

    The audio is queued (``queue``) and analysed lazily: ``ensure`` analyses just as far as a requested row needs,
    ``step`` one message more when there is time. A burst of speech (a TTS client pushing a second at once) then
    delays its first frame by the analysis of that frame's audio only, not of the whole burst."""

    def __init__(self, analyzer: Any) -> None:
        self.analyzer = analyzer
        self.rows: dict[int, list[np.ndarray]] = {}
        self.pending: deque = deque()

    def queue(self, op: str, utterance: int | None = None, payload: Any = None) -> None:
        self.pending.append((op, utterance, payload))

    def step(self) -> bool:
        """Analyse the next queued message; False when none is queued."""
        if not self.pending:
            return False
        self._apply(*self.pending.popleft())
        return True

    def ensure(self, utterance: int, frame: int) -> None:
        """Analyse the queue until ``frame``'s row of ``utterance`` exists (or the queue is empty)."""
        while len(self.rows.get(utterance, ())) <= frame and self.step():
            pass

    def _apply(self, op: str, utterance: int | None = None, payload: Any = None) -> None:
        if op == "push":
            self._add(utterance, self.analyzer.push(payload))
        elif op == "end":
            self._add(utterance, self.analyzer.flush())
        elif op == "phones":
            self.analyzer.add_phones(payload)
        elif op == "discard":  # an interrupt cut the utterance: the next push starts a new one
            self.analyzer.flush()

    def _add(self, utterance: int, rows: np.ndarray) -> None:
        if utterance not in self.rows:
            self.rows[utterance] = []
            for old in sorted(self.rows)[:-MOUTH_ROWS_KEPT]:
                del self.rows[old]
        self.rows[utterance].extend(np.clip(np.asarray(r, np.float32), 0.0, 1.0) for r in np.reshape(rows, (-1, 3)))

    def row(self, utterance: int, frame: int) -> np.ndarray:
        rows = self.rows.get(utterance, ())
        if 0 <= frame < len(rows):
            return rows[frame]
        log.warning("no mouth row %d of utterance %d (%d rows): the mouth stays closed", frame, utterance, len(rows))
        return np.zeros(3, np.float32)

    def resolve(self, mouth_of: tuple[int, int] | None, row: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The mouth row of a frame: the analysed row of ``mouth_of = (utterance, frame)`` (returned twice: it goes
        back to the scheduler), else ``row`` (a closed mouth when None)."""
        if mouth_of is None:
            return _given_row(row), None
        self.ensure(*mouth_of)
        found = self.row(*mouth_of)
        return found, found


def _given_row(row: Any) -> np.ndarray:
    return np.zeros(3, np.float32) if row is None else np.asarray(row, np.float32).reshape(3)


class SubClipCursor:
    """One generator's open sub-clip, advanced a frame at a time with each frame's mouth row.

    ``frame(key, clip, i, row)`` writes ``row`` into the clip's (streamed) mouth rows and renders frame ``i``. The
    generator keeps its own state between frames (the video generator its chosen mouth, the neural one its
    generated clip); a new ``key`` or a frame other than the next reopens it at frame ``i``."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.key: Any = None
        self.next = 0
        self._mouth: np.ndarray | None = None
        self._it: Any = None

    def frame(self, key: Any, clip: Any, i: int, row: np.ndarray) -> np.ndarray:
        if not 0 <= i < clip.n_frames:
            raise InputError(f"frame {i} is outside the sub-clip's {clip.n_frames} frames")
        if self._it is None or key != self.key or i != self.next:
            self.close()
            self._mouth = np.zeros((clip.n_frames, 3), np.float32)
            streamed = replace(clip, mouth=self._mouth, mouth_streamed=True)
            self._it, self.key = iter(render_into_one_buffer(self.generator, streamed, i)), key
        assert self._mouth is not None
        self._mouth[i] = row
        try:
            rgb = next(self._it)
        except BaseException:
            self.close()
            raise
        self.next = i + 1
        return rgb

    def close(self) -> None:
        it, self._it, self.key = self._it, None, None
        close = getattr(it, "close", None)
        if close is not None:
            close()


class _MouthMessages:
    """The scheduler's mouth-analysis messages, in stream order, as ``_mouth_message(op, utterance, payload)``
    calls, kept until the next frame request takes them (``_take_mouth_ops``): the first request that can need
    them. The scheduler's event loop hands them over, its render thread takes them."""

    def __init__(self) -> None:
        self._mouth_ops: list = []
        self._mouth_lock = threading.Lock()

    def _mouth_message(self, *op: Any) -> None:
        with self._mouth_lock:
            self._mouth_ops.append(op)

    def _take_mouth_ops(self) -> list:
        """The messages handed over since the last call, in stream order."""
        with self._mouth_lock:
            ops, self._mouth_ops = self._mouth_ops, []
        return ops

    def mouth_push(self, utterance: int, samples16: np.ndarray) -> None:
        self._mouth_message("push", utterance, np.asarray(samples16, np.float32))

    def mouth_end(self, utterance: int) -> None:
        self._mouth_message("end", utterance)

    def mouth_phones(self, phones: list) -> None:
        self._mouth_message("phones", None, list(phones))

    def mouth_discard(self) -> None:
        self._mouth_message("discard")


class ThreadRenderer(_MouthMessages):
    """Renders in the calling thread with ``generator`` (anything with ``render(clip) -> iterator of RGB frames``).
    The mouth analysis runs in that thread too: the audio pushed from the event loop waits in a queue until the next
    render asks for a row."""

    mode = "thread"

    def __init__(self, generator: Any) -> None:
        super().__init__()
        self.generator = generator
        self._cursor = SubClipCursor(generator)
        self._mouth: MouthRows | None = None

    def start(self) -> None:
        pass

    def use_mouth_analyzer(self, analyzer: Any) -> None:
        self._mouth = MouthRows(analyzer)

    def frame(self, clip: Any, i: int, mouth_of: tuple[int, int] | None = None,
              row: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame ``i`` of the sub-clip ``clip`` as yuv420p planes, with the analysed mouth row of ``mouth_of`` (a
        speech frame) or None; other frames show ``row`` (a closed mouth when None)."""
        ops = self._take_mouth_ops()
        shown, analysed = _given_row(row), None
        if self._mouth is not None:
            self._mouth.pending.extend(ops)
            shown, analysed = self._mouth.resolve(mouth_of, row)
            for _ in range(MOUTH_STEPS_PER_FRAME):  # keep up with the audio between the frames that need it
                self._mouth.step()
        return to_yuv420p(self._cursor.frame(clip.index, clip, i, shown)), analysed

    @property
    def prepares(self) -> bool:
        return hasattr(self.generator, "prepare")

    def prepare(self, clip: Any) -> None:
        """Tell the generator about a sub-clip ahead of playback (it may start making it in the background)."""
        self.generator.prepare(clip)

    def close(self) -> None:
        self._cursor.close()


# ---------------------------------------------------------------------------------------------- the child process


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:  # the server died; this process was re-parented
            os._exit(0)


def _child_main(conn: Any, parent_pid: int) -> None:
    """The render process: receive the generator factory and the name of the frame buffer (shared memory), build
    the generator, then answer ``frame`` requests until told to ``stop`` or the pipe closes. A request is
    ``("frame", clip or None, key, i, mouth_of, row, mouth_ops)``: the sub-clip travels with its first request only
    (None: the one of the last request); ``mouth_ops`` are the mouth-analysis messages handed over since the last
    request, in stream order, queued for the analyzer before the frame's row is looked up. Replies: ``("frame", key,
    shape, render_s, in_buffer, mouth_row)`` (the frame is in the shared buffer, or, when it does not fit, its bytes
    follow on the pipe) and ``("error", key, text)`` when the generator raised."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()
    cv2.setNumThreads(1)  # one process per session already spreads the sessions over the cores
    try:
        factory, buffer_name, mouth_params, priority = conn.recv()
    except (EOFError, OSError):
        return
    mouth = None
    if mouth_params is not None:
        fps, lookahead_s = mouth_params
        mouth = MouthRows(StreamingMouthAnalyzer(fps, lookahead_s=lookahead_s))
    buffer = None
    if buffer_name is not None:
        try:
            buffer = shared_memory.SharedMemory(name=buffer_name)
        except OSError:  # then frames travel over the pipe
            buffer = None
    buffer_bytes = buffer.size if buffer is not None else 0
    try:
        generator = factory()
    except Exception as exc:  # reported to the parent, which raises it from start()

        conn.send(("failed", str(exc) if isinstance(exc, AvatarcastError) else f"{type(exc).__name__}: {exc}",
                   isinstance(exc, AvatarcastError)))
        return
    # the imports' and the generator's objects live as long as this process: out of the collector's way (see
    # runtime.py), so that no full collection stops a frame for ~100 ms
    gc.collect()
    gc.freeze()
    priority.apply_to_render_worker(log, "render process")  # checked by the server; built under the normal policy
    conn.send(("ready", os.getpid()))
    cursor = SubClipCursor(generator)
    clip: Any = None

    while True:
        try:
            # what the frame did not need of the audio is analysed after it, one queued message at a time until
            # the next request is there: a render request waits for one message's analysis at most
            while mouth is not None and mouth.pending and not conn.poll(0):
                try:
                    mouth.step()
                except Exception:
                    traceback.print_exc()
            msg = conn.recv()
        except (EOFError, OSError):  # the server closed the pipe or died
            return
        kind = msg[0]
        if kind == "stop":
            return
        if kind == "prepare":  # a sub-clip ahead of playback; no answer
            try:
                generator.prepare(msg[1])
            except Exception:
                traceback.print_exc()
            continue
        if kind != "frame" or (msg[1] is None and clip is None):
            conn.send(("error", msg[2] if len(msg) > 2 else None, f"unexpected request {kind!r}"))
            continue
        _, new_clip, key, i, mouth_of, given, ops = msg
        if mouth is not None:
            for op in ops:
                mouth.queue(*op)
        if new_clip is not None:
            clip = new_clip
        t0 = time.perf_counter()
        shown, analysed = _given_row(given), None
        if mouth is not None:
            try:
                shown, analysed = mouth.resolve(mouth_of, given)
            except Exception:
                traceback.print_exc()
        try:
            rgb = cursor.frame(key, clip, i, shown)
        except Exception:
            conn.send(("error", key, traceback.format_exc(limit=8)))
            continue
        row = None if analysed is None else tuple(float(x) for x in analysed)
        shape = (rgb.shape[0] * 3 // 2, rgb.shape[1])
        try:
            if buffer is not None and shape[0] * shape[1] <= buffer_bytes and rgb.shape[0] % 2 == 0:
                # the parent has copied the previous frame out before asking for this one
                to_yuv420p(rgb, np.ndarray(shape, np.uint8, buffer=buffer.buf))
                conn.send(("frame", key, shape, time.perf_counter() - t0, True, row))
            else:
                yuv = np.ascontiguousarray(to_yuv420p(rgb))
                conn.send(("frame", key, yuv.shape, time.perf_counter() - t0, False, row))
                conn.send_bytes(memoryview(yuv).cast("B"))
        except (EOFError, OSError):
            return


LIVE_CHECK_S = 1.0
"""Length of the sub-clip a generator that is not known to run in real time renders at a live session's start."""


class LiveTooSlowError(InputError):
    """The configured generator renders slower than real time here: a live session cannot use it."""


def check_live_speed(generator: Any, fps: float, name: str = "neural", seconds: float = LIVE_CHECK_S) -> float:
    """Render a ``seconds`` long sub-clip (a small head movement, the mouth opening and closing) after a short
    warm-up and return how many times faster than real time it rendered; raise ``LiveTooSlowError`` below 1."""
    n = max(2, round(seconds * fps))
    jaw = 0.5 - 0.5 * np.cos(np.linspace(0.0, 4.0 * np.pi, n))
    mouth = np.stack([jaw, np.full(n, 0.2), np.zeros(n)], axis=1).astype(np.float32)
    moved = NEUTRAL_STATE.with_(head_yaw_deg=-4.0, head_pitch_deg=3.0)

    def clip(frames: int, start: int) -> ClipSpec:
        return ClipSpec(index=0, first=Keyframe(start / fps, NEUTRAL_STATE), last=Keyframe((start + frames) / fps, moved),
                        fps=fps, start_frame=start, n_frames=frames, mouth=mouth[:frames])

    for _ in generator.render(clip(2, 0)):  # the first call allocates and warms up
        pass
    t0 = time.perf_counter()
    for _ in generator.render(clip(n, 2)):
        pass
    took = time.perf_counter() - t0
    speed = n / fps / max(took, 1e-9)
    if speed < 1.0:
        raise LiveTooSlowError(
            f"the {name} generator renders a {n / fps:.1f} s sub-clip in {took:.1f} s on this machine "
            f"({speed:.2f}x real time); a live session needs it faster than real time: run it where it is fast "
            "enough (a GPU), or use the parametric generator for live sessions (the neural one still renders "
            "offline videos)")
    log.info("the %s generator renders %.1fx faster than real time: live sessions can use it", name, speed)
    return speed


class GeneratorFactory:
    """Builds the generator in the child (picklable: the avatar's arrays travel once, at start): the parametric
    generator for a portrait, the video generator for a video avatar, or the neural generator when ``generator`` is
    ``"neural"`` (with ``model_dir`` and ``neural_options``), which must render faster than real time here
    (``check_live_speed``)."""

    def __init__(self, avatar: Any, size: tuple[int, int], seed: int, fps: float, generator: str = "parametric",
                 model_dir: str | None = None, neural_options: dict | None = None) -> None:
        self.avatar = avatar
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.fps = float(fps)
        self.generator = generator
        self.model_dir = model_dir
        self.neural_options = dict(neural_options or {})

    @property
    def prepares(self) -> bool:
        """Whether the generator wants the sub-clips ahead of playback (``prepare``): the neural one does."""
        return self.generator == "neural"

    def __call__(self) -> Any:
        generator = make_generator(self.generator, self.avatar, self.size, self.seed, model_dir=self.model_dir,
                                   fps=self.fps, neural_options=self.neural_options)
        if self.generator != "parametric":
            check_live_speed(generator, self.fps, self.generator)
        return generator


# ---------------------------------------------------------------------------------------------- the parent side


class ProcessRenderer(_MouthMessages):
    """Renders in a child process that builds its generator with ``factory`` (a picklable callable)."""

    mode = "process"

    def __init__(self, factory: Any, name: str = "session", priority: WorkerPriority = WorkerPriority()) -> None:
        """``priority``: how the render process runs once its generator is built (``core/realtime.py``: under
        ``SCHED_RR`` at ``priority.realtime``, ``priority.nice`` levels below the server's event loop)."""
        super().__init__()
        self.factory = factory
        self.name = name
        self.priority = priority
        self.process: Any = None
        self.pid: int | None = None
        self._conn: Any = None
        self._sent_key: int | None = None  # the sub-clip the child has
        self._dead: str | None = None
        self._buffer: shared_memory.SharedMemory | None = None
        self._mouth_params: tuple[float, float] | None = None
        self._send_lock = threading.Lock()  # the render thread and the event loop both write to the pipe

    # -- lifecycle

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the child and wait until its generator is built; raises ``RenderError`` if it cannot start."""
        ctx = multiprocessing.get_context("spawn")
        size = getattr(self.factory, "size", None)
        if size is not None and self._buffer is None:
            # the frame buffer: the parent creates it and unlinks it on close (if the server dies first,
            # multiprocessing's resource tracker removes it)
            try:
                self._buffer = shared_memory.SharedMemory(create=True, size=yuv420p_bytes(size))
            except OSError as exc:  # no usable /dev/shm (a small container, say): frames travel over the pipe
                log.warning("render process for session %s: no shared memory (%s); frames go over the pipe",
                            self.name, exc)
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_child_main, args=(child_conn, os.getpid()),
                           name=f"avatarcast-render-{self.name}", daemon=True)
        proc.start()
        child_conn.close()  # the parent keeps only its end, so it reads EOF when the child dies
        self.process, self._conn = proc, parent_conn
        try:
            # the factory (with the avatar's arrays) goes over this pipe, not the process arguments: if the child
            # died while starting, this write fails instead of waiting forever on a pipe nobody reads
            parent_conn.send((self.factory, self._buffer.name if self._buffer is not None else None,
                              self._mouth_params, self.priority))
        except OSError:
            pass
        if not parent_conn.poll(timeout_s):
            self.close()
            raise RenderError(f"the render process for session {self.name} did not start within {timeout_s:.0f} s")
        try:
            msg = parent_conn.recv()
        except (EOFError, OSError):
            msg = ("failed", f"it exited with code {proc.exitcode}" if proc.exitcode is not None else "it exited",
                   False)
        if msg[0] != "ready":
            self.close()
            if msg[2]:  # the user's input (the avatar, the size) cannot be used: say so as such

                raise InputError(msg[1])
            raise RenderError(f"the render process for session {self.name} could not start: {msg[1]}")
        self.pid = int(msg[1])

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def _send(self, msg: tuple) -> None:
        conn = self._conn
        if conn is None:
            raise OSError("the render process is closed")
        with self._send_lock:
            conn.send(msg)

    # -- mouth analysis (in the child; fire and forget: a dead child shows at the next frame request)

    def use_mouth_analyzer(self, analyzer: Any) -> None:
        """Analyse in the child with an analyzer like ``analyzer`` (its frame rate and look-ahead); before
        ``start``."""
        self._mouth_params = (float(analyzer.fps), float(analyzer.lookahead_s))

    def _post(self, msg: tuple) -> None:
        """Send a message that has no answer (a dead child shows at the next frame request)."""
        if self._dead is not None or self._conn is None:
            return
        try:
            self._send(msg)
        except (OSError, ValueError):
            pass

    def _mouth_message(self, *op: Any) -> None:
        """Kept for the next frame request, which carries it to the child (none kept for a child that is gone)."""
        if self._dead is None and self._conn is not None:
            super()._mouth_message(*op)

    @property
    def prepares(self) -> bool:
        return bool(getattr(self.factory, "prepares", False))

    def prepare(self, clip: Any) -> None:
        """Send a sub-clip ahead of playback to the child's generator (no answer)."""
        self._post(("prepare", clip))

    def close(self) -> None:
        """Stop the child (asked first, then terminated, then killed) and release the pipe. Idempotent."""
        proc, conn = self.process, self._conn
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send(("stop",))
            except (OSError, ValueError):
                pass
        if proc is not None:
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.terminate()  # our own child, by its handle
                proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(STOP_TIMEOUT_S)
            if self._dead is None:
                self._dead = "closed"
        if conn is not None:
            self._conn = None
            conn.close()
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            buffer.close()
            try:
                buffer.unlink()
            except FileNotFoundError:
                pass

    # -- frames

    def _died(self) -> RendererDied:
        proc = self.process
        code = proc.exitcode if proc is not None else None
        if proc is not None and code is None:
            proc.join(0.5)
            code = proc.exitcode
        how = "was closed" if self._dead == "closed" else (
            f"exited with code {code}" if code is not None and code >= 0 else
            f"was killed by signal {-code}" if code is not None else "stopped answering")
        self._dead = self._dead or how
        return RendererDied(f"the render process of session {self.name} (pid {self.pid}) {how}")

    def frame(self, clip: Any, i: int, mouth_of: tuple[int, int] | None = None,
              row: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Frame ``i`` of the sub-clip ``clip``, rendered in the child (see ``ThreadRenderer.frame``); the clip's
        ``index`` names it, so the child receives each sub-clip once."""
        conn = self._conn
        if conn is None or self._dead is not None:
            raise self._died()
        key = int(clip.index)
        try:
            request = ("frame", None if key == self._sent_key else clip, key, int(i), mouth_of,
                       None if row is None else tuple(float(x) for x in np.ravel(row)), self._take_mouth_ops())
            with self._send_lock:
                conn.send(request)
            self._sent_key = key
            msg = conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died() from exc
        if msg[0] == "error":
            raise RenderError(f"the generator failed in the render process: {msg[2]}")
        _, _, shape, _, in_buffer, analysed = msg
        buffer = self._buffer
        if in_buffer and buffer is not None:
            # copied out before the next request: the child writes the next frame over it
            frame = np.ndarray(shape, np.uint8, buffer=buffer.buf).copy()
        else:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError) as exc:
                raise self._died() from exc
            frame = np.frombuffer(data, np.uint8).reshape(shape)
        return frame, (None if analysed is None else np.asarray(analysed, np.float32))
