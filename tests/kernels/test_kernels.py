"""The attention kernels: the sparsity rule, the Triton kernel against SDPA with the explicit mask, and dispatch.

Without a GPU the Triton kernel runs under the Triton interpreter (TRITON_INTERPRET=1, set per test below; the
kernel objects are built on first use, so the variable only has to be set before the first launch). Shapes are tiny
because the interpreter is slow. On a CUDA machine the same cases run on the GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from avatarcast.kernels.masks import FrameBlockSpec, block_counts, key_ranges, visible_numpy, visible_pairs

torch = pytest.importorskip("torch", reason="the kernel tests need the [gpu] extra (torch is not installed)")
pytest.importorskip("triton", reason="the kernel tests need the [gpu] extra (triton is not installed)")

from avatarcast.core.errors import InputError, MissingDependencyError  # noqa: E402
from avatarcast.kernels import dispatch  # noqa: E402
from avatarcast.kernels.dispatch import attention  # noqa: E402
from avatarcast.kernels.masks import dense_mask  # noqa: E402

torch.set_num_threads(1)
ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    if not ON_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def brute_force_visible(spec: FrameBlockSpec | None, lq: int, lk: int, kv_length: int) -> np.ndarray:
    """The rule written out literally, one pair at a time (independent of masks.visible_numpy)."""
    out = np.zeros((lq, lk), dtype=bool)
    for i in range(lq):
        for j in range(lk):
            if j >= kv_length:
                continue
            if spec is None or spec.is_dense:
                out[i, j] = True
            elif j < spec.n_anchor:
                out[i, j] = True
            elif i < spec.n_anchor:
                out[i, j] = spec.anchors_attend_all
            else:
                fi = (i - spec.n_anchor) // spec.tokens_per_frame
                fj = (j - spec.n_anchor) // spec.tokens_per_frame
                lo_ok = spec.window_before is None or fj >= fi - spec.window_before
                hi_ok = spec.window_after is None or fj <= fi + spec.window_after
                out[i, j] = lo_ok and hi_ok
    return out


SPECS = [
    None,
    FrameBlockSpec(tokens_per_frame=8, window_before=1, window_after=1, n_anchor=8),
    FrameBlockSpec(tokens_per_frame=8, window_before=0, window_after=0, n_anchor=5, anchors_attend_all=False),
    FrameBlockSpec(tokens_per_frame=7, window_before=2, window_after=0, n_anchor=3),
    FrameBlockSpec(tokens_per_frame=5, window_before=None, window_after=1, n_anchor=0),
    FrameBlockSpec(tokens_per_frame=16, window_before=1, window_after=None, n_anchor=20, anchors_attend_all=False),
]


# ---------------------------------------------------------------- the rule and the kernel's ranges (no launches)

@pytest.mark.parametrize("spec", SPECS + [FrameBlockSpec(4, 0, 0, 64), FrameBlockSpec(3, 1, 1, 0)])
@pytest.mark.parametrize("lq,lk,kv", [(40, 40, 40), (33, 50, 29), (50, 33, 33), (24, 24, 1)])
def test_mask_rule_matches_brute_force_definition(spec, lq, lk, kv):
    assert np.array_equal(visible_numpy(spec, lq, lk, kv), brute_force_visible(spec, lq, lk, kv))
    assert visible_pairs(spec, lq, lk, kv) == int(brute_force_visible(spec, lq, lk, kv).sum())
    mask = dense_mask(spec, lq, lk, kv_lengths=[kv, lk], batch=2)
    assert mask.shape == (2, 1, lq, lk) and mask.dtype == torch.bool
    assert np.array_equal(mask[0, 0].numpy(), brute_force_visible(spec, lq, lk, kv))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("block_m", [16, 64])
def test_kernel_key_ranges_cover_every_visible_key_and_nothing_twice(spec, block_m):
    lq = lk = 150
    for kv in (150, 71, 0):
        vis = visible_numpy(spec, lq, lk, kv)
        for m0 in range(0, lq, block_m):
            m1 = min(lq, m0 + block_m)
            (a0, a1), (w0, w1) = key_ranges(spec, m0, m1, lk, kv)
            assert a0 == 0 and a1 <= w0 or w1 <= w0, "the two ranges overlap: a key would be counted twice"
            covered = np.zeros(lk, dtype=bool)
            covered[a0:a1] = True
            covered[w0:w1] = True
            needed = vis[m0:m1].any(axis=0)
            assert not (needed & ~covered).any(), f"rows [{m0}, {m1}) see keys outside the visited ranges"


def test_block_sparsity_of_a_video_latent_pattern_is_high():
    # 480p Wan latent: 1560 tokens per frame, 21 frames, one anchor frame, window +-1 frame
    spec = FrameBlockSpec(tokens_per_frame=1560, window_before=1, window_after=1, n_anchor=1560)
    n = 1560 * 21
    visited, total = block_counts(spec, n, n, 128, 64)
    assert 0.75 < 1 - visited / total < 0.85
    assert visible_pairs(spec, n, n) / n ** 2 < visited / total  # tiles cover at least the visible area
    assert block_counts(None, n, n, 128, 64) == (total, total)


def test_spec_validation():
    with pytest.raises(ValueError):
        FrameBlockSpec(tokens_per_frame=0)
    with pytest.raises(ValueError):
        FrameBlockSpec(tokens_per_frame=4, window_before=-1)
    assert FrameBlockSpec.dense().is_dense
    assert FrameBlockSpec(4, None, None, 8).is_dense
    assert not FrameBlockSpec(4, None, None, 8, anchors_attend_all=False).is_dense


# ---------------------------------------------------------------- the Triton kernel against SDPA + explicit mask

def reference(q, k, v, spec, kv_lengths=None, scale=None):
    """SDPA in fp32 with the equivalent explicit mask; rows without any visible key are zeros."""
    mask = dense_mask(spec, q.shape[2], k.shape[2], kv_lengths, batch=q.shape[0], device=q.device)
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                           scale=scale)
    return torch.where(mask.any(dim=-1, keepdim=True), out, torch.zeros_like(out))


def random_qkv(b, h, lq, lk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g)
    k = torch.randn(b, h, lk, d, generator=g)
    v = torch.randn(b, h, lk, d, generator=g)
    return (t.to(device=DEVICE, dtype=dtype) for t in (q, k, v))


def check(q, k, v, spec, kv_lengths=None, scale=None):
    lengths = None if kv_lengths is None else torch.tensor(kv_lengths, device=DEVICE)
    out = attention(q, k, v, spec=spec, key_padding_mask=lengths, scale=scale, backend="triton")
    assert out.shape == q.shape[:3] + (v.shape[-1],) and out.dtype == q.dtype
    ref = reference(q, k, v, spec, kv_lengths, scale)
    err = (out.float() - ref).abs().max().item()
    assert err <= TOLERANCE[q.dtype], f"max abs error {err:.3g} > {TOLERANCE[q.dtype]:.1g} for {spec}"
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "dense" if s is None else
                         f"t{s.tokens_per_frame}-w{s.window_before}-{s.window_after}-a{s.n_anchor}"
                         f"{'' if s.anchors_attend_all else 'local'}")
def test_triton_kernel_matches_masked_sdpa(dtype, spec):
    q, k, v = random_qkv(2, 2, 64, 64, 32, dtype)
    check(q, k, v, spec, kv_lengths=[64, 45])


@pytest.mark.parametrize("b,h,lq,lk,d", [(1, 1, 64, 64, 64), (1, 2, 40, 64, 16), (2, 1, 64, 37, 24),
                                         (1, 1, 17, 17, 128)])
def test_triton_kernel_shapes_and_head_dims(b, h, lq, lk, d):
    q, k, v = random_qkv(b, h, lq, lk, d, torch.float16, seed=d)
    check(q, k, v, FrameBlockSpec(tokens_per_frame=6, window_before=1, window_after=0, n_anchor=4))
    check(q, k, v, None, scale=0.3)


def test_triton_kernel_degenerate_patterns():
    q, k, v = random_qkv(2, 2, 64, 64, 32, torch.float32, seed=1)
    check(q, k, v, FrameBlockSpec(tokens_per_frame=8, window_before=0, window_after=0))  # own frame only
    check(q, k, v, FrameBlockSpec(tokens_per_frame=1, window_before=0, window_after=0))  # the diagonal
    check(q, k, v, FrameBlockSpec(tokens_per_frame=8, window_before=0, window_after=0, n_anchor=64))  # all anchors
    check(q, k, v, FrameBlockSpec(tokens_per_frame=8, window_before=0, window_after=0, n_anchor=80,
                                  anchors_attend_all=False))
    # everything padded but one key: every row is exactly that key's value
    out = check(q, k, v, FrameBlockSpec(tokens_per_frame=8, window_before=1, window_after=1, n_anchor=8), [1, 1])
    assert torch.allclose(out, v[:, :, :1].expand_as(out), atol=1e-6)


def test_rows_that_see_no_key_are_zero():
    q, k, v = random_qkv(2, 1, 32, 32, 16, torch.float32, seed=2)
    spec = FrameBlockSpec(tokens_per_frame=8, window_before=0, window_after=0)
    out = attention(q, k, v, spec=spec, key_padding_mask=torch.tensor([0, 8]), backend="triton")
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # batch 0: no key at all
    assert torch.equal(out[1, :, 8:], torch.zeros_like(out[1, :, 8:]))  # frames 1..3 see only padding
    assert torch.isfinite(out).all() and out[1, :, :8].abs().sum() > 0
    ref = attention(q, k, v, spec=spec, key_padding_mask=torch.tensor([0, 8]), backend="sdpa")
    assert torch.allclose(out, ref, atol=1e-5)


def test_triton_kernel_never_reads_keys_outside_the_visible_ranges():
    """Keys no query can see hold NaN: a kernel that loaded them (even masked) would return NaN."""
    spec = FrameBlockSpec(tokens_per_frame=8, window_before=1, window_after=0, n_anchor=8, anchors_attend_all=False)
    q, k, v = random_qkv(1, 1, 48, 96, 16, torch.float32, seed=3)
    poisoned_k, poisoned_v = k.clone(), v.clone()
    vis = visible_numpy(spec, 48, 96, 80).any(axis=0)
    hidden = torch.from_numpy(~vis).to(DEVICE)
    assert hidden.sum() >= 40  # the window, the padding: most keys are never visible here
    poisoned_k[:, :, hidden] = float("nan")
    poisoned_v[:, :, hidden] = float("nan")
    out = attention(q, poisoned_k, poisoned_v, spec=spec, key_padding_mask=torch.tensor([80]), backend="triton")
    assert torch.isfinite(out).all()
    assert torch.allclose(out, reference(q, k, v, spec, [80]), atol=2e-5)
    # the same poison through a dense kernel with a mask (SDPA) does propagate: the check above can fail
    masked = torch.nn.functional.scaled_dot_product_attention(
        q, poisoned_k, poisoned_v, attn_mask=dense_mask(spec, 48, 96, [80], device=DEVICE))
    assert not torch.isfinite(masked).all()


def test_triton_kernel_takes_strided_inputs():
    """diffusers hands (B, L, H, D) tensors; transposed views must work without copies."""
    g = torch.Generator().manual_seed(4)
    blhd = [torch.randn(1, 48, 2, 32, generator=g).to(DEVICE) for _ in range(3)]
    q, k, v = (t.transpose(1, 2) for t in blhd)
    assert not q.is_contiguous()
    check(q, k, v, FrameBlockSpec(tokens_per_frame=12, window_before=1, window_after=1, n_anchor=12))


# ---------------------------------------------------------------- dispatch

def test_dispatch_backends_agree_and_auto_picks_sdpa_on_cpu():
    q, k, v = random_qkv(2, 2, 48, 48, 16, torch.float32, seed=5)
    spec = FrameBlockSpec(tokens_per_frame=8, window_before=1, window_after=0, n_anchor=8)
    lengths = torch.tensor([48, 30])
    bool_mask = torch.arange(48)[None, :] < lengths[:, None]
    seen = []
    remove = dispatch.add_call_hook(seen.append)
    try:
        a = attention(q, k, v, spec=spec, key_padding_mask=lengths.to(DEVICE), backend="auto")
        s = attention(q, k, v, spec=spec, key_padding_mask=bool_mask.to(DEVICE), backend="sdpa")
        t = attention(q, k, v, spec=spec, key_padding_mask=bool_mask.to(DEVICE), backend="triton")
    finally:
        remove()
    assert seen == (["triton", "sdpa", "triton"] if ON_CUDA else ["sdpa", "sdpa", "triton"])
    ref = reference(q, k, v, spec, [48, 30])
    for out in (a, s, t):
        assert (out - ref).abs().max() < 2e-5


def test_dispatch_dense_sdpa_equals_plain_sdpa():
    q, k, v = random_qkv(1, 2, 20, 20, 8, torch.float32, seed=6)
    out = attention(q, k, v, backend="sdpa")
    assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_dispatch_non_prefix_padding():
    q, k, v = random_qkv(1, 1, 16, 16, 16, torch.float32, seed=7)
    holes = torch.ones(1, 16, dtype=torch.bool)
    holes[0, 3:6] = False
    out = attention(q, k, v, key_padding_mask=holes.to(DEVICE), backend="auto")  # sdpa on CPU
    keep = holes[0].nonzero().squeeze(1).to(DEVICE)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, keep], v[:, :, keep])
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(MissingDependencyError, match="prefix"):
        attention(q, k, v, key_padding_mask=holes.to(DEVICE), backend="triton")


def test_dispatch_errors_name_the_problem(monkeypatch):
    q, k, v = random_qkv(1, 1, 8, 8, 8, torch.float32)
    with pytest.raises(InputError, match="unknown attention backend"):
        attention(q, k, v, backend="flash")
    if not ON_CUDA:
        with pytest.raises(MissingDependencyError, match="xformers has no CPU operator"):
            attention(q, k, v, backend="xformers")
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(MissingDependencyError, match="TRITON_INTERPRET=1"):
            attention(q, k, v, backend="triton")
    with pytest.raises(ValueError, match="key_padding_mask"):
        attention(q, k, v, key_padding_mask=torch.ones(1, 5, dtype=torch.bool, device=DEVICE))


def test_importing_kernels_needs_no_torch():
    code = ("import sys, avatarcast.kernels as k; from avatarcast.kernels import masks, flash_attention, dispatch; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('avatarcast_bench') or "
            "(m.startswith('avatarcast.') and m.split('.')[1] not in ('kernels', 'core'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(ON_CUDA, reason="checks the message given on machines without CUDA")
def test_bench_kernels_says_a_cuda_gpu_is_needed(capsys):
    from avatarcast.cli.main import main

    assert main(["bench", "kernels", "--seq-lens", "1024"]) == MissingDependencyError.exit_code
    assert "needs a CUDA GPU" in capsys.readouterr().err



@pytest.mark.parametrize("dtype,dense", [("bf16", False), ("fp16", True)])
def test_kernel_compiles_to_tensor_core_code_for_hopper(dtype, dense, monkeypatch):
    """Without a GPU, compile the kernel ahead of time for sm_90: types, scalar branches and tl.dot lowering hold."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a real JIT function, not the interpreter's
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from avatarcast.kernels import flash_attention as fa

    fn = triton.jit(fa._attn_fwd, do_not_specialize=fa._RUNTIME_INTS)
    names = list(fn.arg_names)
    signature = {n: "i32" for n in names}
    signature.update({n: "*" + dtype for n in ("Q", "K", "V", "Out")}, KVLen="*i32", qk_scale_log2="fp32")
    consts = dict(HAS_KVLEN=True, IS_DENSE=dense, ANCHOR_ALL=True, UPCAST_DOT=False, FP32_INPUTS=False,
                  BLOCK_M=128, BLOCK_N=64, BLOCK_D=128)
    signature.update({k: "constexpr" for k in consts})
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 3})
    assert "wgmma" in kernel.asm["ptx"]
