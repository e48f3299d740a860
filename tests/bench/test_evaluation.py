"""The evaluator on videos whose truth is known: a real portrait whose mouth is opened by a known signal, moved
by known amounts, or jittered on purpose, encoded with a real H.264 encoder and measured back."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from avatarcast.core.errors import FaceError, InputError, MissingDependencyError
from avatarcast_bench import face_landmarks68 as fl68
from avatarcast_bench.evaluation import (
    audio_envelope_db,
    evaluate_video,
    joins_every,
    lag_correlations,
    lipsync_metrics,
    load_joins,
    seam_metrics,
    write_report,
)
from avatarcast_bench.face_landmarks68 import (
    FaceLandmarks68,
    descriptor_distance,
    head_pose_deg,
    shared_landmarker,
)

RATE_HZ = 16000
FPS = 25.0
SIZE_PX = 256
DURATION_S = 6.0
N_FRAMES = int(DURATION_S * FPS)
MAX_OPEN_PX = 14.0


# ---------------------------------------------------------------------------------------------------------------
# Synthetic videos from a real portrait


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS, audio: np.ndarray | None = None) -> Path:
    """H.264 (+ AAC mono at 16 kHz when audio is given), the way any renderer's output would be encoded."""
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
    video.width, video.height = frames[0].shape[1], frames[0].shape[0]
    video.pix_fmt = "yuv420p"
    video.options = {"crf": "18", "preset": "ultrafast"}
    sound = None
    if audio is not None:
        sound = container.add_stream("aac", rate=RATE_HZ)
        sound.layout = "mono"
    for frame in frames:
        for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if sound is not None:
        for start in range(0, len(audio), 1024):
            chunk = av.AudioFrame.from_ndarray(audio[start:start + 1024].reshape(1, -1).astype(np.float32),
                                               format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = RATE_HZ, start
            for packet in sound.encode(chunk):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    container.close()
    return path


def face_crop(image: np.ndarray, landmarker: FaceLandmarks68, size: int = SIZE_PX) -> np.ndarray:
    """A square head-and-shoulders crop around the largest face, scaled to ``size``."""
    box = landmarker.detect(image)[0]
    cx, cy = box.center
    half = box.width * 1.1
    x0, y0 = max(0, int(cx - half)), max(0, int(cy - half * 0.95))
    crop = image[y0:y0 + int(2 * half), x0:x0 + int(2 * half)]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


class MouthOpener:
    """Opens the portrait's mouth by ``d`` pixels: the lower lip and chin move down, the gap is the dark mouth."""

    def __init__(self, image: np.ndarray, landmarker: FaceLandmarks68) -> None:
        lm = landmarker.landmarks(image, landmarker.detect(image)[0])
        h, w = image.shape[:2]
        self.image = image
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.y_mid = float((lm[62, 1] + lm[66, 1]) / 2)
        cx, half = float((lm[48, 0] + lm[54, 0]) / 2), float((lm[54, 0] - lm[48, 0]) / 2)
        u = np.abs(self.xx - cx) / half
        wx = np.where(u < 1, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip((u - 1) / 0.8, 0, 1)))
        wx[u > 1.8] = 0
        chin = float(lm[8, 1])
        fade = 0.8 * (chin - self.y_mid)
        self.wy = np.where(self.yy < self.y_mid, 0.0,
                           np.where(self.yy < chin, 1.0, np.clip(1 - (self.yy - chin) / fade, 0, 1)))
        self.weight = (wx * self.wy).astype(np.float32)
        self.gap_profile = np.sqrt(np.clip(1 - ((self.xx - cx) / half) ** 2, 0, 1)) * self.wy

    def frame(self, d: float) -> np.ndarray:
        out = cv2.remap(self.image, self.xx, self.yy - d * self.weight, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)
        gap = (self.yy >= self.y_mid) & (self.yy < self.y_mid + d * self.gap_profile)
        out[gap] = (45, 18, 20)
        return out


def syllable_envelope(duration_s: float, seed: int) -> np.ndarray:
    """Speech-like loudness at the audio rate: bursts of 2-5 syllables (140-300 ms) separated by pauses."""
    rng = np.random.default_rng(seed)
    env = np.zeros(int(duration_s * RATE_HZ), np.float32)
    t = 0.3
    while t < duration_s - 0.4:
        for _ in range(int(rng.integers(2, 6))):
            dur, amp = rng.uniform(0.14, 0.3), rng.uniform(0.35, 1.0)
            a, b = int(t * RATE_HZ), min(len(env), int((t + dur) * RATE_HZ))
            if b <= a:
                break
            env[a:b] = np.maximum(env[a:b], amp * np.sin(np.pi * np.linspace(0, 1, b - a)) ** 1.5)
            t += dur + rng.uniform(0.02, 0.08)
        t += rng.uniform(0.35, 0.7)
    return env


def voiced(env: np.ndarray, seed: int) -> np.ndarray:
    """A harmonic voice (f0 ~125 Hz) whose loudness follows ``env``: webrtcvad hears it as speech."""
    rng = np.random.default_rng(seed + 1)
    t = np.arange(len(env)) / RATE_HZ
    phase = 2 * np.pi * np.cumsum(125 + 15 * np.sin(2 * np.pi * 0.7 * t)) / RATE_HZ
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    x = x / np.max(np.abs(x)) * 0.5 + 0.01 * rng.standard_normal(len(env))
    return (x * env + 0.0005 * rng.standard_normal(len(env))).astype(np.float32)


def per_frame(env: np.ndarray, n_frames: int = N_FRAMES, fps: float = FPS) -> np.ndarray:
    hop = RATE_HZ / fps
    return np.array([env[int(i * hop):int((i + 1) * hop)].mean() if int(i * hop) < len(env) else 0.0
                     for i in range(n_frames)])


def shuffled_blocks(samples: np.ndarray, block_s: float, seed: int) -> np.ndarray:
    block = int(block_s * RATE_HZ)
    n = len(samples) // block
    order = np.random.default_rng(seed).permutation(n)
    return np.concatenate([samples[k * block:(k + 1) * block] for k in order] + [samples[n * block:]])


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarks68:
    return shared_landmarker()


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def obama(portraits: Path) -> np.ndarray:
    return rgb(portraits / "obama.jpg")


@pytest.fixture(scope="module")
def obama_face(obama: np.ndarray, landmarker: FaceLandmarks68) -> np.ndarray:
    return face_crop(obama, landmarker)


@pytest.fixture(scope="module")
def speech_like() -> tuple[np.ndarray, np.ndarray]:
    env = syllable_envelope(DURATION_S, seed=0)
    return env, voiced(env, seed=0)


def talking_video(path: Path, face: np.ndarray, landmarker: FaceLandmarks68, openness_per_frame: np.ndarray,
                  audio: np.ndarray | None) -> Path:
    opener = MouthOpener(face, landmarker)
    return write_video(path, [opener.frame(MAX_OPEN_PX * d) for d in openness_per_frame], FPS, audio)


@pytest.fixture(scope="module")
def in_sync_video(tmp_path_factory, obama_face, landmarker, speech_like) -> Path:
    env, audio = speech_like
    path = tmp_path_factory.mktemp("sync") / "in_sync.mp4"
    return talking_video(path, obama_face, landmarker, per_frame(env), audio)


@pytest.fixture(scope="module")
def in_sync_eval(in_sync_video, obama):
    return evaluate_video(in_sync_video, obama, joins_every_frames=25)  # the video's own AAC track


# ---------------------------------------------------------------------------------------------------------------
# Lip sync


def test_in_sync_video_correlates_at_lag_zero(in_sync_eval):
    ev = in_sync_eval
    ls = ev.lipsync
    assert ev.metrics["audio"]["source"] == "video"
    assert ev.metrics["video"]["n_frames"] == N_FRAMES
    assert ls["best_lag_frames"] == 0
    assert ls["correlation"] > 0.7
    assert ls["correlation_in_speech"] > 0.6
    # mouth closes in the pauses: the silence median is the portrait's rest opening, well below speech
    assert ls["silence_frames"] > 10 and ls["speech_frames"] > 50
    assert ls["silence_ratio"] < 0.85
    assert ls["open_silence"] == pytest.approx(ev.identity["portrait_open"], abs=0.03)


@pytest.mark.parametrize("lag_frames", [2, -3])
def test_estimated_lag_equals_imposed_lag(tmp_path, obama, obama_face, landmarker, speech_like, lag_frames):
    env, audio = speech_like
    opening = per_frame(env)
    shifted = np.zeros_like(opening)
    if lag_frames > 0:  # video late: the mouth shows frame i - lag's sound at frame i
        shifted[lag_frames:] = opening[:-lag_frames]
    else:
        shifted[:lag_frames] = opening[-lag_frames:]
    video = talking_video(tmp_path / f"lag{lag_frames}.mp4", obama_face, landmarker, shifted, None)
    ls = evaluate_video(video, obama, audio).lipsync
    assert ls["best_lag_frames"] == lag_frames
    assert ls["best_lag_correlation"] > 0.7
    assert ls["correlation"] < ls["best_lag_correlation"] - 0.2


def test_shuffled_audio_destroys_the_correlation(in_sync_eval, in_sync_video, obama, speech_like):
    _, audio = speech_like
    true = in_sync_eval.lipsync
    shuffled = evaluate_video(in_sync_video, obama, shuffled_blocks(audio, 0.4, seed=5)).lipsync
    assert true["best_lag_correlation"] > 0.7
    assert max(abs(v) for v in shuffled["correlation_by_lag"].values()) < 0.35
    assert abs(shuffled["correlation_in_speech"]) < 0.35


def test_mouth_open_in_silence_is_reported(tmp_path, obama, obama_face, landmarker, speech_like):
    env, audio = speech_like
    wrong = 1.0 - per_frame(env) / per_frame(env).max()  # open in pauses, closed on loud syllables
    video = talking_video(tmp_path / "inverted.mp4", obama_face, landmarker, wrong, audio)
    ls = evaluate_video(video, obama).lipsync
    assert ls["silence_ratio"] > 1.1  # the rest opening (teeth in the smile) is in both medians
    assert ls["correlation"] < -0.3


def test_lag_convention_on_series():
    rng = np.random.default_rng(0)
    envelope = np.convolve(rng.standard_normal(200), np.ones(5) / 5, mode="same")
    mouth = np.roll(envelope, 3)  # the mouth follows the sound three frames later: video late
    mouth[:3] = np.nan
    by_lag = lag_correlations(mouth, envelope, 5)
    assert max(by_lag, key=lambda k: by_lag[k]) == 3
    assert by_lag[3] == pytest.approx(1.0)
    ls = lipsync_metrics(mouth, envelope, None, fps=25.0)
    assert ls["best_lag_frames"] == 3 and ls["best_lag_ms"] == 120.0


def test_envelope_is_framed_like_the_timeline():
    samples = np.zeros(RATE_HZ, np.float32)
    samples[640 * 10:640 * 11] = 0.5  # frame 10 at 25 fps = samples [6400, 7040)
    env = audio_envelope_db(samples, RATE_HZ, 25.0, 30)
    assert int(np.nanargmax(env)) == 10
    assert np.nanmax(env) - np.nanmin(env) == pytest.approx(50.0)
    assert np.isnan(env[25:]).all()  # past the end of the audio


# ---------------------------------------------------------------------------------------------------------------
# Identity


def test_identity_descriptor_same_and_different_people(portraits, obama, landmarker):
    def descriptors(image):
        return [landmarker.descriptor(image, landmarker.landmarks(image, box)) for box in landmarker.detect(image)]

    (ref,) = descriptors(obama)
    assert descriptor_distance(ref, descriptors(obama)[0]) < 1e-4
    two = rgb(portraits / "two_people.jpg")
    boxes = landmarker.detect(two)
    assert len(boxes) == 2
    dist = sorted(descriptor_distance(ref, d) for d in descriptors(two))
    # one of the two is the same man in another photograph, the other a different man
    assert dist[0] < 0.5
    assert dist[1] > 0.7
    assert descriptor_distance(ref, descriptors(rgb(portraits / "astronaut.png"))[0]) > 0.7


def test_identity_of_video_to_its_portrait_and_to_another(in_sync_eval, in_sync_video, portraits):
    own = in_sync_eval.identity
    other = evaluate_video(in_sync_video, portraits / "astronaut.png", identity_frames=8).identity
    assert own["frames_used"] == 20 and other["frames_used"] == 8
    assert own["max"] < 0.2
    assert other["mean"] > 0.7
    # the frames compared are the closed ones: their opening is the portrait's
    assert own["frames_open_median"] == pytest.approx(own["portrait_open"], abs=0.03)


# ---------------------------------------------------------------------------------------------------------------
# Seams, jitter, head pose, brows


def shifted(image: np.ndarray, dx: float, dy: float = 0.0, angle_deg: float = 0.0) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_seams_at_joins_stand_out_only_when_joins_jump(tmp_path, obama_face, obama):
    n, clip = 100, 25
    # a slow drift inside clips; every clip starts 5 px further right (a visible jump at each join)
    jumpy = [shifted(obama_face, 0.3 * (i % clip) + 5.0 * (i // clip)) for i in range(n)]
    smooth = [shifted(obama_face, 0.3 * i) for i in range(n)]
    ev_jumpy = evaluate_video(write_video(tmp_path / "jumpy.mp4", jumpy), obama, joins_every_frames=clip)
    ev_smooth = evaluate_video(write_video(tmp_path / "smooth.mp4", smooth), obama, joins_every_frames=clip)
    assert ev_jumpy.seams["joins"] == 3
    assert ev_jumpy.seams["ratio"] > 4.0
    assert ev_jumpy.seams["landmark_ratio"] > 4.0
    assert ev_smooth.seams["ratio"] < 2.0
    assert ev_smooth.seams["landmark_ratio"] < 2.5


def test_seam_ratio_from_series():
    change = np.r_[np.nan, np.ones(49)]
    change[[10, 20]] = 5.0
    s = seam_metrics(change, [10, 20, 30])
    assert s["joins"] == 3 and s["join_max"] == 5.0 and s["inside_median"] == 1.0 and s["ratio"] == 5.0
    assert seam_metrics(change, [])["ratio"] is None


def test_jitter_of_still_points(tmp_path, obama_face, obama, landmarker):
    n = 60
    steady = [shifted(obama_face, 0.2 * i) for i in range(n)]  # smooth rigid motion only
    lm = landmarker.landmarks(obama_face, landmarker.detect(obama_face)[0])
    eye = lm[36:42].mean(axis=0)
    h, w = obama_face.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bump = np.exp(-((xx - eye[0]) ** 2 + (yy - eye[1]) ** 2) / (2 * 14.0 ** 2)).astype(np.float32)
    rng = np.random.default_rng(1)
    shaky = []
    for frame in steady:  # the subject's right eye shimmers by up to 4 px, the rest moves smoothly
        dx, dy = rng.uniform(-4, 4, 2)
        shaky.append(cv2.remap(frame, (xx - dx * bump).astype(np.float32), (yy - dy * bump).astype(np.float32),
                               cv2.INTER_LINEAR))
    calm = evaluate_video(write_video(tmp_path / "steady.mp4", steady), obama).jitter
    jit = evaluate_video(write_video(tmp_path / "shaky.mp4", shaky), obama).jitter
    assert calm["still_px"] < 0.6
    assert jit["eye_corners_px"] > 2 * calm["eye_corners_px"] + 0.3
    assert jit["nose_px"] < 2 * calm["nose_px"] + 0.3  # the nose did not move: the fit removed the head motion


@pytest.mark.parametrize("yaw, pitch", [(15.0, 0.0), (0.0, 10.0), (-10.0, -8.0)])
def test_head_pose_conventions(yaw, pitch):
    # project the generic head at a known pose: the estimate must give it back, with AvatarState's signs
    turn = cv2.Rodrigues(np.array([0.0, -np.radians(yaw), 0.0]))[0]  # toward the viewer's right
    nod = cv2.Rodrigues(np.array([np.radians(pitch), 0.0, 0.0]))[0]  # chin down
    rotation = turn @ nod @ np.diag([1.0, -1.0, -1.0])
    camera = np.array([[640.0, 0, 320], [0, 640, 240], [0, 0, 1]])
    model = np.array([fl68.HEAD_MODEL_MM[i] for i in fl68.HEAD_MODEL_INDICES])
    # the estimator's camera looks at the face: put the head's centre on the optical axis
    tvec = np.array([0.0, 0.0, 600.0]) - rotation @ model.mean(axis=0)
    pts, _ = cv2.projectPoints(model, cv2.Rodrigues(rotation)[0], tvec, camera, None)
    landmarks = np.zeros((68, 2), np.float32)
    landmarks[fl68.HEAD_MODEL_INDICES] = pts[:, 0]
    (y, p, r), _ = head_pose_deg(landmarks, (640, 480))
    assert y == pytest.approx(yaw, abs=0.5) and p == pytest.approx(pitch, abs=0.5) and r == pytest.approx(0, abs=0.5)


def test_head_roll_and_brow_raise_are_visible(tmp_path, obama_face, obama, landmarker):
    n = 50
    roll = 8.0 * np.sin(2 * np.pi * np.arange(n) / n)
    # cv2 angles are counter-clockwise on screen: a clockwise tilt (AvatarState's + roll) is a negative angle
    frames = [shifted(obama_face, 0, 0, -a) for a in roll]
    ev = evaluate_video(write_video(tmp_path / "roll.mp4", frames), obama)
    measured = ev.series["roll_deg"] - np.nanmedian(ev.series["roll_deg"])
    assert np.corrcoef(measured, roll)[0, 1] > 0.95
    assert np.ptp(measured) == pytest.approx(np.ptp(roll), rel=0.2)

    lm = landmarker.landmarks(obama_face, landmarker.detect(obama_face)[0])
    brow_y = float(lm[17:27, 1].mean())
    h, w = obama_face.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    region = np.exp(-((yy - brow_y) ** 2) / (2 * 6.0 ** 2)).astype(np.float32)
    raise_px = np.r_[np.zeros(20), np.full(20, 5.0)]  # brows up 5 px for the second half
    frames = [cv2.remap(obama_face, xx, (yy + r * region).astype(np.float32), cv2.INTER_LINEAR) for r in raise_px]
    brows = evaluate_video(write_video(tmp_path / "brows.mp4", frames), obama).series["brow_height"]
    assert np.median(brows[25:]) > np.median(brows[:20]) + 0.02


# ---------------------------------------------------------------------------------------------------------------
# Inputs, outputs and errors


def test_no_face_in_video_is_a_face_error(tmp_path, obama):
    flags = [np.full((SIZE_PX, SIZE_PX, 3), (30 + i, 60, 120), np.uint8) for i in range(10)]
    with pytest.raises(FaceError, match="no face found"):
        evaluate_video(write_video(tmp_path / "noface.mp4", flags), obama)


def test_portrait_without_face_is_a_face_error(in_sync_video):
    with pytest.raises(FaceError, match="portrait"):
        evaluate_video(in_sync_video, np.full((300, 300, 3), 128, np.uint8))


def test_not_a_video_is_an_input_error(tmp_path, obama):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="cannot decode video"):
        evaluate_video(bad, obama)


def test_joins_files(tmp_path):
    good = tmp_path / "joins.json"
    good.write_text("[50, 25, 75]")
    assert load_joins(good) == [25, 50, 75]
    (tmp_path / "obj.json").write_text('{"joins": [10, 20]}')
    assert load_joins(tmp_path / "obj.json") == [10, 20]
    (tmp_path / "bad.json").write_text('["a"]')
    with pytest.raises(InputError, match="frame indices"):
        load_joins(tmp_path / "bad.json")
    with pytest.raises(InputError, match="not found"):
        load_joins(tmp_path / "missing.json")
    assert joins_every(25, 100) == [25, 50, 75]


def test_json_and_report(tmp_path, in_sync_eval):
    ev = in_sync_eval
    ev.write_json(tmp_path / "m.json", include_series=True)
    import json

    data = json.loads((tmp_path / "m.json").read_text())
    for key in ("correlation", "best_lag_frames", "open_speech", "open_silence", "silence_ratio"):
        assert key in data["lipsync"]
    assert {"mean", "max"} <= set(data["identity"]) and {"ratio", "joins"} <= set(data["seams"])
    assert {"still_px", "eye_corners_px"} <= set(data["jitter"])
    assert len(data["series"]["mouth_open"]) == N_FRAMES and len(data["series"]["pitch_deg"]) == N_FRAMES
    write_report(ev, tmp_path / "r.png")
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_missing_dlib_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(MissingDependencyError, match=r"avatarcast\[eval\]"):
        FaceLandmarks68()
