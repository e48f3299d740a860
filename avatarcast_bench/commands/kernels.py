"""Benchmark: attention kernel throughput on a CUDA GPU.

Times the frame-block-sparse Triton kernel (autotuned) against PyTorch SDPA on the dense problem, SDPA with the
equivalent explicit mask (same answer, full work), the Triton kernel on the dense problem, and xformers when
installed, over sequence lengths typical of 480p/720p video latents. The pattern is the streaming generator's:
frames of --tokens-per-frame tokens, a window of --window-before/--window-after frames, and --anchor-frames frames
of anchor tokens (reference identity, keyframes) that everyone sees.

TFLOP/s count useful work only: 4 * head_dim * (visible query-key pairs) per head, so the sparse runs are credited
with the unmasked pairs and the dense runs with all pairs. The block sparsity is the fraction of (query block, key
block) tiles the kernel skips, for the block sizes the autotuner picked. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from avatarcast.core.errors import InputError, MissingDependencyError
from avatarcast.kernels.dispatch import _has_module, attention
from avatarcast.kernels.masks import FrameBlockSpec, block_counts, dense_mask, visible_pairs

log = logging.getLogger(__name__)

DEFAULT_SEQ_LENS = (8192, 16384, 32768)
DEFAULT_TOKENS_PER_FRAME = 1560  # Wan 480p (832x480): 104x60 latent, 2x2 patches -> 52x30 tokens per latent frame
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-lens", type=int, nargs="+", default=list(DEFAULT_SEQ_LENS), metavar="N",
                   help="sequence lengths in tokens (480p Wan, 81 frames: ~32.8k; 720p: ~75.6k)")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension")
    p.add_argument("--heads", type=int, default=16, help="attention heads")
    p.add_argument("--batch", type=int, default=1, help="batch size")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="input dtype")
    p.add_argument("--tokens-per-frame", type=int, default=DEFAULT_TOKENS_PER_FRAME,
                   help="tokens per latent frame (480p Wan: 1560; 720p: 3600)")
    p.add_argument("--window-before", type=int, default=1, help="frames before the query's frame it sees")
    p.add_argument("--window-after", type=int, default=1, help="frames after the query's frame it sees")
    p.add_argument("--anchor-frames", type=int, default=1,
                   help="frames of anchor tokens at the start of the sequence, visible to every query")
    p.add_argument("--anchors-local", action="store_true",
                   help="anchor queries see only the anchors (default: anchors attend to everything)")
    p.add_argument("--warmup-ms", type=int, default=100, help="warm-up time per measurement")
    p.add_argument("--rep-ms", type=int, default=500, help="measured time per measurement")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")


def _require_cuda():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "bench kernels needs PyTorch and a CUDA GPU: install the GPU extra (torch==2.13.0 with CUDA, then "
            "pip install 'avatarcast[gpu]') on a machine with an NVIDIA GPU") from None
    if not torch.cuda.is_available():
        raise MissingDependencyError(
            "bench kernels needs a CUDA GPU, and none is available here (torch.cuda.is_available() is False, "
            f"torch {torch.__version__}); run it on a machine with an NVIDIA GPU and a CUDA build of torch")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise MissingDependencyError("bench kernels needs triton: pip install 'avatarcast[gpu]'") from None
    return torch


def _bench_ms(fn, warmup_ms: int, rep_ms: int) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def run(args: argparse.Namespace) -> int:
    if args.head_dim < 16 or args.head_dim > 256:
        raise InputError(f"--head-dim must be in [16, 256], got {args.head_dim}")
    if any(n < 1 for n in args.seq_lens):
        raise InputError("--seq-lens must be positive")
    torch = _require_cuda()
    import torch.nn.functional as F

    from avatarcast.kernels import flash_attention as fa

    dtype = getattr(torch, DTYPES[args.dtype])
    device = torch.device("cuda")
    spec = FrameBlockSpec(
        tokens_per_frame=args.tokens_per_frame, window_before=args.window_before, window_after=args.window_after,
        n_anchor=args.anchor_frames * args.tokens_per_frame, anchors_attend_all=not args.anchors_local)
    has_xformers = _has_module("xformers")
    b, h, d = args.batch, args.heads, args.head_dim
    conditions = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "dtype": args.dtype,
        "batch": b, "heads": h, "head_dim": d, "spec": spec.__dict__,
    }
    print(f"bench kernels on {conditions['device']}: B={b} H={h} D={d} {args.dtype}, "
          f"{args.tokens_per_frame} tokens/frame, window [-{args.window_before}, +{args.window_after}] frames, "
          f"{args.anchor_frames} anchor frame(s) (timings: median, warm)")
    rows = []
    for n in args.seq_lens:
        torch.manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype) for _ in range(3))
        pairs_sparse = visible_pairs(spec, n, n)
        flops_sparse = 4.0 * d * pairs_sparse * b * h
        flops_dense = 4.0 * d * n * n * b * h
        row: dict = {"seq_len": n, "visible_fraction": pairs_sparse / (n * n)}

        # correctness on the GPU first: the kernel against SDPA with the explicit mask
        out_triton = attention(q, k, v, spec=spec, backend="triton")
        tile = fa.last_config()
        visited, total = block_counts(spec, n, n, tile["BLOCK_M"], tile["BLOCK_N"])
        row.update(block_m=tile["BLOCK_M"], block_n=tile["BLOCK_N"], block_sparsity=1.0 - visited / total)
        mask = dense_mask(spec, n, n, device=device)
        out_masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        row["max_abs_err_vs_masked_sdpa"] = float((out_triton.float() - out_masked.float()).abs().max())
        del out_triton, out_masked

        timings = {
            "triton_sparse": (lambda: attention(q, k, v, spec=spec, backend="triton"), flops_sparse),
            "sdpa_masked": (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), flops_sparse),
            "sdpa_dense": (lambda: F.scaled_dot_product_attention(q, k, v), flops_dense),
            "triton_dense": (lambda: attention(q, k, v, backend="triton"), flops_dense),
        }
        if has_xformers:
            timings["xformers_dense"] = (lambda: attention(q, k, v, backend="xformers"), flops_dense)
        for name, (fn, flops) in timings.items():
            try:
                ms = _bench_ms(fn, args.warmup_ms, args.rep_ms)
            except (RuntimeError, MissingDependencyError) as exc:  # e.g. out of memory for a masked SDPA
                log.warning("%s at %d tokens failed: %s", name, n, exc)
                row[f"{name}_ms"] = None
                continue
            row[f"{name}_ms"] = ms
            row[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12
        base = row.get("triton_sparse_ms")
        for other in ("sdpa_masked", "sdpa_dense", "xformers_dense"):
            if base and row.get(f"{other}_ms"):
                row[f"speedup_vs_{other}"] = row[f"{other}_ms"] / base
        rows.append(row)
        del q, k, v, mask
        torch.cuda.empty_cache()
        _print_row(row)

    if args.json:
        Path(args.json).write_text(json.dumps({"conditions": conditions, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _print_row(row: dict) -> None:
    print(f"  L={row['seq_len']:>6}: visible {row['visible_fraction']:.1%}, block sparsity "
          f"{row['block_sparsity']:.1%} ({row['block_m']}x{row['block_n']} tiles), "
          f"max|err| {row['max_abs_err_vs_masked_sdpa']:.2e}")
    for name in ("triton_sparse", "sdpa_masked", "sdpa_dense", "triton_dense", "xformers_dense"):
        if f"{name}_ms" in row:
            print(f"    {name:<15} {_fmt(row.get(f'{name}_ms'), '.3f'):>9} ms "
                  f"{_fmt(row.get(f'{name}_tflops')):>7} TFLOP/s (useful)")
    print("    speedup of triton_sparse: " + ", ".join(
        f"{k[len('speedup_vs_'):]} x{v:.2f}" for k, v in row.items() if k.startswith("speedup_vs_")))
