"""The frame-block sparsity of a streaming video generator's attention, and its equivalent dense mask.

A video latent is a sequence of tokens grouped in frames. The attention a streaming generator needs is local in time
plus a few global tokens:

- the first ``n_anchor`` tokens are **anchors** (reference-identity tokens, keyframe tokens); every query sees them;
- the remaining tokens form frames of ``tokens_per_frame`` tokens each: token ``j >= n_anchor`` belongs to frame
  ``(j - n_anchor) // tokens_per_frame`` (the last frame may be partial);
- a non-anchor query of frame ``f`` sees the keys of frames ``[f - window_before, f + window_after]`` (``None`` means
  unbounded on that side) plus every anchor key;
- an anchor query sees every key when ``anchors_attend_all`` is true (global tokens, as in BigBird/Longformer: the
  reference keeps up with the whole clip), or only the anchor keys when it is false (the reference stays fixed, and
  a stream can reuse its keys and values unchanged);
- key padding: per batch element, only keys ``j < kv_length[b]`` exist.

Dense attention is the special case ``n_anchor=0`` with both windows unbounded (``FrameBlockSpec.dense()``).

A query row that sees no key at all (all of its keys are padding) produces **zeros**, in every backend. This is
what a streaming generator wants for empty slots (no NaN propagating into the next layer), and it is the same value
a flash kernel's online softmax reaches when its normaliser stays zero.

This module is pure Python + numpy for the rules, with torch used only inside the functions that build tensors.
``visible_numpy`` is the definition; the kernel, ``dense_mask`` and ``key_ranges`` must agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from avatarcast.core.errors import InvalidValueError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class FrameBlockSpec:
    """Frame-block sparsity: temporal window of frames plus always-visible anchor tokens (see the module doc)."""

    tokens_per_frame: int
    window_before: int | None = None
    window_after: int | None = None
    n_anchor: int = 0
    anchors_attend_all: bool = True

    def __post_init__(self) -> None:
        if self.tokens_per_frame < 1:
            raise InvalidValueError(f"tokens_per_frame must be >= 1, got {self.tokens_per_frame}")
        if self.n_anchor < 0:
            raise InvalidValueError(f"n_anchor must be >= 0, got {self.n_anchor}")
        for name in ("window_before", "window_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidValueError(f"{name} must be >= 0 or None (unbounded), got {value}")

    @classmethod
    def dense(cls) -> "FrameBlockSpec":
        """Every query sees every (non-padded) key."""
        return cls(tokens_per_frame=1)

    @property
    def is_dense(self) -> bool:
        return self.window_before is None and self.window_after is None and (
            self.n_anchor == 0 or self.anchors_attend_all
        )

    def frame_of(self, index: np.ndarray) -> np.ndarray:
        """Frame index of non-anchor tokens (anchors map to -1)."""
        index = np.asarray(index, dtype=np.int64)
        return np.where(index >= self.n_anchor, (index - self.n_anchor) // self.tokens_per_frame, -1)

    def clamped_windows(self, n_tokens: int) -> tuple[int, int]:
        """Window sizes as finite integers for sequences of at most ``n_tokens`` (queries and keys): an unbounded
        side becomes a frame count that covers every frame, so the kernel's integer arithmetic stays small."""
        n_frames = -(-max(n_tokens, 1) // self.tokens_per_frame) + 1
        wb = n_frames if self.window_before is None else min(self.window_before, n_frames)
        wa = n_frames if self.window_after is None else min(self.window_after, n_frames)
        return int(wb), int(wa)


def visible_numpy(spec: FrameBlockSpec | None, lq: int, lk: int, kv_length: int | None = None) -> np.ndarray:
    """The definition of the pattern: a boolean (lq, lk) array, True where query i sees key j."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    kv = lk if kv_length is None else int(kv_length)
    valid = j < kv
    if spec is None or spec.is_dense:
        return np.broadcast_to(valid, (lq, lk)).copy()
    anchor_key = j < spec.n_anchor
    anchor_query = i < spec.n_anchor
    fi, fj = spec.frame_of(i), spec.frame_of(j)
    in_window = np.ones((lq, lk), dtype=bool)
    if spec.window_before is not None:
        in_window &= fj >= fi - spec.window_before
    if spec.window_after is not None:
        in_window &= fj <= fi + spec.window_after
    query_rule = np.where(anchor_query, spec.anchors_attend_all, in_window)
    return valid & (anchor_key | query_rule)


def _lengths_list(kv_lengths: Sequence[int] | "torch.Tensor" | None, batch: int, lk: int) -> list[int]:
    if kv_lengths is None:
        return [lk] * batch
    values = [int(x) for x in (kv_lengths.tolist() if hasattr(kv_lengths, "tolist") else kv_lengths)]
    if len(values) != batch:
        raise InvalidValueError(f"expected {batch} key lengths, got {len(values)}")
    return [max(0, min(lk, v)) for v in values]


def dense_mask(
    spec: FrameBlockSpec | None,
    lq: int,
    lk: int,
    kv_lengths: Sequence[int] | "torch.Tensor" | None = None,
    batch: int = 1,
    device: "torch.device | str | None" = None,
) -> "torch.Tensor":
    """The equivalent explicit mask for SDPA: bool ``(batch, 1, lq, lk)``, True = the key takes part."""
    import torch

    lengths = _lengths_list(kv_lengths, batch, lk)
    masks = [torch.from_numpy(visible_numpy(spec, lq, lk, n)) for n in lengths]
    return torch.stack(masks).unsqueeze(1).to(device=device)


def key_ranges(spec: FrameBlockSpec | None, q_start: int, q_end: int, lk: int, kv_length: int | None = None
               ) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two key ranges the kernel visits for the query rows ``[q_start, q_end)``.

    Returns ``((0, anchor_end), (window_start, window_end))``: the anchor keys, then the union of the rows' windows
    (all keys after the anchors when the block holds an anchor row that attends to everything). Keys outside both
    ranges are never loaded. This mirrors the kernel's arithmetic exactly, so block-sparsity figures are the
    kernel's own.
    """
    kv = lk if kv_length is None else max(0, min(lk, int(kv_length)))
    if spec is None or spec.is_dense:
        return (0, 0), (0, kv)
    a = spec.n_anchor
    anchor_end = min(a, kv)
    if q_start < a:
        if spec.anchors_attend_all:
            return (0, anchor_end), (anchor_end, kv)
        if q_end <= a:
            return (0, anchor_end), (anchor_end, anchor_end)
    wb, wa = spec.clamped_windows(max(q_end, lk))
    t = spec.tokens_per_frame
    f_lo = (max(q_start, a) - a) // t - wb
    f_hi = (q_end - 1 - a) // t + wa
    start = max(a + max(f_lo, 0) * t, anchor_end)
    end = min(a + (f_hi + 1) * t, kv)
    return (0, anchor_end), (start, max(start, end))


def block_counts(spec: FrameBlockSpec | None, lq: int, lk: int, block_m: int, block_n: int,
                 kv_lengths: Sequence[int] | None = None) -> tuple[int, int]:
    """``(visited, total)`` key-block tiles over the query blocks, summed over ``kv_lengths`` (one per batch item).

    ``total`` is what a dense kernel visits (every key block of the padded sequence for every query block).
    """
    lengths = [lk] if kv_lengths is None else [int(x) for x in kv_lengths]
    visited = total = 0
    n_q_blocks = -(-lq // block_m)
    n_k_blocks = -(-lk // block_n)
    for kv in lengths:
        for qb in range(n_q_blocks):
            (a0, a1), (w0, w1) = key_ranges(spec, qb * block_m, min(lq, (qb + 1) * block_m), lk, kv)
            visited += -(-(a1 - a0) // block_n) + -(-(w1 - w0) // block_n)
            total += n_k_blocks
    return visited, total


def visible_pairs(spec: FrameBlockSpec | None, lq: int, lk: int, kv_length: int | None = None) -> int:
    """Number of (query, key) pairs that take part: the useful work, computed row by row without an lq x lk array."""
    kv = lk if kv_length is None else max(0, min(lk, int(kv_length)))
    if spec is None or spec.is_dense:
        return lq * kv
    a, t = spec.n_anchor, spec.tokens_per_frame
    anchor_keys = min(a, kv)
    i = np.arange(lq, dtype=np.int64)
    fi = np.maximum(i - a, 0) // t
    wb, wa = spec.clamped_windows(max(lq, lk))
    start = np.maximum(a + np.maximum(fi - wb, 0) * t, anchor_keys)
    end = np.minimum(a + (fi + wa + 1) * t, kv)
    window_keys = np.maximum(end - start, 0)
    anchor_rows = i < a
    anchor_row_keys = kv if spec.anchors_attend_all else anchor_keys
    counts = np.where(anchor_rows, anchor_row_keys, anchor_keys + window_keys)
    return int(counts.sum())
