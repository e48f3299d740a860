"""A Triton flash-attention forward kernel with frame-block sparsity, anchors and key padding.

The kernel computes ``softmax(scale * q @ k^T + mask) @ v`` for tensors laid out ``(batch, heads, length, head_dim)``
with the pattern of ``masks.FrameBlockSpec``. One program handles ``BLOCK_M`` query rows of one (batch, head) and
walks **only the key ranges those rows can see**, as given by ``masks.key_ranges``:

1. the anchor keys ``[0, min(n_anchor, kv_length))``;
2. the union of the rows' temporal windows, ``[window_start, window_end)`` (every key after the anchors when the
   block holds an anchor query that attends to everything).

Key blocks outside both ranges are never loaded or multiplied: the work is proportional to the visible area, not to
``length**2`` as with a masked SDPA. Inside a visited tile the exact per-element rule is applied (a window edge
rarely falls on a tile edge). Dense attention is the ``IS_DENSE`` specialisation: one range, no per-element rule.

Numerics: scores and the online softmax (running max, running sum, rescaled accumulator) are fp32 whatever the
input dtype; on a GPU ``tl.dot`` takes fp16/bf16 operands with fp32 accumulation (tensor cores), fp32 inputs use
IEEE fp32 products. Under ``TRITON_INTERPRET=1`` the operands are upcast to fp32 before ``tl.dot`` because the
interpreter's bf16 ``tl.dot`` is wrong. A query row that sees no key (everything padded) stores zeros: its running
sum stays 0 and the final division is guarded.

The kernel objects are built on first use, so ``TRITON_INTERPRET`` is read then (not at import), and importing this
module needs neither torch nor triton. Row reductions call ``tl.reduce`` with Triton's own max/sum combiners rather
than ``tl.max``/``tl.sum``: those helpers are themselves jit functions fixed at *triton's* import, so a process that
imported triton before setting ``TRITON_INTERPRET=1`` (diffusers, xformers and torch extensions import it) could not
run them in the interpreter; the combiners are recognised by identity in both modes and compile to the same code
(likewise ``tl.full`` instead of the jit helper ``tl.zeros``). On CUDA the launch is autotuned over a few block configurations; under the
interpreter a fixed configuration is used (block sizes can be forced for tests).
"""

import functools
import os
from typing import TYPE_CHECKING, Any

from avatarcast.core.errors import InvalidValueError
from avatarcast.kernels.masks import FrameBlockSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

try:  # the kernel refers to ``tl``; without triton the module still imports (dispatch reports what is missing)
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without the [gpu] extra
    class tl:  # type: ignore[no-redef]  # noqa: N801 - stands in for triton.language in the annotations
        constexpr = "constexpr"

SUPPORTED_DTYPE_NAMES = ("float16", "bfloat16", "float32")
MAX_HEAD_DIM = 256
INTERPRETER_BLOCK = 16  # block rows/cols under the interpreter: small so tests exercise many tiles and the skipping

_last_config: dict[str, int] = {}


def interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _attn_fwd(
    Q, K, V, Out, KVLen,
    qk_scale_log2,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, Lq, Lk, D,
    TOKENS_PER_FRAME, N_ANCHOR, WINDOW_BEFORE, WINDOW_AFTER,
    HAS_KVLEN: tl.constexpr, IS_DENSE: tl.constexpr, ANCHOR_ALL: tl.constexpr,
    UPCAST_DOT: tl.constexpr, FP32_INPUTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)

    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    o_base = Out + off_b * stride_ob + off_h * stride_oh

    m_start = pid_m * BLOCK_M
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row_ok = offs_m < Lq

    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    if HAS_KVLEN:
        kv_len = tl.minimum(tl.load(KVLen + off_b).to(tl.int32), Lk)
        kv_len = tl.maximum(kv_len, 0)
    else:
        kv_len = Lk

    # The key ranges this block of query rows can see (mirrors masks.key_ranges).
    m_end = tl.minimum(m_start + BLOCK_M, Lq)
    if IS_DENSE:
        anchor_end = 0
        win_lo = 0
        win_hi = kv_len
    else:
        anchor_end = tl.minimum(N_ANCHOR, kv_len)
        if m_start < N_ANCHOR:
            if ANCHOR_ALL:
                win_lo = anchor_end
                win_hi = kv_len
            else:
                first_row = tl.maximum(m_start, N_ANCHOR)
                f_lo = (first_row - N_ANCHOR) // TOKENS_PER_FRAME - WINDOW_BEFORE
                f_hi = (tl.maximum(m_end - 1, N_ANCHOR) - N_ANCHOR) // TOKENS_PER_FRAME + WINDOW_AFTER
                win_lo = tl.maximum(N_ANCHOR + tl.maximum(f_lo, 0) * TOKENS_PER_FRAME, anchor_end)
                win_hi = tl.minimum(N_ANCHOR + (f_hi + 1) * TOKENS_PER_FRAME, kv_len)
                if m_end <= N_ANCHOR:
                    win_hi = win_lo
        else:
            f_lo = (m_start - N_ANCHOR) // TOKENS_PER_FRAME - WINDOW_BEFORE
            f_hi = (m_end - 1 - N_ANCHOR) // TOKENS_PER_FRAME + WINDOW_AFTER
            win_lo = tl.maximum(N_ANCHOR + tl.maximum(f_lo, 0) * TOKENS_PER_FRAME, anchor_end)
            win_hi = tl.minimum(N_ANCHOR + (f_hi + 1) * TOKENS_PER_FRAME, kv_len)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)

    # Per-row quantities for the window rule (only used when not dense).
    row_is_anchor = offs_m < N_ANCHOR
    row_frame = tl.maximum(offs_m - N_ANCHOR, 0) // TOKENS_PER_FRAME

    # Range 1: anchor keys, visible to every query row.
    for start_n in range(0, anchor_end, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < anchor_end
        k = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if FP32_INPUTS:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * qk_scale_log2
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, tl.standard._elementwise_max))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)
        acc = acc * alpha[:, None]
        if UPCAST_DOT or FP32_INPUTS:
            if FP32_INPUTS:
                acc = tl.dot(p, v, acc, input_precision="ieee")
            else:
                acc = tl.dot(p, v, acc)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    # Range 2: the union of the rows' windows (or everything after the anchors, for anchor rows that see all).
    for start_n in range(win_lo, win_hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < win_hi
        k = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                    mask=col_ok[None, :] & d_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST_DOT:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        if FP32_INPUTS:
            s = tl.dot(q, k, input_precision="ieee")
        else:
            s = tl.dot(q, k)
        s = s * qk_scale_log2
        if IS_DENSE:
            visible = col_ok[None, :]
        else:
            col_frame = (tl.maximum(cols - N_ANCHOR, 0) // TOKENS_PER_FRAME)[None, :]
            in_window = (col_frame >= row_frame[:, None] - WINDOW_BEFORE) & (
                col_frame <= row_frame[:, None] + WINDOW_AFTER)
            if ANCHOR_ALL:
                row_rule = row_is_anchor[:, None] | in_window
            else:
                row_rule = (~row_is_anchor[:, None]) & in_window
            visible = col_ok[None, :] & row_rule
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, tl.standard._elementwise_max))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)
        acc = acc * alpha[:, None]
        if UPCAST_DOT or FP32_INPUTS:
            if FP32_INPUTS:
                acc = tl.dot(p, v, acc, input_precision="ieee")
            else:
                acc = tl.dot(p, v, acc)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    # Rows with no visible key keep l_i == 0 and acc == 0: they store zeros.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def _autotune_configs() -> list:
    import triton

    configs = []
    for block_m, block_n, warps, stages in (
        (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 4, 2), (128, 32, 4, 4),
    ):
        configs.append(triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages))
    return configs


def _prune_configs(configs: list, named_args: dict, **kwargs: Any) -> list:
    """Large head dims with 128x128 tiles spill registers: keep those tiles for head dims up to 64."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    kept = [c for c in configs if not (block_d > 64 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 128 * 64)]
    return kept or configs


_RUNTIME_INTS = ["H", "Lq", "Lk", "D", "TOKENS_PER_FRAME", "N_ANCHOR", "WINDOW_BEFORE", "WINDOW_AFTER"]


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """``(plain, autotuned)`` kernels; built lazily so that TRITON_INTERPRET is honoured when it is set."""
    import triton

    # Sizes and pattern parameters are plain runtime integers: no specialisation on value 1 (which would turn them
    # into constants and make the scalar branches of the range arithmetic disagree in type) and no recompilation
    # per sequence length.
    plain = triton.jit(_attn_fwd, do_not_specialize=_RUNTIME_INTS)
    if interpret:
        return plain, None
    tuned = triton.autotune(
        configs=_autotune_configs(),
        key=["Lq", "Lk", "BLOCK_D", "IS_DENSE", "ANCHOR_ALL", "FP32_INPUTS"],
        prune_configs_by={"early_config_prune": _prune_configs},
    )(triton.jit(_attn_fwd, do_not_specialize=_RUNTIME_INTS))
    return plain, tuned


def last_config() -> dict[str, int]:
    """The block sizes of the most recent launch (the autotuner's pick on CUDA): for block-sparsity figures."""
    return dict(_last_config)


def flash_attention(
    q: "torch.Tensor",
    k: "torch.Tensor",
    v: "torch.Tensor",
    *,
    spec: FrameBlockSpec | None = None,
    kv_lengths: "torch.Tensor | None" = None,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> "torch.Tensor":
    """Run the kernel on ``(B, H, L, D)`` tensors; returns ``(B, H, Lq, D)`` in ``q``'s dtype.

    ``kv_lengths``: optional ``(B,)`` integer tensor of valid key counts (keys ``j >= kv_lengths[b]`` are padding).
    ``scale`` defaults to ``1 / sqrt(D)``. ``block_m``/``block_n`` force a configuration (skips autotuning).
    CPU tensors need ``TRITON_INTERPRET=1``; the caller (``dispatch.attention``) checks that and the dtypes.
    """
    import torch
    import triton

    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise InvalidValueError("flash_attention expects (batch, heads, length, head_dim) tensors")
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if k.shape[:2] != (b, h) or v.shape[:3] != k.shape[:3] or k.shape[3] != d or v.shape[3] != d:
        raise InvalidValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or str(q.dtype).split(".")[-1] not in SUPPORTED_DTYPE_NAMES:
        raise InvalidValueError(f"flash_attention supports float16, bfloat16 and float32 (all three the same), "
                                f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if d > MAX_HEAD_DIM:
        raise InvalidValueError(f"head_dim {d} > {MAX_HEAD_DIM} is not supported by the Triton kernel")

    interpret = interpreter_enabled()
    plain, tuned = _kernels(interpret)
    out = torch.empty((b, h, lq, d), dtype=q.dtype, device=q.device)
    if b * h * lq == 0:
        return out
    scale = float(scale) if scale is not None else d ** -0.5
    log2e = 1.4426950408889634

    spec_eff = spec if (spec is not None and not spec.is_dense) else None
    if spec_eff is None:
        t, a, wb, wa = 1, 0, 0, 0
    else:
        t, a = spec_eff.tokens_per_frame, spec_eff.n_anchor
        wb, wa = spec_eff.clamped_windows(max(lq, lk))
    has_kvlen = kv_lengths is not None
    kvlen_arg = (kv_lengths.to(device=q.device, dtype=torch.int32).contiguous() if has_kvlen
                 else torch.zeros(1, dtype=torch.int32, device=q.device))
    block_d = max(16, triton.next_power_of_2(d))
    args = (
        q, k, v, out, kvlen_arg, scale * log2e,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        h, lq, lk, d, t, a, wb, wa,
    )
    consts = dict(
        HAS_KVLEN=has_kvlen, IS_DENSE=spec_eff is None,
        ANCHOR_ALL=bool(spec_eff.anchors_attend_all) if spec_eff is not None else True,
        UPCAST_DOT=interpret, FP32_INPUTS=q.dtype == torch.float32, BLOCK_D=block_d,
    )
    if tuned is None or block_m is not None or block_n is not None:
        bm = block_m or (INTERPRETER_BLOCK if interpret else 64)
        bn = block_n or (INTERPRETER_BLOCK if interpret else 64)
        grid = (triton.cdiv(lq, bm), b * h)
        plain[grid](*args, **consts, BLOCK_M=bm, BLOCK_N=bn)
        _last_config.clear()
        _last_config.update(BLOCK_M=bm, BLOCK_N=bn)
    else:
        def grid(meta: dict) -> tuple[int, int]:
            return (triton.cdiv(lq, meta["BLOCK_M"]), b * h)

        tuned[grid](*args, **consts)
        best = tuned.best_config
        _last_config.clear()
        _last_config.update(BLOCK_M=best.kwargs["BLOCK_M"], BLOCK_N=best.kwargs["BLOCK_N"],
                            num_warps=best.num_warps, num_stages=best.num_stages)
    return out
