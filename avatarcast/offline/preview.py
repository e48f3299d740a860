"""The blueprint preview video: the keyframes drawn cheaply at low resolution and frame rate, with the audio (the
cascade writes it beside its output when asked). Drawing the frames is the blueprint's (``preview_frames``); writing
them is encoding's."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from avatarcast.blueprint import PREVIEW_FPS, Blueprint, preview_frames
from avatarcast.core.types import AUDIO_RATE_HZ, AvatarState
from avatarcast.offline.encoding import VideoEncoding, write_video


def write_preview(path: str | Path, blueprint: Blueprint, render_state: Callable[[AvatarState, int], np.ndarray],
                  size: tuple[int, int], mouth: np.ndarray, audio: np.ndarray | None = None,
                  audio_rate_hz: int = AUDIO_RATE_HZ, preview_fps: float = PREVIEW_FPS) -> int:
    """Write the blueprint preview video (low resolution, low fps, with the audio) to ``path``.

    ``render_state(state, frame_index)`` draws one frame of ``size`` (a cheap generator at low resolution).
    """
    frames = preview_frames(blueprint, render_state, mouth, preview_fps)
    return write_video(path, frames, size, preview_fps, audio=audio, audio_rate_hz=audio_rate_hz,
                       encoding=VideoEncoding(preset="veryfast", crf=26))
