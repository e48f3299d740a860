"""Quality of a rendered talking-avatar video, measured on the video itself by an independent detector.

Nothing is read from the renderer. The video is decoded, the face is found and tracked with dlib's HOG detector and
68-point shape predictor (a different model family from the MediaPipe mesh the renderer uses), and:

- **lip sync**: the inner-lip opening per frame is compared with the loudness envelope of the speech per frame
  (Pearson correlation, and the lag in frames that maximises it); the mouth's opening in silence is compared with
  its opening in speech (voice activity from webrtcvad).
- **identity**: dlib's 128-D face descriptor of sampled output frames against the portrait's, on the frames whose
  mouth is closest to the portrait's (the descriptor is very sensitive to the mouth).
- **seams**: the frame-to-frame change of the face region at sub-clip joins against the change inside clips.
- **jitter**: high-frequency landmark motion, after removing the head's rigid motion, at points that should be
  still (nose, eye corners, upper face outline).
- **head pose** (yaw, pitch, roll from ``cv2.solvePnP`` against a generic 3D face) and **brow height** per frame, so
  that storyboard actions (a nod, raised brows) can be checked on the output.

Timing convention: frame ``i`` shows time ``i / fps`` and is paired with the audio samples
``[i * rate / fps, (i + 1) * rate / fps)``, as everywhere in the project. A lag of ``+k`` frames means the video is
late: the mouth moves ``k`` frames after the sound that drives it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from avatarcast.audio.io import load_audio
from avatarcast.audio.vad import speech_regions
from avatarcast.core.errors import FaceError, InputError
from avatarcast.core.types import AUDIO_RATE_HZ
from avatarcast.face.avatar import Avatar
from avatarcast_bench.face_landmarks68 import (
    EYE_CORNERS,
    FaceBox,
    FaceLandmarks68,
    JAW,
    NOSE_BASE,
    NOSE_BRIDGE,
    SAME_PERSON_DISTANCE,
    brow_height,
    descriptor_distance,
    head_pose_deg,
    inter_ocular_px,
    mouth_openness,
    shared_landmarker,
)

log = logging.getLogger(__name__)

LAG_RANGE_FRAMES = 5
"""Lip-sync lags searched: -5 .. +5 frames."""

REDETECT_EVERY_FRAMES = 30
"""The face is re-detected this often even when tracking looks fine (tracking is from the previous landmarks)."""

IDENTITY_MAX_FRAMES = 20
"""At most this many output frames get a face descriptor (~60-80 ms each)."""

ENVELOPE_RANGE_DB = 50.0
"""The loudness envelope is clipped to this many dB below its peak, so silence is one level, not digital -inf."""

SILENCE_GUARD_S = 0.12
"""Silence frames closer than this to speech are not counted as silence: lips move ahead of and after sound."""

QUIET_BELOW_SPEECH_DB = 25.0
"""Frames this far below loud speech (the 95th percentile of the envelope in voiced frames) count as pauses even
when the voice activity detector bridges them: a recording's room noise or crowd can keep webrtcvad 'speaking'."""

TRACK_MAX_JUMP_IOD = 0.6
"""Tracking is declared lost (and the face re-detected) when the eyes move more than this many inter-oculars."""

TRACK_MAX_SCALE_CHANGE = 1.4
"""... or when the inter-ocular distance changes by more than this factor from one frame to the next."""

TRACK_BOX_HOLD_IOD = 0.05
"""The tracking box is kept until the face moves more than this many inter-oculars (or scales by 5 %): a box that
followed every landmark wobble would feed the predictor's noise back into the next frame."""

SEAM_BOX_MARGIN = 0.15
"""The face box for frame differences is the landmarks' box widened by this fraction on each side."""

STILL_POINTS = np.concatenate([NOSE_BRIDGE, NOSE_BASE, EYE_CORNERS])
"""Landmarks that move only with the head: used to fit the head's rigid motion, and for jitter."""
OUTLINE_UPPER = np.concatenate([JAW[:4], JAW[-4:]])
"""The face outline from the temples to the cheeks: moves with the head, not with the jaw."""


# --------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float
    n_frames: int  # frames actually decoded


def _open_container(path: str | Path) -> Any:
    import av

    p = Path(path)
    if not p.exists():
        raise InputError(f"video file not found: {p}; check the path")
    if p.is_dir():
        raise InputError(f"video path is a folder, not a file: {p}; give an MP4 (or any video FFmpeg decodes)")
    try:
        container = av.open(str(p))
    except Exception as exc:  # PyAV raises several error classes for unreadable input
        raise InputError(f"cannot decode video {p}: {exc}; give an MP4 or any video FFmpeg decodes") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{p} has no video stream; give a video file")
    return container


def iter_video_frames(path: str | Path) -> tuple[Iterator[np.ndarray], float, tuple[int, int]]:
    """Decode a video to RGB uint8 frames, one at a time. Returns ``(frames, fps, (width, height))``."""
    container = _open_container(path)
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 25.0
    size = (int(stream.codec_context.width), int(stream.codec_context.height))

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except Exception as exc:  # a truncated or corrupt stream
            if not isinstance(exc, GeneratorExit):
                raise InputError(f"cannot decode video {path}: {exc}; the file is corrupt or truncated") from None
        finally:
            container.close()

    return frames(), fps, size


def read_video_audio(path: str | Path) -> np.ndarray | None:
    """The video's own audio track as mono float32 at AUDIO_RATE_HZ, or None when it has none."""
    import av

    container = _open_container(path)
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE_HZ)
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise InputError(f"cannot decode the audio track of {path}: {exc}; give the speech separately (`audio`)") from None
    finally:
        container.close()
    if not chunks:
        return None
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def load_portrait_image(path: str | Path) -> np.ndarray:
    """The portrait as RGB uint8: an image file, or a prepared avatar folder (its image)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"portrait not found: {p}; check the path")
    if p.is_dir():
        return np.ascontiguousarray(Avatar.load(p).image)
    image = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"cannot read portrait image {p}; give a PNG or JPEG file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------------------------
# Face tracking


class FaceTracker:
    """Detect once, then track: each frame's landmarks start from a box predicted by the previous landmarks.

    The face is re-detected every ``redetect_every`` frames and whenever tracking fails (no previous face, or the
    eyes jumped or changed scale implausibly). Detection runs on a scaled-down frame (see ``FaceLandmarks68``).
    """

    def __init__(self, landmarker: FaceLandmarks68, redetect_every: int = REDETECT_EVERY_FRAMES) -> None:
        self.landmarker = landmarker
        self.redetect_every = max(1, int(redetect_every))
        self._prev: np.ndarray | None = None
        self._box_rel: tuple[float, float, float, float] | None = None  # box centre offset and size, in IODs
        self._since_detect = 0
        self._box: FaceBox | None = None
        self.detections = 0

    @staticmethod
    def _anchor(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
        return landmarks[STILL_POINTS].mean(axis=0), inter_ocular_px(landmarks)

    def _predicted_box(self) -> FaceBox:
        assert self._prev is not None and self._box_rel is not None
        (ax, ay), iod = self._anchor(self._prev)
        dx, dy, w, h = self._box_rel
        cx, cy = ax + dx * iod, ay + dy * iod
        box = FaceBox(cx - w * iod / 2, cy - h * iod / 2, cx + w * iod / 2, cy + h * iod / 2)
        held = self._box
        if held is not None:
            (hx, hy), (bx, by) = held.center, box.center
            if math.hypot(hx - bx, hy - by) <= TRACK_BOX_HOLD_IOD * iod and 0.95 < box.width / held.width < 1.05:
                return held
        self._box = box
        return box

    def _plausible(self, landmarks: np.ndarray) -> bool:
        if self._prev is None:
            return True
        (a0, iod0), (a1, iod1) = self._anchor(self._prev), self._anchor(landmarks)
        if not np.all(np.isfinite(landmarks)) or iod1 < 4:
            return False
        if np.linalg.norm(a1 - a0) > TRACK_MAX_JUMP_IOD * iod0:
            return False
        return 1 / TRACK_MAX_SCALE_CHANGE < iod1 / iod0 < TRACK_MAX_SCALE_CHANGE

    def _detect(self, frame: np.ndarray) -> np.ndarray | None:
        self.detections += 1
        self._since_detect = 0
        boxes = self.landmarker.detect(frame)
        if not boxes:
            return None
        if self._prev is not None:  # several faces: keep following the one we had
            (ax, ay), _ = self._anchor(self._prev)
            boxes.sort(key=lambda b: (b.center[0] - ax) ** 2 + (b.center[1] - ay) ** 2)
        box = boxes[0]
        self._box = None
        landmarks = self.landmarker.landmarks(frame, box)
        (ax, ay), iod = self._anchor(landmarks)
        iod = max(iod, 1.0)
        cx, cy = box.center
        self._box_rel = ((cx - ax) / iod, (cy - ay) / iod, box.width / iod, box.height / iod)
        return landmarks

    def update(self, frame: np.ndarray) -> np.ndarray | None:
        """The 68 landmarks of the face in this frame, or None when there is none."""
        landmarks = None
        if self._prev is not None and self._since_detect < self.redetect_every:
            self._since_detect += 1
            landmarks = self.landmarker.landmarks(frame, self._predicted_box())
            if not self._plausible(landmarks):
                landmarks = None
        if landmarks is None:
            landmarks = self._detect(frame)
            if landmarks is not None and not self._plausible(landmarks):
                self._prev = None  # a different face or a cut: start the track afresh
        self._prev = landmarks
        return landmarks


# --------------------------------------------------------------------------------------------------------------
# Measures (pure functions of per-frame series, so they can be tested and reused on any source)


def audio_envelope_db(samples: np.ndarray, rate_hz: int, fps: float, n_frames: int) -> np.ndarray:
    """Loudness per video frame: RMS in dB of the frame's audio window, clipped to ENVELOPE_RANGE_DB below the peak.

    Frames beyond the end of the audio are NaN.
    """
    x = np.asarray(samples, np.float64)
    out = np.full(n_frames, np.nan)
    for i in range(n_frames):
        a, b = int(round(i * rate_hz / fps)), int(round((i + 1) * rate_hz / fps))
        if a >= len(x):
            break
        seg = x[a:min(b, len(x))]
        out[i] = 10.0 * math.log10(float(np.mean(seg * seg)) + 1e-12)
    valid = np.isfinite(out)
    if valid.any():
        peak = float(np.nanmax(out))
        out[valid] = np.maximum(out[valid], peak - ENVELOPE_RANGE_DB)
    return out


def speech_frame_mask(regions: Sequence[tuple[float, float]], fps: float, n_frames: int,
                      guard_s: float = 0.0) -> np.ndarray:
    """True for frames whose centre lies in a speech region widened by ``guard_s`` on each side."""
    t = (np.arange(n_frames) + 0.5) / fps
    mask = np.zeros(n_frames, bool)
    for a, b in regions:
        mask |= (t >= a - guard_s) & (t < b + guard_s)
    return mask


def speech_and_silence_frames(envelope_db: np.ndarray, regions: Sequence[tuple[float, float]], fps: float,
                              guard_s: float = SILENCE_GUARD_S) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame masks ``(speech, silence)``.

    Speech: inside a voice-activity region and not quiet. Silence: outside every region or quiet (more than
    QUIET_BELOW_SPEECH_DB under loud speech), and so for ``guard_s`` on both sides, since lips move ahead of and
    after the sound. Frames in neither mask (the edges of speech) are left out of the open/closed comparison.
    """
    env = np.asarray(envelope_db, np.float64)
    n = len(env)
    voiced = speech_frame_mask(regions, fps, n)
    known = np.isfinite(env)
    quiet = np.zeros(n, bool)
    if (voiced & known).any():
        loud = float(np.percentile(env[voiced & known], 95))
        quiet = known & (env < loud - QUIET_BELOW_SPEECH_DB)
    speech = voiced & known & ~quiet
    pause = known & (~voiced | quiet)
    guard = int(math.ceil(guard_s * fps))
    padded = np.pad(pause, guard, constant_values=True)  # before the first and after the last frame: no speech
    silence = np.ones(n, bool)
    for k in range(2 * guard + 1):  # every frame within the guard must be a pause too
        silence &= padded[k:k + n]
    return speech, silence


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b) / denom) if denom > 0 else None


def lag_correlations(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = LAG_RANGE_FRAMES) -> dict[int, float | None]:
    """Pearson correlation of ``mouth[t + lag]`` with ``envelope[t]`` for lag in ``-max_lag .. max_lag``.

    A positive lag pairs each sound with a later frame: the best lag is ``+k`` when the video is ``k`` frames late.
    NaNs (frames without a face, frames past the audio) are left out pair by pair.
    """
    m, e = np.asarray(mouth, np.float64), np.asarray(envelope, np.float64)
    n = min(len(m), len(e))
    m, e = m[:n], e[:n]
    out: dict[int, float | None] = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            out[lag] = _pearson(m[lag:], e[:n - lag]) if n - lag > 0 else None
        else:
            out[lag] = _pearson(m[:n + lag], e[-lag:]) if n + lag > 0 else None
    return out


def lipsync_metrics(mouth: np.ndarray, envelope_db: np.ndarray, speech_mask: np.ndarray | None,
                    fps: float, max_lag: int = LAG_RANGE_FRAMES,
                    silence_mask: np.ndarray | None = None) -> dict[str, Any]:
    """Lip-sync figures from per-frame mouth opening, loudness envelope and speech/silence masks.

    ``speech_mask`` marks speech frames; ``silence_mask`` the frames counted as silence (by default the complement
    of ``speech_mask``). The silence ratio is median opening in silence over median opening in speech: near 0 when
    the mouth closes in pauses, near 1 when it does not.
    """
    by_lag = lag_correlations(mouth, envelope_db, max_lag)
    scored = {k: v for k, v in by_lag.items() if v is not None}
    best_lag = max(scored, key=lambda k: (scored[k], -abs(k))) if scored else None
    result: dict[str, Any] = {
        "correlation": by_lag.get(0),
        "best_lag_frames": best_lag,
        "best_lag_ms": None if best_lag is None else round(1000.0 * best_lag / fps, 1),
        "best_lag_correlation": None if best_lag is None else scored[best_lag],
        "lag_convention": "positive = video late (the mouth moves after the sound)",
        "correlation_by_lag": {str(k): v for k, v in by_lag.items()},
        "correlation_in_speech": None,
        "open_speech": None,
        "open_silence": None,
        "silence_ratio": None,
        "speech_frames": 0,
        "silence_frames": 0,
    }
    if speech_mask is not None:
        m = np.asarray(mouth, np.float64)
        speech = np.asarray(speech_mask, bool)[: len(m)]
        silence = ~speech if silence_mask is None else np.asarray(silence_mask, bool)[: len(m)]
        face = np.isfinite(m)
        # within speech only: does the mouth follow the syllables, not just speech against pauses?
        result["correlation_in_speech"] = _pearson(m[speech], np.asarray(envelope_db, np.float64)[: len(m)][speech])
        sp, si = m[speech & face], m[silence & face]
        result["speech_frames"], result["silence_frames"] = int(len(sp)), int(len(si))
        if len(sp):
            result["open_speech"] = float(np.median(sp))
        if len(si):
            result["open_silence"] = float(np.median(si))
        if len(sp) and len(si) and result["open_speech"] > 1e-6:
            result["silence_ratio"] = result["open_silence"] / result["open_speech"]
    return result


def seam_metrics(change: np.ndarray, joins: Sequence[int], landmark_motion: np.ndarray | None = None) -> dict[str, Any]:
    """Frame-to-frame change at joins against inside clips.

    ``change[t]`` is the change from frame ``t - 1`` to frame ``t`` (``change[0]`` is NaN); a join at ``j`` means
    frame ``j`` is the first frame of a new clip. ``ratio`` = max change at joins / median change inside clips:
    about 1 for seamless joins, well above 1 when joins jump.
    """
    c = np.asarray(change, np.float64)
    n = len(c)
    js = sorted({int(j) for j in joins if 0 < int(j) < n})
    join_mask = np.zeros(n, bool)
    join_mask[js] = True
    inside = c[~join_mask & np.isfinite(c)]
    at = c[join_mask & np.isfinite(c)]
    out: dict[str, Any] = {
        "method": "mean absolute difference of the grey face box between consecutive frames (0-255 levels)",
        "joins": len(js),
        "join_max": float(at.max()) if len(at) else None,
        "join_mean": float(at.mean()) if len(at) else None,
        "inside_median": float(np.median(inside)) if len(inside) else None,
        "inside_p95": float(np.percentile(inside, 95)) if len(inside) else None,
        "ratio": None,
        "landmark_ratio": None,
    }
    if len(at) and len(inside):
        out["ratio"] = float(at.max() / max(np.median(inside), 1e-6))
    if landmark_motion is not None and len(js):
        lm = np.asarray(landmark_motion, np.float64)
        lat, lin = lm[join_mask & np.isfinite(lm)], lm[~join_mask & np.isfinite(lm)]
        if len(lat) and len(lin):
            out["landmark_ratio"] = float(lat.max() / max(np.median(lin), 1e-6))
    return out


def jitter_metrics(landmarks: np.ndarray) -> dict[str, Any]:
    """High-frequency landmark motion in pixels at points that should move only with the head.

    Each frame's rigid head motion is removed by fitting a similarity transform of a reference shape to its
    still points (nose, eye corners); the residual motion's second difference over consecutive frames is what a
    viewer sees as shimmer. Figures are RMS lengths of that second difference in video pixels (and, to compare
    sizes, in percent of the inter-ocular distance). dlib's own floor on a still face is ~0.05-0.1 px.
    """
    lms = np.asarray(landmarks, np.float64)
    ok = np.all(np.isfinite(lms.reshape(len(lms), -1)), axis=1)
    out: dict[str, Any] = {"still_px": None, "still_percent_of_iod": None, "eye_corners_px": None, "nose_px": None, "outline_px": None,
                           "raw_nose_px": None, "frames": int(ok.sum())}
    if ok.sum() < 3:
        return out
    pts = np.concatenate([STILL_POINTS, OUTLINE_UPPER])
    valid = lms[ok][:, pts]
    # Reference shape: the median over frames after aligning every frame to the first one.
    first = valid[0]
    reference = np.median(np.stack([_fit_all(v, first, len(STILL_POINTS)) for v in valid]), axis=0)
    residual = np.full(lms[:, pts].shape, np.nan)
    for t in np.flatnonzero(ok):
        residual[t] = lms[t, pts] - _fit_all(reference, lms[t, pts], len(STILL_POINTS))
    acc = residual[2:] - 2 * residual[1:-1] + residual[:-2]  # NaN wherever a frame of the triple has no face
    raw = lms[2:, NOSE_BRIDGE] - 2 * lms[1:-1, NOSE_BRIDGE] + lms[:-2, NOSE_BRIDGE]

    def rms(a: np.ndarray) -> float | None:
        d = np.linalg.norm(a, axis=-1)
        d = d[np.isfinite(d)]
        return float(np.sqrt(np.mean(d * d))) if len(d) else None

    n_still = len(STILL_POINTS)
    eye_cols = [int(np.flatnonzero(STILL_POINTS == i)[0]) for i in EYE_CORNERS]
    nose_cols = [int(np.flatnonzero(STILL_POINTS == i)[0]) for i in np.concatenate([NOSE_BRIDGE, NOSE_BASE])]
    still = rms(acc[:, :n_still])
    iod = np.median([inter_ocular_px(l) for l in lms[ok]])
    out.update(
        still_px=still,
        still_percent_of_iod=None if still is None else 100.0 * still / max(float(iod), 1e-6),
        eye_corners_px=rms(acc[:, eye_cols]),
        nose_px=rms(acc[:, nose_cols]),
        outline_px=rms(acc[:, n_still:]),
        raw_nose_px=rms(raw),
    )
    return out


def _fit_all(src_all: np.ndarray, dst_all: np.ndarray, n_fit: int) -> np.ndarray:
    """Map all of ``src_all`` with the similarity that best maps its first ``n_fit`` points onto ``dst_all``'s."""
    src, dst = src_all[:n_fit], dst_all[:n_fit]
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s)
    sign = np.eye(2)
    sign[1, 1] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign) / max(float((s * s).sum()), 1e-12))
    return (scale * (rot @ (src_all - mu_s).T)).T + mu_d


def _summary(values: np.ndarray) -> dict[str, float | None]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"median": None, "min": None, "max": None, "p5": None, "p95": None}
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}


# --------------------------------------------------------------------------------------------------------------
# Identity sampling


class _ChipSampler:
    """Keeps, for each stretch of the timeline, the face chip whose mouth opening is closest to a target.

    Memory is bounded (``2 * max_frames`` chips of 150x150) however long the video: when there are too many
    stretches, neighbours are merged and the stretch length doubles.
    """

    def __init__(self, target_openness: float, max_frames: int) -> None:
        self.target = target_openness
        self.capacity = 2 * max_frames
        self.stretch = 1
        self.best: dict[int, tuple[float, int, np.ndarray]] = {}  # stretch -> (score, frame index, chip)

    def wants(self, frame_index: int, openness: float) -> bool:
        held = self.best.get(frame_index // self.stretch)
        return held is None or abs(openness - self.target) < held[0]

    def offer(self, frame_index: int, openness: float, chip: np.ndarray) -> None:
        self.best[frame_index // self.stretch] = (abs(openness - self.target), frame_index, chip)
        while len(self.best) > self.capacity:
            self.stretch *= 2
            merged: dict[int, tuple[float, int, np.ndarray]] = {}
            for item in self.best.values():
                key = item[1] // self.stretch
                if key not in merged or item[0] < merged[key][0]:
                    merged[key] = item
            self.best = merged

    def chosen(self, max_frames: int) -> list[tuple[int, np.ndarray]]:
        """Up to ``max_frames`` (frame index, chip), the closest mouths first among evenly spread stretches."""
        items = sorted(self.best.values(), key=lambda it: it[0])[:max_frames]
        return sorted(((i, chip) for _, i, chip in items), key=lambda it: it[0])


# --------------------------------------------------------------------------------------------------------------
# The evaluation


@dataclass
class Evaluation:
    """The measured figures (``metrics``, JSON-ready) and the per-frame series behind them."""

    metrics: dict[str, Any]
    series: dict[str, np.ndarray] = field(default_factory=dict)
    identity_frames: list[int] = field(default_factory=list)
    identity_distances: list[float] = field(default_factory=list)
    joins: list[int] = field(default_factory=list)

    @property
    def lipsync(self) -> dict[str, Any]:
        return self.metrics["lipsync"]

    @property
    def identity(self) -> dict[str, Any]:
        return self.metrics["identity"]

    @property
    def seams(self) -> dict[str, Any]:
        return self.metrics["seams"]

    @property
    def jitter(self) -> dict[str, Any]:
        return self.metrics["jitter"]

    def to_dict(self, include_series: bool = False) -> dict[str, Any]:
        out = dict(self.metrics)
        if include_series:
            out["series"] = {k: [None if not np.isfinite(x) else round(float(x), 5) for x in v]
                             if np.asarray(v).dtype.kind == "f" else np.asarray(v).tolist()
                             for k, v in self.series.items()}
        return out

    def write_json(self, path: str | Path, include_series: bool = False) -> None:
        Path(path).write_text(json.dumps(self.to_dict(include_series), indent=2) + "\n", encoding="utf-8")


def joins_every(n: int, n_frames: int) -> list[int]:
    """Join frames of clips ``n`` frames long: ``n, 2n, ...`` below ``n_frames``."""
    if n < 1:
        raise InputError(f"`joins_every` must be at least 1 frame, got {n}")
    return list(range(n, n_frames, n))


def load_joins(path: str | Path) -> list[int]:
    """Join frame indices from a JSON file: a list of integers, or an object with a ``joins`` list."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"joins file not found: {p}; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read joins file {p}: {exc}; it must be a JSON list of frame indices") from None
    if isinstance(data, dict):
        data = data.get("joins", data.get("join_frames"))
    if not isinstance(data, list) or not all(isinstance(j, int) and not isinstance(j, bool) and j >= 0 for j in data):
        raise InputError(f"joins file {p} must hold a JSON list of non-negative frame indices, e.g. [25, 50, 75]")
    return sorted(set(data))


def evaluate_video(
    video: str | Path,
    portrait: str | Path | np.ndarray,
    audio: str | Path | np.ndarray | None = None,
    *,
    joins: Sequence[int] | None = None,
    joins_every_frames: int | None = None,
    redetect_every: int = REDETECT_EVERY_FRAMES,
    max_lag: int = LAG_RANGE_FRAMES,
    identity_frames: int = IDENTITY_MAX_FRAMES,
    landmarker: FaceLandmarks68 | None = None,
) -> Evaluation:
    """Measure lip sync, identity, seams, jitter, head pose and brows of a video.

    ``audio``: a speech file, or mono float32 samples at AUDIO_RATE_HZ; None uses the video's own audio track
    (lip-sync figures are None when there is no audio at all). ``joins`` are the first frames of sub-clips;
    ``joins_every_frames`` sets them every N frames instead.
    """
    started = time.perf_counter()
    landmarker = landmarker or shared_landmarker()
    portrait_image = portrait if isinstance(portrait, np.ndarray) else load_portrait_image(portrait)
    portrait_boxes = landmarker.detect(portrait_image)
    if not portrait_boxes:
        raise FaceError(f"no face found in the portrait {portrait if not isinstance(portrait, np.ndarray) else ''}; "
                        "give the portrait the avatar was made from (a frontal face)".replace("  ", " "))
    portrait_landmarks = landmarker.landmarks(portrait_image, portrait_boxes[0])
    portrait_descriptor = landmarker.descriptor(portrait_image, portrait_landmarks)
    portrait_open = mouth_openness(portrait_landmarks)

    frames, fps, (width, height) = iter_video_frames(video)
    tracker = FaceTracker(landmarker, redetect_every)
    sampler = _ChipSampler(portrait_open, identity_frames)
    landmarks: list[np.ndarray] = []
    change: list[float] = []
    poses: list[tuple[float, float, float]] = []
    prev_gray: np.ndarray | None = None
    pose_guess = None
    nan68 = np.full((68, 2), np.nan, np.float32)
    for i, frame in enumerate(frames):
        lm = tracker.update(frame)
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.int16)
        box_lm = lm if lm is not None else (landmarks[-1] if landmarks else None)
        if prev_gray is not None and box_lm is not None and np.all(np.isfinite(box_lm)):
            x0, y0 = box_lm.min(axis=0)
            x1, y1 = box_lm.max(axis=0)
            mx, my = SEAM_BOX_MARGIN * (x1 - x0), SEAM_BOX_MARGIN * (y1 - y0)
            xa, ya = max(0, int(x0 - mx)), max(0, int(y0 - my))
            xb, yb = min(width, int(x1 + mx) + 1), min(height, int(y1 + my) + 1)
            if xb > xa and yb > ya:
                change.append(float(np.mean(np.abs(gray[ya:yb, xa:xb] - prev_gray[ya:yb, xa:xb]))))
            else:
                change.append(math.nan)
        else:
            change.append(math.nan)
        prev_gray = gray
        if lm is None:
            landmarks.append(nan68)
            poses.append((math.nan, math.nan, math.nan))
            pose_guess = None
            continue
        landmarks.append(lm)
        angles, pose_guess = head_pose_deg(lm, (width, height), pose_guess)
        poses.append(angles)
        openness = mouth_openness(lm)
        if sampler.wants(i, openness):
            sampler.offer(i, openness, landmarker.face_chip(frame, lm))

    n_frames = len(landmarks)
    if n_frames == 0:
        raise InputError(f"video {video} has no frames; give a non-empty video")
    lms = np.stack(landmarks)
    face = np.all(np.isfinite(lms.reshape(n_frames, -1)), axis=1)
    if not face.any():
        raise FaceError(f"no face found in any of the {n_frames} frames of {video}; "
                        "check that this is the avatar video (a visible, roughly frontal face)")
    iod = np.array([inter_ocular_px(l) if ok else np.nan for l, ok in zip(lms, face)])
    mouth = np.array([mouth_openness(l) if ok else np.nan for l, ok in zip(lms, face)])
    brows = np.array([brow_height(l) if ok else np.nan for l, ok in zip(lms, face)])
    pose = np.array(poses, np.float64).reshape(n_frames, 3)
    motion = np.full(n_frames, np.nan)
    motion[1:] = np.nanmean(np.linalg.norm(lms[1:] - lms[:-1], axis=-1), axis=-1) / np.fmax(iod[1:], 1.0) \
        if n_frames > 1 else motion[1:]

    # Audio: envelope and voice activity per frame.
    samples: np.ndarray | None
    audio_source: str
    if audio is None:
        samples, audio_source = read_video_audio(video), "video"
    elif isinstance(audio, np.ndarray):
        samples, audio_source = np.asarray(audio, np.float32), "array"
    else:
        samples, audio_source = load_audio(audio).samples, str(audio)
    if samples is not None and len(samples) == 0:
        samples = None
    envelope = np.full(n_frames, np.nan)
    speech = np.zeros(n_frames, bool)
    silence = np.zeros(n_frames, bool)
    audio_info: dict[str, Any] = {"source": audio_source, "duration_s": None, "speech_s": None}
    if samples is not None:
        envelope = audio_envelope_db(samples, AUDIO_RATE_HZ, fps, n_frames)
        regions = speech_regions(samples, AUDIO_RATE_HZ)
        speech, silence = speech_and_silence_frames(envelope, regions, fps)
        audio_info.update(duration_s=len(samples) / AUDIO_RATE_HZ, speech_s=sum(b - a for a, b in regions),
                          pause_s=float(silence.sum() / fps))
        lipsync = lipsync_metrics(mouth, envelope, speech, fps, max_lag, silence_mask=silence)
    else:
        lipsync = lipsync_metrics(mouth, envelope, None, fps, max_lag)
        lipsync["note"] = "no audio: give --audio, or a video with an audio track"

    # Identity: descriptors of the sampled closed-mouth frames against the portrait.
    ident_frames: list[int] = []
    ident_dist: list[float] = []
    for idx, chip in sampler.chosen(identity_frames):
        ident_frames.append(idx)
        ident_dist.append(descriptor_distance(landmarker.descriptor_of_chip(chip), portrait_descriptor))
    identity = {
        "mean": float(np.mean(ident_dist)) if ident_dist else None,
        "max": float(np.max(ident_dist)) if ident_dist else None,
        "min": float(np.min(ident_dist)) if ident_dist else None,
        "frames_used": len(ident_dist),
        "same_person_below": SAME_PERSON_DISTANCE,
        "portrait_open": portrait_open,
        "frames_open_median": float(np.median(mouth[ident_frames])) if ident_frames else None,
    }

    if joins is None and joins_every_frames is not None:
        joins = joins_every(joins_every_frames, n_frames)
    join_list = sorted({int(j) for j in (joins or []) if 0 < int(j) < n_frames})
    seams = seam_metrics(np.array(change), join_list, motion)

    elapsed = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "video": {"path": str(video), "width": width, "height": height, "fps": fps, "n_frames": n_frames,
                  "duration_s": n_frames / fps, "face_frames": int(face.sum()),
                  "face_fraction": float(face.mean()), "detections": tracker.detections},
        "audio": audio_info,
        "lipsync": lipsync,
        "identity": identity,
        "seams": seams,
        "jitter": jitter_metrics(lms),
        "pose": {"yaw_deg": _summary(pose[:, 0]), "pitch_deg": _summary(pose[:, 1]), "roll_deg": _summary(pose[:, 2])},
        "brows": _summary(brows),
        "timing": {"seconds": elapsed, "frames_per_s": n_frames / max(elapsed, 1e-9)},
    }
    series = {
        "mouth_open": mouth,
        "envelope_db": envelope,
        "speech": speech.astype(np.int8),
        "silence": silence.astype(np.int8),
        "yaw_deg": pose[:, 0],
        "pitch_deg": pose[:, 1],
        "roll_deg": pose[:, 2],
        "brow_height": brows,
        "frame_change": np.array(change),
        "landmark_motion": motion,
        "inter_ocular_px": iod,
    }
    log.info("evaluated %d frames in %.1f s (%d detections)", n_frames, elapsed, tracker.detections)
    return Evaluation(metrics=metrics, series=series, identity_frames=ident_frames, identity_distances=ident_dist,
                      joins=join_list)


# --------------------------------------------------------------------------------------------------------------
# Report


def write_report(evaluation: Evaluation, path: str | Path) -> None:
    """A PNG with the mouth opening against the audio envelope, correlation against lag, head pose and brow traces,
    frame change with the joins marked, and the identity distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, s = evaluation.metrics, evaluation.series
    fps = m["video"]["fps"]
    t = np.arange(m["video"]["n_frames"]) / fps
    fig, axes = plt.subplots(3, 2, figsize=(13, 10))
    fig.suptitle(f"avatarcast eval: {Path(m['video']['path']).name}")

    ax = axes[0, 0]
    speech = s["speech"].astype(bool)
    if speech.any():
        ax.fill_between(t, 0, 1, where=speech, transform=ax.get_xaxis_transform(), color="0.9", label="speech (VAD)")
    ax.plot(t, s["mouth_open"], color="tab:red", label="mouth opening (inner lips / IOD)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mouth opening")
    ax2 = ax.twinx()
    ax2.plot(t, s["envelope_db"], color="tab:blue", alpha=0.6, label="audio envelope (dB)")
    ax2.set_ylabel("audio RMS (dB)")
    ls = m["lipsync"]
    corr = ls["correlation"]
    ax.set_title(f"lip sync: r={corr if corr is None else round(corr, 3)}, best lag {ls['best_lag_frames']} frames")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)

    ax = axes[0, 1]
    lags = sorted(int(k) for k in ls["correlation_by_lag"])
    vals = [ls["correlation_by_lag"][str(k)] for k in lags]
    ax.bar(lags, [np.nan if v is None else v for v in vals], color="tab:purple")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("lag (frames, + = video late)")
    ax.set_ylabel("correlation")
    ax.set_title("correlation vs lag")

    ax = axes[1, 0]
    for key, color in (("pitch_deg", "tab:green"), ("yaw_deg", "tab:orange"), ("roll_deg", "tab:gray")):
        ax.plot(t, s[key], color=color, label=key.replace("_deg", ""))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("head pose (degrees)")
    ax.set_title("head pose (+pitch = nod down)")
    ax.legend(loc="upper left", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(t, s["brow_height"], color="tab:brown", ls="--", label="brow height")
    ax2.set_ylabel("brow height / IOD")
    ax2.legend(loc="upper right", fontsize=8)

    ax = axes[1, 1]
    ax.plot(t, s["frame_change"], color="tab:blue", lw=0.8, label="face-box change")
    for j in evaluation.joins:
        ax.axvline(j / fps, color="tab:red", lw=0.6, alpha=0.5)
    sm = m["seams"]
    ratio = sm["ratio"]
    ax.set_title(f"seams: {sm['joins']} joins, max/median ratio {ratio if ratio is None else round(ratio, 2)}")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean |frame diff| (levels)")

    ax = axes[2, 0]
    if evaluation.identity_frames:
        ax.plot(np.array(evaluation.identity_frames) / fps, evaluation.identity_distances, "o-", color="tab:green")
    ax.axhline(SAME_PERSON_DISTANCE, color="tab:red", ls="--", lw=0.8, label="same-person threshold")
    ax.set_ylim(0, max(1.0, max(evaluation.identity_distances, default=0) * 1.1))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("descriptor distance to portrait")
    ax.set_title("identity (closed-mouth frames)")
    ax.legend(fontsize=8)

    ax = axes[2, 1]
    ax.axis("off")
    jit = m["jitter"]
    lines = [
        f"frames: {m['video']['n_frames']} at {fps:.2f} fps, face in {100 * m['video']['face_fraction']:.1f}%",
        f"lip sync r(lag 0): {_fmt(ls['correlation'])}, best lag {ls['best_lag_frames']} "
        f"(r={_fmt(ls['best_lag_correlation'])})",
        f"mouth open: speech {_fmt(ls['open_speech'])}, silence {_fmt(ls['open_silence'])}, "
        f"ratio {_fmt(ls['silence_ratio'])}",
        f"identity: mean {_fmt(m['identity']['mean'])}, max {_fmt(m['identity']['max'])} "
        f"({m['identity']['frames_used']} frames)",
        f"seams: ratio {_fmt(sm['ratio'])}, landmark ratio {_fmt(sm['landmark_ratio'])}",
        f"jitter (px): still {_fmt(jit['still_px'])}, eyes {_fmt(jit['eye_corners_px'])}, "
        f"outline {_fmt(jit['outline_px'])}",
    ]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=80)
    plt.close(fig)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
