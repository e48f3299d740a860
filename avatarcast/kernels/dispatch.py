"""One attention entry point that picks the fastest backend able to compute exactly the requested pattern.

``attention(q, k, v, spec=..., key_padding_mask=..., backend="auto")`` takes ``(batch, heads, length, head_dim)``
tensors (the SDPA layout) and returns ``(batch, heads, q_length, head_dim)`` in ``q``'s dtype. Every backend has the
same semantics (``masks`` module doc): frame-block sparsity with anchors, key padding, a configurable scale, and
zeros for query rows that see no key.

Backends (``backend=``):

- ``"triton"``: the block-skipping kernel in ``flash_attention``. On CUDA tensors; on CPU tensors only under
  ``TRITON_INTERPRET=1`` (the Triton interpreter, for tests). Needs key padding as lengths (a prefix mask).
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (CUDA only; xformers has no CPU operator). Dense
  attention goes without a bias; sparse patterns and padding go as an additive bias tensor (full work).
- ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``, with the equivalent explicit boolean mask when
  the pattern is sparse or padded (full work). Works everywhere.
- ``"auto"`` (default): Triton on CUDA when triton is installed and the head dim is supported; else xformers on CUDA
  when installed and the pattern is dense without padding; else SDPA.

Key padding: ``key_padding_mask`` is either a bool ``(batch, k_length)`` tensor, True where the key is valid (the
SDPA convention: True takes part), or an integer ``(batch,)`` tensor of valid key counts.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Callable

from avatarcast.core.errors import InputError, InvalidValueError, MissingDependencyError
from avatarcast.kernels.masks import FrameBlockSpec, dense_mask

if TYPE_CHECKING:  # pragma: no cover
    import torch

BACKENDS = ("auto", "triton", "xformers", "sdpa")
TRITON_DTYPE_NAMES = ("float16", "bfloat16", "float32")
TRITON_MAX_HEAD_DIM = 256

_call_hooks: list[Callable[[str], None]] = []


def add_call_hook(hook: Callable[[str], None]) -> Callable[[], None]:
    """Call ``hook(backend_name)`` on every ``attention`` call (for counters and profilers); returns a remover."""
    _call_hooks.append(hook)

    def remove() -> None:
        if hook in _call_hooks:
            _call_hooks.remove(hook)

    return remove


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _require_torch() -> None:
    if not _has_module("torch"):
        raise MissingDependencyError(
            "attention needs PyTorch, which is not installed: install the GPU extra "
            "(pip install torch==2.13.0 first, then pip install 'avatarcast[gpu]')")


def _interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _dtype_name(t: "torch.Tensor") -> str:
    return str(t.dtype).split(".")[-1]


def _normalise_padding(key_padding_mask: "torch.Tensor | None", batch: int, lk: int
                       ) -> tuple["torch.Tensor | None", "torch.Tensor | None"]:
    """``(bool_mask (B, Lk) or None, lengths (B,) or None)``; lengths only when the mask is a prefix of valid keys."""
    import torch

    if key_padding_mask is None:
        return None, None
    kpm = key_padding_mask
    if kpm.dtype == torch.bool:
        if kpm.shape != (batch, lk):
            raise InvalidValueError(f"key_padding_mask must have shape ({batch}, {lk}), got {tuple(kpm.shape)}")
        lengths = kpm.sum(dim=-1)
        prefix = torch.arange(lk, device=kpm.device)[None, :] < lengths[:, None]
        return kpm, (lengths if bool(torch.equal(prefix, kpm)) else None)
    if kpm.dtype.is_floating_point or kpm.ndim != 1 or kpm.shape[0] != batch:
        raise InvalidValueError("key_padding_mask must be a bool (batch, k_length) mask (True = valid key) or an "
                                f"integer (batch,) tensor of valid key counts; got {kpm.dtype} {tuple(kpm.shape)}")
    lengths = kpm.clamp(0, lk)
    mask = torch.arange(lk, device=kpm.device)[None, :] < lengths.to(kpm.device)[:, None]
    return mask, lengths


def _explicit_mask(spec: FrameBlockSpec | None, pad_mask: "torch.Tensor | None", batch: int, lq: int, lk: int,
                   device: "torch.device") -> "torch.Tensor | None":
    """Bool ``(B or 1, 1, Lq, Lk)``: the pattern and the padding as one mask (None when everything is visible)."""
    sparse = spec is not None and not spec.is_dense
    if not sparse and pad_mask is None:
        return None
    mask = dense_mask(spec if sparse else None, lq, lk, device=device)  # (1, 1, Lq, Lk)
    if pad_mask is not None:
        mask = mask & pad_mask.to(device)[:, None, None, :]
    return mask


def _zero_empty_rows(out: "torch.Tensor", mask: "torch.Tensor | None") -> "torch.Tensor":
    if mask is None:
        return out
    has_key = mask.any(dim=-1, keepdim=True)  # (B or 1, 1, Lq, 1)
    if bool(has_key.all()):
        return out
    return out.masked_fill(~has_key, 0.0)


def _sdpa(q, k, v, spec, pad_mask, scale):
    import torch.nn.functional as F

    mask = _explicit_mask(spec, pad_mask, q.shape[0], q.shape[2], k.shape[2], q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return _zero_empty_rows(out, mask)


def _xformers(q, k, v, spec, pad_mask, scale):
    import torch
    import xformers.ops as xops

    b, h, lq, _ = q.shape
    lk = k.shape[2]
    mask = _explicit_mask(spec, pad_mask, b, lq, lk, q.device)
    bias = None
    if mask is not None:
        # xformers wants the bias's last dim allocated to a multiple of 8: allocate padded, then slice.
        padded = -(-lk // 8) * 8
        storage = torch.full((b, h, lq, padded), float("-inf"), dtype=q.dtype, device=q.device)
        bias = storage[..., :lk]
        bias.masked_fill_(mask.expand(b, h, lq, lk), 0.0)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_bias=bias, scale=scale).transpose(1, 2)
    out = torch.nan_to_num(out, nan=0.0)
    return _zero_empty_rows(out, mask)


def _triton(q, k, v, spec, lengths, scale):
    from avatarcast.kernels.flash_attention import flash_attention

    return flash_attention(q, k, v, spec=spec, kv_lengths=lengths, scale=scale)


def triton_unavailable_reason(q: "torch.Tensor") -> str | None:
    """Why the Triton kernel cannot run these inputs, or None when it can."""
    if not _has_module("triton"):
        return "triton is not installed (pip install 'avatarcast[gpu]')"
    if not q.is_cuda and not (q.device.type == "cpu" and _interpreter_enabled()):
        return (f"the Triton kernel runs on CUDA tensors, or on CPU tensors only under the Triton interpreter "
                f"(set TRITON_INTERPRET=1 before starting Python); got a {q.device.type} tensor")
    if _dtype_name(q) not in TRITON_DTYPE_NAMES:
        return f"the Triton kernel supports float16, bfloat16 and float32, not {q.dtype}"
    if q.shape[-1] > TRITON_MAX_HEAD_DIM:
        return f"the Triton kernel supports head dims up to {TRITON_MAX_HEAD_DIM}, not {q.shape[-1]}"
    return None


def xformers_unavailable_reason(q: "torch.Tensor") -> str | None:
    if not q.is_cuda:
        return "xformers has no CPU operator: it needs CUDA tensors"
    if not _has_module("xformers"):
        return "xformers is not installed (pip install 'avatarcast[gpu]')"
    return None


def select_backend(q: "torch.Tensor", spec: FrameBlockSpec | None = None, padded: bool = False,
                   prefix_padding: bool = True) -> str:
    """The backend ``backend="auto"`` picks for these inputs."""
    if q.is_cuda:
        if triton_unavailable_reason(q) is None and prefix_padding:
            return "triton"
        dense = spec is None or spec.is_dense
        if xformers_unavailable_reason(q) is None and dense and not padded:
            return "xformers"
    return "sdpa"


def attention(
    q: "torch.Tensor",
    k: "torch.Tensor",
    v: "torch.Tensor",
    *,
    spec: FrameBlockSpec | None = None,
    key_padding_mask: "torch.Tensor | None" = None,
    scale: float | None = None,
    backend: str = "auto",
) -> "torch.Tensor":
    """Attention over ``(B, H, L, D)`` tensors with the frame-block pattern ``spec`` (None = dense).

    ``scale`` defaults to ``1/sqrt(head_dim)``. Query rows that see no key return zeros. ``backend`` forces
    ``"triton"``, ``"xformers"`` or ``"sdpa"``; an explicit backend that cannot run these inputs raises (it never
    falls back silently, so tests and benchmarks measure what they name).
    """
    _require_torch()
    if backend not in BACKENDS:
        raise InputError(f"unknown attention backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise InvalidValueError(f"attention expects (batch, heads, length, head_dim) tensors, got q {tuple(q.shape)}, "
                                f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    batch, lk = q.shape[0], k.shape[2]
    pad_mask, lengths = _normalise_padding(key_padding_mask, batch, lk)
    padded = pad_mask is not None
    prefix = (not padded) or lengths is not None

    name = select_backend(q, spec, padded, prefix) if backend == "auto" else backend
    if name == "triton":
        reason = triton_unavailable_reason(q)
        if reason is None and not prefix:
            reason = "the Triton kernel takes key padding as lengths: the key_padding_mask is not a prefix mask"
        if reason is not None:
            raise MissingDependencyError(f"backend 'triton' cannot run: {reason}")
    elif name == "xformers":
        reason = xformers_unavailable_reason(q)
        if reason is not None:
            raise MissingDependencyError(f"backend 'xformers' cannot run: {reason}")

    for hook in list(_call_hooks):
        hook(name)
    if name == "triton":
        return _triton(q, k, v, spec, lengths, scale)
    if name == "xformers":
        return _xformers(q, k, v, spec, pad_mask, scale)
    return _sdpa(q, k, v, spec, pad_mask, scale)
