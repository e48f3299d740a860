"""Video avatars: a short recording of one person talking becomes a base performance and a mouth bank.

``prepare_video_avatar(clips)`` tracks the face (the 478-point mesh) in every frame of one or more clips, rejects
frames where it is lost, turned too far or jumps (a cut), and builds:

- the **base performance**: real frames (head motion, blinks, breathing, background) played while the avatar talks
  or listens. Stretches of usable footage are chained at frames that match (appearance around the head), and the
  whole chain is played forward then backward, so a long session loops it with no jump: every step is either a
  step of the footage itself or a cut between two frames that look alike (``LOOP_CUT_MAX_CHANGE`` times the median
  frame-to-frame change at most). Its landmarks are smoothed over time (the stabilised track);
- the **mouth bank**: the person's own lower face in every usable frame, aligned to a canonical face (a similarity
  transform on points that speech does not move: eye corners, nose bridge), with its shape (lip opening, measured
  in the crop's pixels where the footage is sharp enough, else from the mesh; mouth width, rounding, jaw drop,
  teeth and tongue visibility) and the mouth analyzer's reading of the clip's own audio at that moment, from which
  a mapping from audio to mouth shape is learned.

The folder (``VIDEO_AVATAR_FORMAT``, versioned)::

    AVATAR_DIR/
        video_avatar.json   format and version, sources, frame rate, counts, canonical geometry, what was rejected
        arrays.npz          base landmarks and poses, playlist, bank shapes, audio rows, canonical points, mapping
        base.pack           the base frames, JPEG, one after another (offsets in arrays.npz)
        bank.pack           the canonical lower-face crops, JPEG
        portrait/           the first base frame as a portrait avatar (for previews and tools that need a still)

Pack files are memory-mapped when rendering: a session's render process reads only the frames it shows.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import av
import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from avatarcast.audio.io import load_audio
from avatarcast.audio.visemes import mouth_track
from avatarcast.core.errors import AudioError, FaceError, InputError
from avatarcast.face import mesh as face_mesh
from avatarcast.face.avatar import MIN_FACE_SIZE_PX, REGIONS, Avatar, head_pose, warp_triangles

logger = logging.getLogger(__name__)

VIDEO_AVATAR_FORMAT = "avatarcast-video-avatar"
VIDEO_AVATAR_FORMAT_VERSION = 3
"""3: which recording each bank entry and each base frame comes from (``bank_clip``, ``base_clip``), so that mouths
are taken from the base frame's own recording where it has them. 2: the lip opening of bank entries is measured in
the pixels of the aligned crop where the footage is sharp enough (``PIXEL_OPENING_MIN_IOD_PX``); version 1 stored
the face mesh's inner-lip gap, which reads closed lips of some frames as open and open mouths with teeth as barely
open."""
MIN_USABLE_S = 5.0
"""Less usable footage than this (face found, facing the camera) is refused: the bank would hold too few mouths."""
RECOMMENDED_USABLE_S = 20.0
"""Below this a warning says that more footage gives a richer mouth bank."""
MAX_USABLE_S = 600.0
MAX_BASE_S = 60.0
"""The base performance keeps at most this much footage (the mouth bank keeps all of it)."""
MAX_BANK_ENTRIES = 9000
MAX_YAW_DEG = 30.0
MAX_PITCH_DEG = 25.0
MAX_FACE_JUMP_IOD = 0.35
"""A face that moves more than this many eye distances between consecutive frames is a cut or a lost track."""
EDGE_TRIM_FRAMES = 2
"""Frames dropped at each end of a clip (a cut clip's first and last frames often carry the cut)."""
MIN_SEGMENT_FRAMES = 8
SECOND_FACE_FRACTION = 0.6
"""A second face at least this fraction of the main face's size counts as another person in the frame."""
LOOP_CUT_MAX_CHANGE = 1.5
CUT_SEARCH_FRAMES = 90
"""Frames searched for a cut at the end of the path and at the start of the next stretch."""
"""Stretches of footage are joined only where the change is at most this many times the footage's median change."""
BASE_MAX_SIDE_PX = 1280
JPEG_QUALITY = 88
MIN_CANON_IOD_PX = 40.0
MAX_CANON_IOD_PX = 160.0
TRACK_SMOOTH_SIGMA_FRAMES = 1.0
DESCRIPTOR_PX = 24
PIXEL_OPENING_MIN_IOD_PX = 80.0
"""Footage whose eye distance is at least this many pixels has its lip openings measured in the pixels (a gap of
0.05 eye distances is then 4 px or more); in smaller or softer footage the lip edges are one or two blurred pixels
and the mesh's inner-lip gap is kept."""
OPENING_STRIP_WIDTH = 0.08
"""Half-width of the vertical strip at the mouth's middle where the opening is measured, in mouth widths."""

# MediaPipe face-mesh points that speech does not move: eye corners, the nose bridge and the cheeks at eye level
STABLE_POINTS = np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 127, 356, 234, 454], np.int32)
EYE_R_CORNERS = (33, 133)
EYE_L_CORNERS = (362, 263)
INNER_LIP_PAIRS = ((82, 87), (13, 14), (312, 317))  # facing inner-lip points: left of centre, centre, right
MOUTH_CORNERS = (61, 291)
NOSE_BOTTOM = 2
CHIN = 152
LIPS_INNER_RING = np.array([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88,
                            95], np.int32)
JAW_LINE = np.array([93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323],
                    np.int32)
UNDER_NOSE = np.array([98, 2, 327], np.int32)
LIP_POINTS = np.array([13, 14, 61, 291], np.int32)  # inner lips' middles (upper, lower), then the mouth corners
SHAPE_FIELDS = ("opening", "width", "jaw_drop", "rounding", "teeth", "tongue")
"""Per bank entry: lip opening (``visible_opening``, or the mesh's inner-lip gap), mouth width, nose-to-chin distance
minus the footage's median (all in eye distances), rounding (1 - width / median width), and the fractions of the
opening that show teeth and tongue."""
MATCH_FIELDS = (0, 1, 2)  # the shape fields the audio is mapped to and mouths are chosen by


class ProgressBar:
    """A one-line progress bar on stderr (nothing when stderr is not a terminal, except the final line)."""

    def __init__(self, total: int, label: str, stream=None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown = -1

    def update(self, done: int) -> None:
        pct = min(100, int(100 * done / self.total))
        if self.tty and pct != self._shown:
            self._shown = pct
            filled = pct // 4
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (25 - filled)}] {pct:3d}%")
            self.stream.flush()

    def close(self, summary: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * (len(self.label) + 40) + "\r")
        self.stream.write(f"{self.label}: {summary}\n")
        self.stream.flush()


# ---------------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------------

def eye_distance(landmarks: np.ndarray) -> float:
    r = landmarks[list(EYE_R_CORNERS), :2].mean(0)
    left = landmarks[list(EYE_L_CORNERS), :2].mean(0)
    return float(np.linalg.norm(left - r))


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift) that maps ``src`` points onto ``dst`` in least squares."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    a = float((s * d).sum())
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum())
    n = float((s * s).sum()) or 1e-9
    c, sn = a / n, b / n
    m = np.array([[c, -sn, 0.0], [sn, c, 0.0]])
    m[:, 2] = md - m[:, :2] @ ms
    return m


def affine_fit(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 affine map of ``src`` onto ``dst`` in (weighted) least squares (captures a little of the yaw's
    foreshortening)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    a = np.hstack([src, np.ones((len(src), 1))])
    if weights is not None:
        w = np.sqrt(np.asarray(weights, np.float64))[:, None]
        a, dst = a * w, dst * w
    sol, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return sol.T


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, np.float64)[:, :2]
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)


def mouth_shape(landmarks: np.ndarray, iod: float) -> tuple[float, float, float]:
    """``(opening, width, nose_to_chin)`` in eye distances, measured along the face's own axes (the opening is the
    mean gap of three facing inner-lip pairs)."""
    r = landmarks[list(EYE_R_CORNERS), :2].mean(0)
    left = landmarks[list(EYE_L_CORNERS), :2].mean(0)
    ex = (left - r) / max(float(np.linalg.norm(left - r)), 1e-6)
    ey = np.array([-ex[1], ex[0]])
    gap = float(np.mean([abs((landmarks[b, :2] - landmarks[a, :2]) @ ey) for a, b in INNER_LIP_PAIRS]))
    width = float(abs((landmarks[MOUTH_CORNERS[1], :2] - landmarks[MOUTH_CORNERS[0], :2]) @ ex))
    jaw = float((landmarks[CHIN, :2] - landmarks[NOSE_BOTTOM, :2]) @ ey)
    return gap / iod, width / iod, jaw / iod


def smooth_track(landmarks: np.ndarray, sigma_frames: float = TRACK_SMOOTH_SIGMA_FRAMES) -> np.ndarray:
    """Gaussian smoothing of a landmark track over time (edges mirrored), which removes the mesh's frame jitter."""
    if len(landmarks) < 3 or sigma_frames <= 0:
        return landmarks.copy()
    return gaussian_filter1d(landmarks.astype(np.float64), sigma_frames, axis=0, mode="mirror",
                             truncate=3.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Pack files: JPEG images one after another, found by offsets
# ---------------------------------------------------------------------------------------------------------------

class PackWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")
        self.offsets = [0]

    def add(self, rgb: np.ndarray, quality: int = JPEG_QUALITY) -> None:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:  # pragma: no cover - encoding a uint8 image does not fail
            raise InputError(f"could not encode a frame for {self.path}")
        self._f.write(buf.tobytes())
        self.offsets.append(self.offsets[-1] + len(buf))

    def close(self) -> np.ndarray:
        self._f.close()
        return np.asarray(self.offsets, np.int64)


class PackReader:
    """Random access to the images of a pack file (memory-mapped; reopened after pickling)."""

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path = Path(path)
        self.offsets = np.asarray(offsets, np.int64)
        self._map: mmap.mmap | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getstate__(self) -> dict:
        return {"path": self.path, "offsets": self.offsets, "_map": None}

    def _bytes(self, i: int) -> memoryview:
        if self._map is None:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return memoryview(self._map)[a:b]

    def read(self, i: int, reduced: int = 1) -> np.ndarray:
        """Image ``i`` as RGB uint8 (``reduced`` 2, 4 or 8 decodes at that fraction of the size, faster)."""
        flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}[reduced]
        bgr = cv2.imdecode(np.frombuffer(self._bytes(i), np.uint8), flag)
        if bgr is None:
            raise InputError(f"{self.path} is damaged (image {i} does not decode); prepare the avatar again")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------------------------
# The avatar
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class VideoAvatar:
    """A prepared recording (see the module docstring). Loaded by ``load_avatar`` like a portrait avatar."""

    folder: Path
    meta: dict
    fps: float  # the footage's frame rate
    frame_size: tuple[int, int]  # (width, height) of the stored base frames
    base_landmarks: np.ndarray  # (Nb, 478, 3) stabilised, in stored base-frame pixels
    base_pose: np.ndarray  # (Nb, 3) yaw, pitch, roll
    playlist: np.ndarray  # (L,) base indices, played forward then backward
    bank_shape: np.ndarray  # (Nk, len(SHAPE_FIELDS))
    bank_rows: np.ndarray  # (Nk, 3) the mouth analyzer on the footage's own audio (NaN: clip without audio)
    bank_pose: np.ndarray  # (Nk, 3)
    bank_next: np.ndarray  # (Nk,) index of the next frame of the same clip in the bank, or -1
    bank_stable: np.ndarray  # (Nk, len(STABLE_POINTS), 2) canonical coordinates
    bank_jaw: np.ndarray  # (Nk, len(JAW_LINE), 2) canonical
    bank_under_nose: np.ndarray  # (Nk, 3, 2) canonical
    bank_lips: np.ndarray  # (Nk, len(LIP_POINTS), 2) canonical
    bank_clip: np.ndarray  # (Nk,) which recording (index in the ``clips`` of the description) the entry comes from
    base_clip: np.ndarray  # (Nb,) which recording each base frame comes from
    crop_origin: tuple[float, float]  # canonical coordinates of the bank crops' top-left pixel
    canon_iod: float
    audio_map: np.ndarray  # (len(MATCH_FIELDS), 2, Q): knots of the maps from the analyzer (see _fit_audio_map)
    closed_shape: np.ndarray  # (len(MATCH_FIELDS),) the resting, closed mouth
    portrait: Avatar
    base_pack: PackReader = field(repr=False)
    bank_pack: PackReader = field(repr=False)

    kind = "video"

    @property
    def source(self) -> str:
        return str(self.meta.get("source", self.folder))

    # the portrait's attributes, for code that only needs a still (framing, previews, logs)
    @property
    def image(self) -> np.ndarray:
        return self.portrait.image

    @property
    def landmarks(self) -> np.ndarray:
        return self.portrait.landmarks

    @property
    def size(self) -> tuple[int, int]:
        return self.frame_size

    @property
    def content_arrays(self) -> tuple[np.ndarray, ...]:
        """What identifies the avatar's content beyond its first frame (for cache keys)."""
        return (self.base_landmarks, self.playlist, self.bank_shape, self.base_pack.offsets, self.bank_pack.offsets)

    @classmethod
    def load(cls, folder: str | Path) -> "VideoAvatar":
        folder = Path(folder)
        meta_path = folder / "video_avatar.json"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {meta_path}: {exc}; prepare the video avatar again") from exc
        if not isinstance(meta, dict) or meta.get("format") != VIDEO_AVATAR_FORMAT:
            raise InputError(f"{meta_path} is not an avatarcast video avatar description; prepare it again")
        if meta.get("format_version") != VIDEO_AVATAR_FORMAT_VERSION:
            raise InputError(f"{folder} uses video avatar format version {meta.get('format_version')}, this "
                             f"avatarcast reads version {VIDEO_AVATAR_FORMAT_VERSION}; prepare it again from its "
                             "recording (`prepare_video_avatar`)")
        try:
            with np.load(folder / "arrays.npz") as z:
                a = {k: z[k] for k in z.files}
            portrait = Avatar.load(folder / "portrait")
            avatar = cls(
                folder=folder, meta=meta, fps=float(meta["fps"]), frame_size=tuple(meta["frame_size"]),
                base_landmarks=a["base_landmarks"].astype(np.float32), base_pose=a["base_pose"].astype(np.float32),
                playlist=a["playlist"].astype(np.int64), bank_shape=a["bank_shape"].astype(np.float32),
                bank_rows=a["bank_rows"].astype(np.float32), bank_pose=a["bank_pose"].astype(np.float32),
                bank_next=a["bank_next"].astype(np.int64), bank_stable=a["bank_stable"].astype(np.float32),
                bank_jaw=a["bank_jaw"].astype(np.float32), bank_under_nose=a["bank_under_nose"].astype(np.float32),
                bank_lips=a["bank_lips"].astype(np.float32), bank_clip=a["bank_clip"].astype(np.int64),
                base_clip=a["base_clip"].astype(np.int64),
                crop_origin=(float(meta["crop_origin"][0]), float(meta["crop_origin"][1])),
                canon_iod=float(meta["canon_iod"]), audio_map=a["audio_map"].astype(np.float64),
                closed_shape=a["closed_shape"].astype(np.float64), portrait=portrait,
                base_pack=PackReader(folder / "base.pack", a["base_offsets"]),
                bank_pack=PackReader(folder / "bank.pack", a["bank_offsets"]),
            )
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"the video avatar folder {folder} is incomplete or damaged ({exc}); "
                             "prepare it again") from exc
        nb, nk = len(avatar.base_landmarks), len(avatar.bank_shape)
        if (len(avatar.base_pack) != nb or len(avatar.bank_pack) != nk or nb == 0 or nk == 0
                or len(avatar.bank_clip) != nk or len(avatar.base_clip) != nb
                or len(avatar.playlist) == 0 or int(avatar.playlist.max()) >= nb):
            raise InputError(f"the video avatar folder {folder} is inconsistent; prepare it again")
        for pack in (avatar.base_pack, avatar.bank_pack):
            if not pack.path.is_file() or pack.path.stat().st_size != int(pack.offsets[-1]):
                raise InputError(f"{pack.path} is missing or truncated; prepare the video avatar again")
        return avatar

    def map_rows(self, rows: np.ndarray) -> np.ndarray:
        """Target mouth shapes ``(T, len(MATCH_FIELDS))`` for mouth-analyzer rows ``(T, 3)``; silence is closed."""
        rows = np.asarray(rows, np.float64).reshape(-1, 3)
        src = _row_sources(rows)
        target = np.stack([np.interp(src[:, j], self.audio_map[j, 0], self.audio_map[j, 1])
                           for j in range(len(MATCH_FIELDS))], axis=1)
        if TARGET_GAIN != 1.0:
            centre = self.audio_map[:, 1, AUDIO_MAP_QUANTILES // 2]
            target = centre + TARGET_GAIN * (target - centre)
        quiet = rows[:, 0] < QUIET_JAW
        target[quiet] = self.closed_shape
        return target

    def loop_position(self, t_s: float) -> int:
        """Where time ``t_s`` falls in one loop of the playlist played forward then backward: ``0 .. 2n - 1`` (the
        first ``n`` positions forward). Each end frame is shown for two positions, so the turn steps to the next
        frame back, never two: output rates below the footage's (25 fps from 29.97) skip a frame every few steps,
        and a skip at the turn made the largest change of a long run (twice the footage's median change by
        itself)."""
        period = max(2 * len(self.playlist), 1)
        return int(math.floor(max(t_s, 0.0) * self.fps + 1e-6)) % period

    def base_index(self, t_s: float) -> int:
        """The base frame shown at time ``t_s``: the playlist played forward, then backward, and again."""
        n = len(self.playlist)
        if n == 1:
            return int(self.playlist[0])
        p = self.loop_position(t_s)
        return int(self.playlist[p if p < n else 2 * n - 1 - p])


# ---------------------------------------------------------------------------------------------------------------
# Reading and tracking the footage
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Frame:
    clip: int
    index: int  # frame number in the clip
    time_s: float  # from the clip's first frame
    landmarks: np.ndarray  # (478, 3), in stored pixels (after scaling to BASE_MAX_SIDE_PX)
    iod: float
    pose: tuple[float, float, float]


@dataclass
class _Clip:
    path: str
    fps: float
    size: tuple[int, int]
    n_frames: int
    frames: list[_Frame]
    rejected: dict[str, int]
    audio: np.ndarray | None
    several_faces: int = 0


def _open_video(path: Path):
    if not path.exists():
        raise InputError(f"video file not found: {path}; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a video file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot read video {path}: it is corrupt or not a video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream; give a recording of a person talking to the camera")
    return container


def _clip_audio(path: Path) -> np.ndarray | None:
    try:
        return load_audio(path).samples
    except AudioError:
        return None


def _video_info(path: Path) -> tuple[float, int]:
    """``(frame rate, frame count)`` of a clip as its container declares them (count 0 when it does not say)."""
    container = _open_video(path)
    stream = container.streams.video[0]
    info = float(stream.average_rate or stream.guessed_rate or 25.0), int(stream.frames or 0)
    container.close()
    return info


def _frames(path: Path, fps: float):
    """``(index, time_s, rgb)`` for every frame of a clip, scaled so its longest side is ``BASE_MAX_SIDE_PX``."""
    container = _open_video(path)
    stream = container.streams.video[0]
    n = -1
    try:
        for n, frame in enumerate(container.decode(stream)):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            scale = min(1.0, BASE_MAX_SIDE_PX / max(h, w))
            if scale < 1.0:
                rgb = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            yield n, (float(frame.time) if frame.time is not None else n / fps), rgb
    except av.error.FFmpegError as exc:
        if n < 0:
            raise InputError(f"cannot decode video {path}: it is corrupt ({exc})") from None
        logger.warning("%s: decoding stopped at frame %d (%s); using the frames before it", path, n + 1, exc)
    finally:
        container.close()


def _track_clip(clip_id: int, path: Path, fps: float, progress: Callable[[int], None]) -> _Clip:
    frames: list[_Frame] = []
    rejected = {"no face": 0, "face too small": 0, "turned away": 0, "jump": 0}
    several = 0
    t0: float | None = None
    size = (0, 0)
    prev: _Frame | None = None
    count = 0
    for n, t, rgb in _frames(path, fps):
        count = n + 1
        size = (rgb.shape[1], rgb.shape[0])
        t0 = t if t0 is None else t0
        progress(count)
        faces = face_mesh.detect_faces(rgb)
        if not faces:
            rejected["no face"] += 1
            prev = None
            continue
        faces.sort(key=lambda f: -f.size_px)
        if len(faces) > 1 and faces[1].size_px >= SECOND_FACE_FRACTION * faces[0].size_px:
            several += 1
            if prev is not None:  # keep following the person we had
                c = prev.landmarks[:468, :2].mean(0)
                faces.sort(key=lambda f: (f.center[0] - c[0]) ** 2 + (f.center[1] - c[1]) ** 2)
        face = faces[0]
        if face.size_px < MIN_FACE_SIZE_PX:
            rejected["face too small"] += 1
            prev = None
            continue
        lm = face_mesh.face_landmarks(rgb, face)
        pose = head_pose(lm)
        if abs(pose[0]) > MAX_YAW_DEG or abs(pose[1]) > MAX_PITCH_DEG:
            rejected["turned away"] += 1
            prev = None
            continue
        iod = eye_distance(lm)
        if prev is not None and prev.index == n - 1:
            moved = float(np.linalg.norm(lm[STABLE_POINTS, :2].mean(0) - prev.landmarks[STABLE_POINTS, :2].mean(0)))
            if moved > MAX_FACE_JUMP_IOD * prev.iod or not (0.8 < iod / prev.iod < 1.25):
                rejected["jump"] += 1
                prev = None
                continue
        fr = _Frame(clip_id, n, t - t0, lm.astype(np.float32), iod, pose)
        frames.append(fr)
        prev = fr
    return _Clip(str(path), fps, size, count, frames, rejected, None, several)


# ---------------------------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------------------------

def _segments(clip: _Clip) -> list[list[_Frame]]:
    """Runs of consecutive usable frames, without the clip's first and last ``EDGE_TRIM_FRAMES`` frames."""
    runs: list[list[_Frame]] = []
    for fr in clip.frames:
        if fr.index < EDGE_TRIM_FRAMES or fr.index >= clip.n_frames - EDGE_TRIM_FRAMES:
            continue
        if runs and runs[-1][-1].index == fr.index - 1:
            runs[-1].append(fr)
        else:
            runs.append([fr])
    return [r for r in runs if len(r) >= MIN_SEGMENT_FRAMES]


def _descriptor(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """What a viewer sees of a base frame outside the replaced mouth: the upper head and its surroundings, small."""
    x0, y0, x1, y1 = box
    grey = cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (DESCRIPTOR_PX, DESCRIPTOR_PX), interpolation=cv2.INTER_AREA).astype(np.float32)


def _chain_segments(segs: list[list[_Frame]], desc: dict[tuple[int, int], np.ndarray],
                    fps: float = 30.0) -> tuple[list[_Frame], dict]:
    """One path through the stretches of footage, cut where frames match; returns it and what was decided.

    Starting from the longest stretch, the path is extended by the stretch whose first frames best match the path's
    last frames (at most ``CUT_SEARCH_FRAMES`` on each side), while that match is within ``LOOP_CUT_MAX_CHANGE``
    times the footage's median frame-to-frame change and the path is shorter than ``MAX_BASE_S``.
    """
    def stack(frames: list[_Frame]) -> np.ndarray:
        return np.stack([desc[(f.clip, f.index)].ravel() for f in frames])

    steps = [np.abs(np.diff(stack(s), axis=0)).mean(1) for s in segs if len(s) > 1]
    median_change = float(np.median(np.concatenate(steps))) if steps else 0.0
    limit = LOOP_CUT_MAX_CHANGE * max(median_change, 1e-3)
    order = sorted(range(len(segs)), key=lambda i: -len(segs[i]))
    path = list(segs[order[0]])
    used = {order[0]}
    cuts: list[float] = []
    budget = int(MAX_BASE_S * fps)
    while len(used) < len(segs) and len(path) < budget:
        tail = path[max(len(path) // 2, len(path) - CUT_SEARCH_FRAMES):]
        tail_desc = stack(tail)
        best = None
        for j in order:
            if j in used:
                continue
            head = segs[j][:max(MIN_SEGMENT_FRAMES, min(len(segs[j]) // 2, CUT_SEARCH_FRAMES))]
            cost = np.abs(tail_desc[:, None, :] - stack(head)[None, :, :]).mean(2)
            ai, bi = np.unravel_index(int(cost.argmin()), cost.shape)
            if best is None or cost[ai, bi] < best[0]:
                best = (float(cost[ai, bi]), j, int(ai), int(bi))
        if best is None or best[0] > limit:
            break
        c, j, ai, bi = best
        cut_at = len(path) - len(tail) + ai
        path = path[:cut_at + 1] + segs[j][bi:]
        used.add(j)
        cuts.append(c)
    info = {"median_change": round(median_change, 3), "cuts": [round(c, 3) for c in cuts],
            "stretches_used": len(used), "stretches": len(segs)}
    return path, info


def visible_opening(crop: np.ndarray, lips: np.ndarray, iod: float) -> float | None:
    """The lip opening a viewer sees, in eye distances, measured in an aligned (eye line level) crop: from the first to
    the last row of a narrow vertical strip at the mouth's middle that is not lip, i.e. darker than the upper lip (the
    mouth's inside, the line between closed lips) or brighter and greyer than it (teeth), within the mesh's mouth
    region. ``lips``: the inner lips' middles (upper, lower) and the mouth corners (``LIP_POINTS``) in crop pixels.
    None when the strip leaves the crop.

    The mesh's own inner-lip gap disagrees with the pixels in two ways this corrects: closed lips read as slightly
    open in some frames (the inner points sit on the lips' red), and a mouth showing teeth reads as less open than
    the gap between its lips (the points sit on the teeth's edges), so the mouths chosen for an opening did not show
    it."""
    up, lo, c0, c1 = np.asarray(lips, np.float64)[:4, :2]
    half = OPENING_STRIP_WIDTH * abs(float(c1[0] - c0[0]))
    cx = 0.5 * (up[0] + lo[0])
    x0, x1 = int(round(cx - half)), int(round(cx + half)) + 1
    mid = 0.5 * (up[1] + lo[1])
    reach = 0.5 * max(float(lo[1] - up[1]), 0.0) + 0.08 * iod
    y0, y1 = int(math.floor(mid - reach - 0.1 * iod)), int(math.ceil(mid + reach + 0.1 * iod)) + 1
    h, w = crop.shape[:2]
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h or x1 - x0 < 1:
        return None
    region = crop[y0:y1, x0:x1].astype(np.float32)
    hi = region.max(2)
    lum = np.median(region.mean(2), axis=1)
    sat = np.median((hi - region.min(2)) / np.maximum(hi, 1.0), axis=1)
    ys = np.arange(y0, y1)
    body = np.abs(ys - (up[1] - 0.05 * iod)) <= 0.025 * iod  # the upper lip's red, just above its inner edge
    if not body.any():
        return None
    ref_lum, ref_sat = float(np.median(lum[body])), float(np.median(sat[body]))
    not_lip = (lum < 0.72 * ref_lum) | ((lum > 1.2 * ref_lum) & (sat < 0.7 * ref_sat))
    rows = np.flatnonzero(not_lip & (np.abs(ys - mid) <= reach))
    return float(rows[-1] - rows[0] + 1) / iod if len(rows) else 0.0


def _teeth_tongue(crop: np.ndarray, ring: np.ndarray) -> tuple[float, float]:
    """Fractions of the inner-lip opening that look like teeth (bright, unsaturated) and tongue (red, mid-bright)."""
    mask = np.zeros(crop.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(ring).astype(np.int32)], 1)
    inside = mask.astype(bool)
    area = int(inside.sum())
    if area < 6:
        return 0.0, 0.0
    px = crop[inside].astype(np.float32)
    lum = px.mean(1)
    sat = px.max(1) - px.min(1)
    teeth = (lum > 0.75 * np.percentile(crop.reshape(-1, 3).mean(1), 90)) & (sat < 0.35 * np.maximum(lum, 1))
    tongue = (px[:, 0] > 1.35 * px[:, 1]) & (lum > 50) & ~teeth
    return float(teeth.mean()), float(tongue.mean())


AUDIO_MAP_QUANTILES = 33
TARGET_GAIN = 1.0
QUIET_JAW = 0.02
"""Mouth-analyzer rows with a jaw opening below this are silence: the mouth rests, closed."""
CLOSED_MARGIN_IOD = 0.02
"""A mouth this many eye distances more open than the resting mouth counts as open (see ``_fit_audio_map``)."""


def _row_sources(rows: np.ndarray) -> np.ndarray:
    """What each matched shape field is mapped from: jaw for the opening and the jaw drop, spread minus rounding for
    the width."""
    rows = np.asarray(rows, np.float64).reshape(-1, 3)
    return np.stack([rows[:, 0], rows[:, 1] - rows[:, 2], rows[:, 0]], axis=1)


def _fit_audio_map(rows: np.ndarray, shapes: np.ndarray,
                   closed_opening: float | None = None) -> tuple[np.ndarray, dict]:
    """Maps from the mouth analyzer's rows to this person's shapes, learned on the footage's speech.

    Each matched field is a straight line from its source in the analyzer's rows (jaw; spread minus rounding) whose
    mean and spread match the person's shapes over the frames where the footage speaks, clipped to the range the
    bank holds. It keeps the person's whole range of mouth shapes (a least-squares fit shrinks toward the mean
    shape where the audio and the mouth correlate weakly, as they do frame by frame, and the mouth would hardly
    move), and it follows the analyzer's rows as they are: a quantile map, tried before, bent them (its steps and
    flat ends turned quiet speech into a closed mouth), and the chosen mouths followed the sound less closely than
    the analyzer did (correlation with the loudness on ten LJ Speech clips 0.74-0.81 for three speakers, against
    0.84-0.85 now and 0.85 for the analyzer's own opening).

    The opening's mean and spread are taken over the speech frames whose mouth is open (more than
    ``CLOSED_MARGIN_IOD`` above ``closed_opening``): the lips close within speech (m, b, p, the gaps between words)
    in a fifth of the frames or so, and nothing in the analyzer's jaw predicts those frames. The analyzer's own
    silence (``QUIET_JAW``) closes the mouth.

    Returns ``(fields, 2, AUDIO_MAP_QUANTILES)``: knots of each field's map (source values over the analyzer's
    range, target values), read with ``np.interp``.
    """
    ok = np.isfinite(rows).all(1) & (np.nan_to_num(rows[:, 0]) >= QUIET_JAW)
    table = np.zeros((len(MATCH_FIELDS), 2, AUDIO_MAP_QUANTILES))
    if ok.sum() < 20:
        return None, {"fitted": False, "speech_frames": int(ok.sum())}
    src = _row_sources(rows[ok])
    target_ok = [ok] * len(MATCH_FIELDS)
    if closed_opening is not None:
        open_ok = ok & (shapes[:, 0] > closed_opening + CLOSED_MARGIN_IOD)
        if open_ok.sum() >= 20:
            target_ok[0] = open_ok
    for j in range(len(MATCH_FIELDS)):
        lo_src, hi_src = (-1.0, 1.0) if j == 1 else (QUIET_JAW, 1.0)
        knots = np.linspace(lo_src, hi_src, AUDIO_MAP_QUANTILES)
        values = shapes[target_ok[j], j]
        slope = float(values.std()) / max(float(src[:, j].std()), 1e-6)
        line = float(values.mean()) + slope * (knots - float(src[:, j].mean()))
        lowest = closed_opening if (j == 0 and closed_opening is not None) else float(shapes[ok, j].min())
        table[j, 0] = knots
        table[j, 1] = np.clip(line, lowest, float(shapes[:, j].max()))
    corr = np.corrcoef(rows[ok, 0], shapes[ok, 0])[0, 1]
    return table, {"fitted": True, "speech_frames": int(ok.sum()), "open_speech_frames": int(target_ok[0].sum()),
                   "jaw_opening_correlation": round(float(corr), 3) if np.isfinite(corr) else None}


def prepare_video_avatar(clips: Sequence[str | Path], output: str | Path, *, progress: bool = True) -> VideoAvatar:
    """Build a video avatar folder from recordings of one person talking to the camera (see the module docstring).

    Raises ``InputError`` for a file that is missing, corrupt or not a video, and ``FaceError`` when the footage
    holds too little usable face (``MIN_USABLE_S`` seconds are needed).
    """
    if not clips:
        raise InputError("give at least one video clip of the person talking to the camera")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InputError(f"cannot write the avatar to {out}: it exists and is not a folder")
    tracked: list[_Clip] = []
    for ci, path in enumerate(clips):
        p = Path(path)
        fps, total = _video_info(p)
        bar = ProgressBar(total or 1, f"tracking {p.name}") if progress else None
        clip = _track_clip(ci, p, fps, bar.update if bar else (lambda n: None))
        clip.audio = _clip_audio(p)
        usable = len(clip.frames)
        why = ", ".join(f"{v} {k}" for k, v in clip.rejected.items() if v)
        if bar:
            bar.close(f"{usable} of {clip.n_frames} frames usable" + (f" (rejected: {why})" if why else ""))
        if clip.n_frames and usable < 0.5 * clip.n_frames:
            logger.warning("%s: only %d of %d frames are usable (%s); the face must be visible, at least %d pixels "
                           "tall and turned less than %.0f degrees", p, usable, clip.n_frames, why or "-",
                           MIN_FACE_SIZE_PX, MAX_YAW_DEG)
        if clip.several_faces > 0.3 * max(clip.n_frames, 1):
            logger.warning("%s shows several people in %d of %d frames; following the largest face. Footage of "
                           "one person gives a cleaner avatar", p, clip.several_faces, clip.n_frames)
        if clip.audio is None:
            logger.warning("%s has no audio track (or it cannot be decoded): its frames are used, but not to learn "
                           "how this person's mouth follows speech", p)
        tracked.append(clip)
    usable_s = sum(len(c.frames) / c.fps for c in tracked)
    if usable_s < MIN_USABLE_S:
        detail = "; ".join(f"{Path(c.path).name}: {len(c.frames)} of {c.n_frames} frames" for c in tracked)
        raise FaceError(f"too little usable footage: {usable_s:.1f} s with one face looking at the camera, at least "
                        f"{MIN_USABLE_S:.0f} s are needed ({RECOMMENDED_USABLE_S:.0f} s or more recommended) "
                        f"[{detail}]")
    if usable_s < RECOMMENDED_USABLE_S:
        logger.warning("only %.1f s of usable footage; %.0f s or more gives a richer mouth bank", usable_s,
                       RECOMMENDED_USABLE_S)
    sizes = {c.size for c in tracked if c.frames}
    if len(sizes) > 1:
        raise InputError(f"the clips have different frame sizes ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); "
                         "give clips of one camera setting")
    frame_size = sizes.pop()
    fps = float(np.median([c.fps for c in tracked if c.frames]))
    all_frames = [f for c in tracked for f in c.frames]
    iods = np.array([f.iod for f in all_frames])
    canon_iod = float(np.clip(np.median(iods), MIN_CANON_IOD_PX, MAX_CANON_IOD_PX))
    pixel_opening = float(np.median(iods)) >= PIXEL_OPENING_MIN_IOD_PX
    measured = 0

    # ---- canonical face: the most frontal frame, eye line level, eye distance canon_iod
    ref = min(all_frames, key=lambda f: abs(f.pose[0]) + abs(f.pose[1]))
    r_eye = ref.landmarks[list(EYE_R_CORNERS), :2].mean(0)
    l_eye = ref.landmarks[list(EYE_L_CORNERS), :2].mean(0)
    ang = math.atan2(l_eye[1] - r_eye[1], l_eye[0] - r_eye[0])
    s = canon_iod / max(float(np.linalg.norm(l_eye - r_eye)), 1e-6)
    rot = np.array([[math.cos(-ang), -math.sin(-ang)], [math.sin(-ang), math.cos(-ang)]]) * s
    centre = 0.5 * (r_eye + l_eye)
    template = ((ref.landmarks[:, :2] - centre) @ rot.T).astype(np.float64)
    # the lower-face crop in canonical coordinates: cheek to cheek, from the nose down past the chin
    cx0 = float(template[JAW_LINE, 0].min()) - 0.15 * canon_iod
    cx1 = float(template[JAW_LINE, 0].max()) + 0.15 * canon_iod
    cy0 = float(template[[168, 6]].mean(0)[1])
    cy1 = float(template[CHIN, 1]) + 0.9 * canon_iod
    crop_w, crop_h = int(round(cx1 - cx0)), int(round(cy1 - cy0))

    out.mkdir(parents=True, exist_ok=True)
    analyzer_rows: dict[int, np.ndarray] = {}
    for ci, c in enumerate(tracked):
        if c.audio is not None and len(c.audio) > 0:
            analyzer_rows[ci] = mouth_track(c.audio, 16000, c.fps)

    # ---- the base performance's candidates and what a viewer sees of them (for matching frames)
    segs = [s for c in tracked for s in _segments(c)]
    if not segs:
        raise FaceError("no stretch of at least %d consecutive usable frames in the footage; the face must stay "
                        "visible and facing the camera" % MIN_SEGMENT_FRAMES)
    xy = np.concatenate([f.landmarks[:468, :2] for f in all_frames[:: max(1, len(all_frames) // 200)]])
    fx0, fy0 = np.percentile(xy, 1, axis=0)
    fx1, fy1 = np.percentile(xy, 99, axis=0)
    fw, fh = fx1 - fx0, fy1 - fy0
    width_px, height_px = frame_size
    dbox = (int(max(fx0 - 0.4 * fw, 0)), int(max(fy0 - 0.4 * fh, 0)), int(min(fx1 + 0.4 * fw, width_px)),
            int(min(fy0 + 0.55 * fh, height_px)))
    in_segment = {(f.clip, f.index) for s in segs for f in s}

    # ---- mouth bank: every usable frame (evenly thinned beyond MAX_BANK_ENTRIES), one more pass over the clips
    keep = np.arange(len(all_frames))
    if len(keep) > MAX_BANK_ENTRIES:
        keep = np.linspace(0, len(all_frames) - 1, MAX_BANK_ENTRIES).round().astype(int)
    wanted = {(all_frames[i].clip, all_frames[i].index): i for i in keep}
    by_key = {(f.clip, f.index): f for f in all_frames}
    bank = PackWriter(out / "bank.pack")
    shapes, rows, poses, stable, jaws, noses, lips = [], [], [], [], [], [], []
    desc: dict[tuple[int, int], np.ndarray] = {}
    entry_of: dict[tuple[int, int], int] = {}
    bar = ProgressBar(len(keep), "mouth bank") if progress else None
    for ci, c in enumerate(tracked):
        if not c.frames:
            continue
        for n, _t, img in _frames(Path(c.path), c.fps):
            key = (ci, n)
            if key in in_segment:
                desc[key] = _descriptor(img, dbox)
            if key not in wanted:
                continue
            f = by_key[key]
            m = similarity(f.landmarks[STABLE_POINTS, :2], template[STABLE_POINTS])
            full = m.copy()
            full[:, 2] -= [cx0, cy0]
            crop = cv2.warpAffine(img, full, (crop_w, crop_h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
            bank.add(crop)
            canon = apply_affine(m, f.landmarks)
            gap, width, jaw = mouth_shape(f.landmarks, f.iod)
            teeth, tongue = _teeth_tongue(crop, canon[LIPS_INNER_RING] - [cx0, cy0])
            if pixel_opening:
                seen = visible_opening(crop, canon[LIP_POINTS] - [cx0, cy0], canon_iod)
                if seen is not None:
                    gap = seen
                    measured += 1
            shapes.append([gap, width, jaw, 0.0, teeth, tongue])
            r = analyzer_rows.get(ci)
            k = int(round(f.time_s * c.fps))
            rows.append(r[k] if r is not None and k < len(r) else [np.nan] * 3)
            poses.append(f.pose)
            stable.append(canon[STABLE_POINTS])
            jaws.append(canon[JAW_LINE])
            noses.append(canon[UNDER_NOSE])
            lips.append(canon[LIP_POINTS])
            entry_of[key] = len(shapes) - 1
            if bar:
                bar.update(len(shapes))
    bank_offsets = bank.close()
    order = sorted(entry_of, key=lambda k: entry_of[k])
    nexts = [entry_of.get((k[0], k[1] + 1), -1) for k in order]
    shapes_a = np.asarray(shapes, np.float32)
    shapes_a[:, 2] -= np.median(shapes_a[:, 2])  # jaw drop relative to the footage's median
    shapes_a[:, 3] = 1.0 - shapes_a[:, 1] / max(float(np.median(shapes_a[:, 1])), 1e-6)
    rows_a = np.asarray(rows, np.float32)
    if bar:
        bar.close(f"{len(shapes)} mouths, {crop_w}x{crop_h} px each")

    match = shapes_a[:, list(MATCH_FIELDS)].astype(np.float64)
    # the resting mouth: lips together (the most closed mouths of the footage), its usual width, the jaw up
    closed = np.array([np.percentile(match[:, 0], 2), np.median(match[:, 1]), np.percentile(match[:, 2], 10)])
    audio_map, fit = _fit_audio_map(rows_a.astype(np.float64), match, float(closed[0]))
    if audio_map is None:
        # no audio to learn from: the analyzer's range [0, 1] (width: [-1, 1]) onto the bank's range of shapes
        q = np.linspace(0.0, 1.0, AUDIO_MAP_QUANTILES)
        audio_map = np.zeros((len(MATCH_FIELDS), 2, AUDIO_MAP_QUANTILES))
        for j in range(len(MATCH_FIELDS)):
            audio_map[j, 0] = q if j != 1 else 2 * q - 1
            audio_map[j, 1] = np.quantile(match[:, j], q)
        logger.warning("no usable audio in the footage: the audio-to-mouth mapping uses the mouths' range only")

    # ---- base performance: chain the stretches where frames match, stabilise, write the frames in path order
    path, loop_info = _chain_segments(segs, desc, fps)
    path = path[:int(MAX_BASE_S * fps)]
    base_lm = np.stack([f.landmarks for f in path])
    starts = [0] + [i for i in range(1, len(path)) if not (path[i].clip == path[i - 1].clip
                                                          and path[i].index == path[i - 1].index + 1)] + [len(path)]
    for a, b in zip(starts, starts[1:]):
        base_lm[a:b] = smooth_track(base_lm[a:b])
    needed = {(f.clip, f.index) for f in path}
    encoded: dict[tuple[int, int], bytes] = {}
    first_image = None
    for ci in sorted({f.clip for f in path}):
        for n, _t, img in _frames(Path(tracked[ci].path), tracked[ci].fps):
            if (ci, n) in needed:
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                encoded[(ci, n)] = buf.tobytes()
                if (ci, n) == (path[0].clip, path[0].index):
                    first_image = img
    offsets = [0]
    with open(out / "base.pack", "wb") as fh_out:
        for f in path:
            data = encoded[(f.clip, f.index)]
            fh_out.write(data)
            offsets.append(offsets[-1] + len(data))
    base_offsets = np.asarray(offsets, np.int64)
    if progress:
        sys.stderr.write(f"base performance: {len(path)} frames ({len(path) / fps:.1f} s), "
                         f"{len(loop_info['cuts'])} cut(s) between stretches, played forward and backward\n")

    assert first_image is not None
    portrait = Avatar(image=first_image, landmarks=base_lm[0], face_box=_box(base_lm[0], frame_size),
                      head_pose_deg=head_pose(base_lm[0]),
                      regions={k: np.array(v, np.int32) for k, v in REGIONS.items()},
                      triangles=warp_triangles(base_lm[0]), source=f"first base frame of {Path(tracked[path[0].clip].path).name}")
    portrait.save(out / "portrait")
    np.savez(out / "arrays.npz", base_landmarks=base_lm, base_pose=np.asarray([f.pose for f in path], np.float32),
             playlist=np.arange(len(path), dtype=np.int64), base_offsets=base_offsets, bank_offsets=bank_offsets,
             bank_shape=shapes_a, bank_rows=rows_a, bank_pose=np.asarray(poses, np.float32),
             bank_next=np.asarray(nexts, np.int64), bank_stable=np.asarray(stable, np.float32),
             bank_jaw=np.asarray(jaws, np.float32), bank_under_nose=np.asarray(noses, np.float32),
             bank_lips=np.asarray(lips, np.float32), bank_clip=np.asarray([k[0] for k in order], np.int64),
             base_clip=np.asarray([f.clip for f in path], np.int64),
             audio_map=audio_map, closed_shape=closed)
    meta = {
        "format": VIDEO_AVATAR_FORMAT,
        "format_version": VIDEO_AVATAR_FORMAT_VERSION,
        "source": ", ".join(Path(c.path).name for c in tracked),
        "clips": [{"path": Path(c.path).name, "frames": c.n_frames, "usable": len(c.frames),
                   "rejected": c.rejected, "several_faces": c.several_faces, "audio": c.audio is not None}
                  for c in tracked],
        "fps": fps,
        "frame_size": list(frame_size),
        "usable_s": round(usable_s, 2),
        "base_frames": len(path),
        "bank_entries": len(shapes),
        "canon_iod": canon_iod,
        "crop_origin": [cx0, cy0],
        "crop_size": [crop_w, crop_h],
        "shape_fields": list(SHAPE_FIELDS),
        "opening_measured_in_pixels": measured,
        "loop": loop_info,
        "audio_map": fit,
    }
    (out / "video_avatar.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return VideoAvatar.load(out)


def _box(landmarks: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    xy = landmarks[:468, :2]
    x0, y0 = np.floor(xy.min(0)).astype(int)
    x1, y1 = np.ceil(xy.max(0)).astype(int)
    return (max(int(x0), 0), max(int(y0), 0), min(int(x1), size[0]), min(int(y1), size[1]))
