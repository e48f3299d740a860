"""Where sub-clips are rendered: in this process (``inline``), a local process pool (``process``), or Ray (``ray``).

Every executor does the same thing with each clip: build the generator once per worker, render the clip's frames,
and stream them into an H.264 segment file (see ``encoding.SegmentWriter``). Because each segment depends only on
its clip spec and the render setup, and the encoder's thread count is fixed, the bytes are identical whichever
executor and however many workers made them.

- ``inline``: no parallelism; simplest to debug.
- ``process`` (default): a ``spawn`` process pool (no inherited locks or threads from the parent), each worker
  initialised once with the avatar and generator, with OpenMP/BLAS/OpenCV limited to one thread per worker so that
  N workers use N cores instead of fighting over them.
- ``ray``: Ray actors, one per worker, each initialised once. By default a private local Ray bound to 127.0.0.1;
  with ``address`` a Ray cluster, for users with many machines. Segments come back to the driver as bytes, so
  workers on other machines need no shared file system.

At most ``2 * workers`` clips are in flight, so memory does not grow with the number of clips.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from avatarcast.core.errors import AvatarcastError, InputError, MissingDependencyError, RenderFailedError
from avatarcast.core.types import ClipRun, ClipSpec, render_into_one_buffer
from avatarcast.generators.factory import make_generator
from avatarcast.offline.encoding import Segment, SegmentWriter, VideoEncoding

logger = logging.getLogger(__name__)

EXECUTORS = ("inline", "process", "ray")
Work = ClipSpec | ClipRun
"""What one job renders into one segment: a sub-clip, or a run of consecutive ones."""
IN_FLIGHT_PER_WORKER = 2
_ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "NUMEXPR_NUM_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1"}


@dataclass
class RenderSetup:
    """What every worker needs once: the avatar and how to build the generator and encode its frames."""

    avatar: object  # avatarcast.face.avatar.Avatar
    generator: str
    size: tuple[int, int]
    seed: int = 0
    model_dir: str | None = None
    encoding: VideoEncoding = VideoEncoding()

    def make_generator(self):
        return make_generator(self.generator, self.avatar, self.size, self.seed, self.model_dir)


def default_workers() -> int:
    """The number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def render_segment(generator, clip: Work, path: str | Path, encoding: VideoEncoding) -> Segment:
    """Render ``clip`` (one sub-clip, or a run of consecutive ones) with ``generator`` and encode it into the
    segment file ``path``; frames are streamed to the encoder."""
    changed_box = getattr(generator, "changing_box", None)  # see types.Generator
    clips = clip.clips if isinstance(clip, ClipRun) else (clip,)
    with SegmentWriter(path, generator.size, clip.fps, encoding) as writer:
        for c in clips:
            n = 0
            for frame in render_into_one_buffer(generator, c):  # the writer is done with each frame at once
                if n >= c.n_frames:
                    raise RenderFailedError(f"the generator gave more than the {c.n_frames} frames of clip {c.index}")
                writer.write(frame, changed_box)
                n += 1
            if n != c.n_frames:
                raise RenderFailedError(f"the generator gave {n} frames for clip {c.index}, expected {c.n_frames}")
    return Segment(Path(path), clip.n_frames)


def _limit_threads_here() -> None:
    """One thread for OpenCV and torch in this (worker) process."""
    import cv2

    cv2.setNumThreads(1)
    torch = __import__("sys").modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


class Executor:
    """Renders clips into segment files. Use as a context manager; ``run`` yields ``(clip, segment)`` in order.

    A job's clip is a ``ClipSpec`` or a ``ClipRun`` (consecutive clips encoded into one segment)."""

    name = "executor"

    def __init__(self, setup: RenderSetup, workers: int = 1) -> None:
        self.setup = setup
        self.workers = max(1, int(workers))

    def start(self) -> None:
        """Get the workers ready now (started, generator built) instead of at the first clip."""

    def run(self, jobs: Iterable[tuple[Work, Path]]) -> Iterator[tuple[Work, Segment]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


class InlineExecutor(Executor):
    """Renders every clip in this process, one after the other."""

    name = "inline"

    def __init__(self, setup: RenderSetup, workers: int = 1) -> None:
        super().__init__(setup, 1)
        self.generator = setup.make_generator()

    def run(self, jobs: Iterable[tuple[Work, Path]]) -> Iterator[tuple[Work, Segment]]:
        for clip, path in jobs:
            yield clip, render_segment(self.generator, clip, path, self.setup.encoding)


# ---- local process pool ---------------------------------------------------------------------------------------

_worker_generator = None
_worker_encoding: VideoEncoding | None = None
_worker_error: BaseException | None = None


def _init_process_worker(setup: RenderSetup) -> None:
    # An exception escaping a Pool initializer kills the worker and the pool starts another, forever: keep the
    # error and raise it from the first task instead.
    global _worker_generator, _worker_encoding, _worker_error
    try:
        _limit_threads_here()
        _worker_generator = setup.make_generator()
        _worker_encoding = setup.encoding
    except Exception as exc:
        _worker_error = exc


def _process_worker_ready() -> None:
    if _worker_error is not None:
        raise _worker_error


def _render_in_process_worker(clip: Work, path: str) -> Segment:
    if _worker_error is not None:
        raise _worker_error
    return render_segment(_worker_generator, clip, path, _worker_encoding)


@contextmanager
def _environment(values: dict[str, str]):
    """Set environment variables for processes started inside the block (spawned children copy the environment)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ProcessExecutor(Executor):
    """A local ``spawn`` process pool; each worker builds its generator once.

    ``concurrent.futures`` rather than ``multiprocessing.Pool``: when a worker dies (killed, out of memory, a crash
    in native code) the render fails with an error instead of waiting forever for the lost clip.
    """

    name = "process"

    def __init__(self, setup: RenderSetup, workers: int = 1) -> None:
        super().__init__(setup, workers)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Workers start on demand while clips are submitted and copy the environment then: keep the one-thread
        # settings in place for the executor's lifetime.
        self._env = _environment(_ONE_THREAD_ENV)
        self._env.__enter__()
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_process_worker, initargs=(setup,))
        self._closed = False

    def start(self) -> None:
        # the pool starts a worker for each task that finds none idle; a failed initializer is reported by the
        # first clip (see _init_process_worker), so these tasks' results are not needed
        for _ in range(self.workers):
            self.pool.submit(_process_worker_ready)

    def run(self, jobs: Iterable[tuple[Work, Path]]) -> Iterator[tuple[Work, Segment]]:
        from concurrent.futures.process import BrokenProcessPool

        pending: collections.deque = collections.deque()
        limit = IN_FLIGHT_PER_WORKER * self.workers
        try:
            for clip, path in jobs:
                pending.append((clip, self.pool.submit(_render_in_process_worker, clip, str(path))))
                if len(pending) >= limit:
                    done_clip, future = pending.popleft()
                    yield done_clip, future.result()
            while pending:
                done_clip, future = pending.popleft()
                yield done_clip, future.result()
        except BrokenProcessPool as exc:
            raise RenderFailedError(f"a render worker process died ({exc}); if memory is short, use fewer `workers` "
                                    "or a smaller `size`") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.shutdown(wait=True, cancel_futures=True)
            self._env.__exit__(None, None, None)


# ---- Ray ----------------------------------------------------------------------------------------------------

class _RayRenderer:
    """A Ray actor: builds the generator once, renders clips to segment bytes."""

    def __init__(self, setup: RenderSetup) -> None:
        _limit_threads_here()
        self.generator = setup.make_generator()
        self.encoding = setup.encoding

    def render(self, clip: Work) -> bytes:
        # one temporary file per clip, removed at once: a killed actor leaves nothing behind
        fd, name = tempfile.mkstemp(prefix="avatarcast-clip-", suffix=".mp4")
        os.close(fd)
        path = Path(name)
        try:
            render_segment(self.generator, clip, path, self.encoding)
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("the Ray executor needs Ray: pip install 'avatarcast[ray]' "
                                     "(or use the `executor` process)") from None
    return ray


class RayExecutor(Executor):
    """Ray actors, one per worker; a private local Ray on 127.0.0.1 unless ``address`` names a cluster."""

    name = "ray"

    def __init__(self, setup: RenderSetup, workers: int = 1, address: str | None = None) -> None:
        super().__init__(setup, workers)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if address is None:
            # Ray turns 127.0.0.1 into the machine's reachable address (and listens on every interface) unless its
            # multi-node mode is off; with it off, a private Ray binds every port to loopback.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = self.ray = _import_ray()
        if address is None and not ray.is_initialized():
            try:
                from ray._private import ray_constants

                ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("1", "true")
            except (ImportError, AttributeError):  # a Ray without the switch: _node_ip_address still asks for loopback
                pass
        self._started_ray = False
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False,
                            "runtime_env": {"env_vars": dict(_ONE_THREAD_ENV)}}
            if address is None:
                kwargs.update(num_cpus=self.workers, _node_ip_address="127.0.0.1")
            else:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except Exception as exc:  # Ray raises many types (ConnectionError, RuntimeError, ValueError)
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise AvatarcastError(f"cannot start {where}: {exc}; check `ray_address`, "
                                      "or use the `executor` process") from None
            self._started_ray = True
        actor = ray.remote(num_cpus=1)(_RayRenderer)
        setup_ref = ray.put(setup)
        self.actors = [actor.remote(setup_ref) for _ in range(self.workers)]

    def run(self, jobs: Iterable[tuple[Work, Path]]) -> Iterator[tuple[Work, Segment]]:
        ray = self.ray
        pending: collections.deque = collections.deque()
        limit = IN_FLIGHT_PER_WORKER * self.workers
        for n, (clip, path) in enumerate(jobs):
            ref = self.actors[n % len(self.actors)].render.remote(clip)
            pending.append((clip, Path(path), ref))
            if len(pending) >= limit:
                yield self._finish(*pending.popleft())
        while pending:
            yield self._finish(*pending.popleft())

    def _finish(self, clip: Work, path: Path, ref) -> tuple[Work, Segment]:
        try:
            data = self.ray.get(ref)
        except (self.ray.exceptions.RayTaskError, self.ray.exceptions.ActorDiedError) as exc:
            cause = getattr(exc, "cause", None)  # the worker's own exception, when Ray kept it
            if cause is None and getattr(exc, "creation_task_error", None) is not None:
                cause = getattr(exc.creation_task_error, "cause", None)
            if isinstance(cause, AvatarcastError):
                raise cause from None
            raise
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return clip, Segment(path, clip.n_frames)

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self.ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._started_ray:
            self._started_ray = False
            self.ray.shutdown()


def make_executor(name: str, setup: RenderSetup, workers: int | None = None,
                  ray_address: str | None = None) -> Executor:
    """An executor by name (``inline``, ``process``, ``ray``) with ``workers`` workers (default: the CPU cores)."""
    if workers is not None and workers < 1:
        raise InputError(f"`workers` must be at least 1, got {workers}")
    n = workers or default_workers()
    if name == "inline":
        return InlineExecutor(setup)
    if name == "process":
        return ProcessExecutor(setup, n)
    if name == "ray":
        return RayExecutor(setup, n, address=ray_address)
    raise InputError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
