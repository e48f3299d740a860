"""A content-addressed cache of encoded sub-clip segments, so an interrupted long render resumes where it stopped.

A segment's key is a SHA-256 over everything that decides its pixels and bytes: the avatar (image and landmarks),
the generator and its settings, the output size and frame rate, the encoder settings, the clip spec (absolute start
frame, frame count, both keyframe states and images, audio slice, mouth rows, blink times, seed) and the rendering
code's version (a hash of the source of the pipeline package, so editing the renderer never serves stale clips).

Segments are written under a temporary name and renamed when complete, so whatever sits in the cache is whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from avatarcast import __version__
from avatarcast.core.errors import InputError
from avatarcast.core.types import ClipRun, ClipSpec, Keyframe
from avatarcast.offline.encoding import Segment, VideoEncoding

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1

DRAWING_ROOMS = ("core", "audio", "face", "direction", "generators", "offline", "kernels")
"""The package's folders whose source, with ``blueprint.py``, goes into ``code_version``."""


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the package version and the source of the rooms that decide what a frame shows (``DRAWING_ROOMS``)."""
    h = hashlib.sha256(f"avatarcast {__version__} cache {CACHE_FORMAT_VERSION}".encode())
    root = Path(__file__).resolve().parents[1]
    paths = [p for room in DRAWING_ROOMS for p in (root / room).rglob("*.py")] + [root / "blueprint.py"]
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def avatar_id(avatar) -> str:
    """A content hash of an avatar: its image and its face mesh (not where it was loaded from)."""
    h = hashlib.sha256()
    # a video avatar adds its footage's track and mouth bank (``content_arrays``)
    for arr in (avatar.image, avatar.landmarks, *getattr(avatar, "content_arrays", ())):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:24]


def _hash_array(h, arr: np.ndarray | None) -> None:
    if arr is None:
        h.update(b"none")
        return
    a = np.ascontiguousarray(arr)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())


def _hash_keyframe(h, kf: Keyframe) -> None:
    h.update(repr(float(kf.time_s)).encode())
    _hash_array(h, kf.state.to_array())
    _hash_array(h, kf.image)


def render_key(avatar_key: str, generator: dict, size: tuple[int, int], encoding: VideoEncoding) -> str:
    """The part of the key shared by every clip of one render."""
    header = {"avatar": avatar_key, "generator": generator, "size": list(size), "encoding": encoding.key(),
              "code": code_version()}
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def clip_key(render: str, clip: ClipSpec) -> str:
    """The cache key of one clip's segment, given the render's shared key."""
    h = hashlib.sha256(render.encode())
    h.update(json.dumps({"fps": repr(float(clip.fps)), "start": clip.start_frame, "n": clip.n_frames,
                         "rate": clip.audio_rate_hz, "blinks": [repr(float(b)) for b in clip.blink_times_s],
                         "seed": clip.seed}).encode())
    _hash_keyframe(h, clip.first)
    _hash_keyframe(h, clip.last)
    _hash_array(h, np.asarray(clip.audio, np.float32))
    _hash_array(h, None if clip.mouth is None else np.asarray(clip.mouth, np.float32))
    return h.hexdigest()


def run_key(render: str, run: ClipRun) -> str:
    """The cache key of the segment of a run of clips (see ``types.ClipRun``), given the render's shared key."""
    h = hashlib.sha256(b"run")
    for clip in run.clips:
        h.update(clip_key(render, clip).encode())
    return h.hexdigest()


class ClipCache:
    """Segments stored as ``<dir>/<key[:2]>/<key>.mp4``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the cache folder {self.directory}: {exc.strerror or exc}; "
                             "choose another --cache-dir") from None
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.mp4"

    def get(self, key: str, n_frames: int) -> Segment | None:
        """The cached segment for ``key``, or None (and the folder for it is created)."""
        path = self.path_for(key)
        if path.is_file() and path.stat().st_size > 0:
            self.hits += 1
            return Segment(path, n_frames)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.misses += 1
        return None
