"""A scheduler sink for tests that compare what the server emitted with what a receiver got."""

from __future__ import annotations

import numpy as np


def thumb(rgb: np.ndarray) -> np.ndarray:
    """An 8x-downscaled grey thumbnail: enough to tell frames apart after lossy coding."""
    g = rgb.astype(np.float32).mean(axis=2)
    h, w = g.shape
    return g[: h // 8 * 8, : w // 8 * 8].reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))


class Recorder:
    """A scheduler sink that keeps what the server emitted: thumbnails by video pts, audio (float) by sample pts."""

    def __init__(self) -> None:
        self.video: list[tuple[int, np.ndarray]] = []
        self.audio: list[tuple[int, np.ndarray]] = []

    def on_video(self, frame) -> None:
        self.video.append((frame.pts, thumb(frame.to_ndarray(format="rgb24"))))

    def on_audio(self, frame) -> None:
        self.audio.append((frame.pts, frame.to_ndarray().reshape(-1).astype(np.float32) / 32768.0))
