"""The Triton kernels against their plain-torch references.

On a machine without a GPU these run in Triton's CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before
`kernels` is imported); on a GPU the same tests run the compiled kernels on CUDA tensors.

Tolerances are per dtype, (atol, rtol), always against the float32 reference fed the *same* (already rounded)
inputs, so they measure only the kernel's own arithmetic:
- float32: 1e-5. Both sides compute in fp32 (the kernel asks for IEEE dots, not TF32); they differ only in
  summation order and exp2-with-folded-log2(e) vs exp. Observed in the interpreter: ≤ 7e-7 absolute.
- float16: 2e-3 (attention), 1e-3 (LayerNorm). Attention rounds P to fp16 before P·V (rel 2⁻¹¹ ≈ 4.9e-4) and the
  output to fp16 (another 4.9e-4); LayerNorm rounds only its output. Observed: at most 0.2 (attention) and 0.4
  (LayerNorm) of the allowed atol + rtol·|expected|.
- bfloat16: 2e-2 (attention), 1e-2 (LayerNorm). Same roundings at bf16's 2⁻⁸ ≈ 3.9e-3, and the interpreter's
  fp32→bf16 conversion truncates instead of rounding (up to 1 ulp, 2⁻⁷ ≈ 7.8e-3). Observed: at most 0.3
  (attention) and 0.6 (LayerNorm) of the allowed error.

The sweeps are chosen, rather than taking every product, to keep this file under half a minute in the interpreter
on a 2-core CPU: the full N sweep at D = 64 in fp32, the D sweep at N = 77, the dtype sweep at three shapes.
(The interpreter's tl.dot is numpy's matmul; on a busy machine OpenBLAS threads slow those small products down a
lot, and OPENBLAS_NUM_THREADS=1 in the environment roughly halves the time: 17 s instead of 31 s here.)
"""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import altclip_kernels
from altclip_kernels import attention, attention_reference, layer_norm, layer_norm_reference  # stand-ins without Triton

ok, why = altclip_kernels.available()
pytestmark = pytest.mark.skipif(not ok, reason=why)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATTENTION_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
LAYER_NORM_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def fused_qkv(B, H, N, D, dtype, seed=0):
    """q, k, v as a model makes them: strided (B, H, N, D) views of one (B, N, 3·H·D) projection, no copies."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, N, 3 * H * D, generator=g).to(device=DEVICE, dtype=dtype)
    q, k, v = qkv.view(B, N, 3, H, D).unbind(2)  # each (B, N, H, D)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # each (B, H, N, D), stride 3·H·D along N


def right_padded_mask(lengths, N, dtype=torch.int64):
    """(B, N) mask with 1 for the first `length` tokens of each row and 0 for the padding after them."""
    lengths = torch.tensor(lengths)
    return (torch.arange(N)[None, :] < lengths[:, None]).to(device=DEVICE, dtype=dtype)


def check_attention(q, k, v, mask=None, scale=None, **kwargs):
    out = attention(q, k, v, mask, scale, **kwargs)
    assert out.shape == q.shape and out.dtype == q.dtype
    expected = attention_reference(q.float(), k.float(), v.float(), mask, scale)
    atol, rtol = ATTENTION_TOL[q.dtype]
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol)
    return out


# ---------------------------------------------------------------------------------------------- attention


def test_reference_matches_sdpa():
    """The reference itself: equal to torch's SDPA with a boolean key mask (no fully padded rows here)."""
    q, k, v = fused_qkv(2, 3, 77, 64, torch.float32)
    mask = right_padded_mask([77, 9], 77)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :])
    torch.testing.assert_close(attention_reference(q, k, v, mask), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("N", [1, 7, 64, 77, 257, 512])
def test_attention_sequence_lengths(N):
    check_attention(*fused_qkv(2, 2, N, 64, torch.float32, seed=N))


@pytest.mark.parametrize("D", [16, 32, 64, 128])
def test_attention_head_dims(D):
    check_attention(*fused_qkv(2, 3, 77, D, torch.float32, seed=D), mask=right_padded_mask([77, 30], 77))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, H, N, D, lengths", [
    (4, 2, 77, 64, [1, 5, 77, 40]),  # ragged captions, one of length 1
    (1, 2, 257, 64, None),  # the image tower: 256 patches + class token, no mask
    (2, 1, 512, 128, [512, 130]),  # the longest text, widest head
])
def test_attention_dtypes(dtype, B, H, N, D, lengths):
    mask = None if lengths is None else right_padded_mask(lengths, N)
    check_attention(*fused_qkv(B, H, N, D, dtype, seed=N + D), mask=mask)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.float32], ids=str)
def test_attention_ragged_mask_dtypes(mask_dtype):
    check_attention(*fused_qkv(5, 2, 257, 32, torch.float32), mask=right_padded_mask([1, 2, 128, 129, 257], 257,
                                                                                      mask_dtype))


def test_attention_mixed_strides():
    """q from a fused projection, k contiguous (B, H, N, D), v a (B, N, H, D) tensor seen as (B, H, N, D)."""
    q, _, _ = fused_qkv(2, 2, 77, 64, torch.float32)
    g = torch.Generator().manual_seed(1)
    k = torch.randn(2, 2, 77, 64, generator=g).to(DEVICE)
    v = torch.randn(2, 77, 2, 64, generator=g).to(DEVICE).transpose(1, 2)
    check_attention(q, k, v, mask=right_padded_mask([50, 77], 77))


def test_attention_output_layout_merges_heads_for_free():
    B, H, N, D = 2, 3, 77, 32
    out = attention(*fused_qkv(B, H, N, D, torch.float16))
    merged = out.transpose(1, 2).reshape(B, N, H * D)
    assert merged.data_ptr() == out.data_ptr() and out.transpose(1, 2).is_contiguous()  # a view, not a copy


@pytest.mark.parametrize("blocks", [(64, 16), (16, 32)])
def test_attention_many_small_blocks(blocks):
    """Small tiles force many key blocks per row, so the online rescaling and the tail block are exercised hard."""
    check_attention(*fused_qkv(2, 1, 100, 32, torch.float32), mask=right_padded_mask([100, 37], 100), _blocks=blocks)


def test_attention_non_right_padded_mask():
    """Holes and left padding are outside the fast path's assumption but must still be exact."""
    mask = torch.ones(3, 77, dtype=torch.int64, device=DEVICE)
    mask[0, :40] = 0  # left padding
    mask[1, 3::2] = 0  # holes
    mask[2, 20:] = 0
    mask[2, 76] = 1  # one visible key far after a run of padding
    check_attention(*fused_qkv(3, 1, 77, 64, torch.float32), mask=mask, _blocks=(128, 16))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_attention_fully_padded_rows_give_zero(dtype):
    """A sequence with no visible key gives 0, not NaN; its keys and values (NaN here) are never read."""
    q, k, v = fused_qkv(3, 2, 77, 64, dtype)
    mask = right_padded_mask([77, 0, 12], 77)
    expected = attention_reference(q.float(), k.float(), v.float(), mask)
    k[1], v[1] = float("nan"), float("nan")
    out = attention(q, k, v, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    atol, rtol = ATTENTION_TOL[dtype]
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("N, lengths, blocks", [
    (77, [20, 77, 1, 33], (128, 16)),
    (512, [100, 1], None),  # the launcher's own tiles (256 wide in the interpreter, the GPU's tiles on a GPU)
])
def test_attention_skips_padded_key_blocks(N, lengths, blocks):
    """Poison every key block that lies wholly in the padding with NaN: the output does not change at all, so those
    blocks are never loaded. (Padding *inside* the last visited block is loaded and weighted by 0, as SDPA does,
    which is why NaN there would show: the probe is sensitive, checked at the end.)"""
    from altclip_kernels.attention import _block_config, _is_interpreted, _attention_fwd_kernel

    q, k, v = fused_qkv(len(lengths), 1, N, 64, torch.float32)
    mask = right_padded_mask(lengths, N)
    block_n = blocks[1] if blocks else _block_config(N, 64, q.dtype, _is_interpreted(_attention_fwd_kernel))[1]
    clean = check_attention(q, k, v, mask=mask, _blocks=blocks)

    k_bad, v_bad = k.clone(), v.clone()
    for i, length in enumerate(lengths):
        first_skipped = math.ceil(length / block_n) * block_n
        k_bad[i, :, first_skipped:], v_bad[i, :, first_skipped:] = float("nan"), float("nan")
    assert k_bad.isnan().any(), "the test must poison at least one block"
    poisoned = attention(q, k_bad, v_bad, mask, _blocks=blocks)
    assert torch.equal(poisoned, clean)

    i = next(i for i, length in enumerate(lengths) if length % block_n)  # padding inside a visited block
    v_bad[i, :, lengths[i]] = float("nan")
    assert attention(q, k_bad, v_bad, mask, _blocks=blocks)[i].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_attention_huge_scores_stay_finite(dtype):
    """Scores near ±300 overflow exp() in fp32 (e^89 = inf) unless the running max is subtracted first. The fp32
    tolerance is 1e-4 here: a 1e-7 relative error in a score of 300 moves its probability by ~3e-5."""
    q, k, v = fused_qkv(2, 2, 77, 64, dtype)
    q, k = q * 3, k * 3
    out = attention(q, k, v, scale=1.0)
    expected = attention_reference(q.float(), k.float(), v.float(), scale=1.0)
    atol, rtol = (1e-4, 1e-4) if dtype == torch.float32 else ATTENTION_TOL[dtype]
    assert out.isfinite().all()
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol)


def test_attention_custom_scale():
    check_attention(*fused_qkv(1, 2, 64, 32, torch.float32), scale=0.05)


def test_attention_rejects_bad_inputs():
    q, k, v = fused_qkv(1, 1, 8, 64, torch.float32)
    with pytest.raises(ValueError, match="head size"):
        attention(q[..., :48], k[..., :48], v[..., :48])
    square = torch.randn(1, 1, 16, 16, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous along its last"):
        attention(square.transpose(-1, -2), square, square)
    with pytest.raises(ValueError, match="attention_mask"):
        attention(q, k, v, torch.ones(1, 7, device=DEVICE))


# ---------------------------------------------------------------------------------------------- LayerNorm


def layer_norm_inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = shape[-1]
    x = torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)
    residual = torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)
    weight = (1 + 0.5 * torch.randn(W, generator=g)).to(device=DEVICE, dtype=dtype)
    bias = (0.5 * torch.randn(W, generator=g)).to(device=DEVICE, dtype=dtype)
    return x, residual, weight, bias


def test_layer_norm_reference_matches_torch():
    x, _, w, b = layer_norm_inputs((5, 1000), torch.float32)
    torch.testing.assert_close(layer_norm_reference(x, w, b), F.layer_norm(x, (1000,), w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("W", [1, 7, 768, 1000, 1024])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_layer_norm(W, dtype, with_residual):
    x, residual, w, b = layer_norm_inputs((3, 5, W), dtype, seed=W)
    atol, rtol = LAYER_NORM_TOL[dtype]
    if not with_residual:
        y = layer_norm(x, w, b)
        assert y.shape == x.shape and y.dtype == dtype
        torch.testing.assert_close(y.float(), layer_norm_reference(x.float(), w, b), atol=atol, rtol=rtol)
        return
    y, h = layer_norm(x, w, b, residual=residual)
    assert y.shape == h.shape == x.shape and y.dtype == h.dtype == dtype
    # h = x + residual to within one rounding of x's dtype; y is LN of exactly that h.
    torch.testing.assert_close(h.float(), x.float() + residual.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(y.float(), layer_norm_reference(h.float(), w, b), atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape", [(1, 1024), (0, 768), (2, 3, 4, 1000)])
def test_layer_norm_leading_shapes(shape):
    x, residual, w, b = layer_norm_inputs(shape, torch.float32)
    y, h = layer_norm(x, w, b, residual=residual)
    y_ref, h_ref = layer_norm_reference(x, w, b, residual=residual)
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


def test_layer_norm_strided_rows_and_large_mean():
    """Rows that are slices of a wider tensor (row stride ≠ width), with a mean large against their spread: the
    two-pass variance keeps fp32 accurate where E[x²] − E[x]² would cancel."""
    x, _, w, b = layer_norm_inputs((6, 1200), torch.float32)
    x = (x * 0.1 + 100.0)[:, :1000]  # (6, 1000) view with row stride 1200; mean 100, spread 0.1
    assert x.stride(0) == 1200
    y = layer_norm(x, w[:1000], b[:1000])
    # vs a float64 reference; E[x²] − E[x]² in fp32 would be off by ~10% here (ulp(1e4) ≈ 1e-3 vs var 1e-2).
    torch.testing.assert_close(y, layer_norm_reference(x.double(), w[:1000], b[:1000]).float(), atol=1e-3, rtol=1e-3)


def test_layer_norm_rejects_bad_inputs():
    x, residual, w, b = layer_norm_inputs((2, 8), torch.float32)
    with pytest.raises(ValueError, match="weight and bias"):
        layer_norm(x, w[:4], b)
    with pytest.raises(ValueError, match="residual"):
        layer_norm(x, w, b, residual=residual[:1])


# ---------------------------------------------------------------------------------------------- the package


def _python(code, **env):
    env = {**os.environ, **env}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout


def test_available_explains_why_not():
    """Importing `kernels` never fails; without Triton, or without a GPU and the interpreter, it says why."""
    no_triton = _python("import sys; sys.modules['triton'] = None\n"
                        "import altclip_kernels; print(altclip_kernels.available())")
    assert "(False, 'triton is not installed" in no_triton
    no_gpu = _python("import altclip_kernels; print(altclip_kernels.available())", CUDA_VISIBLE_DEVICES="")
    assert "(False, \"no CUDA device (set TRITON_INTERPRET=1" in no_gpu
