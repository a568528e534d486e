"""Fused attention forward pass (FlashAttention-style) in Triton, with key-padding masks.

    out = softmax(scale · Q Kᵀ + mask) V          Q, K, V: (B, H, N, D) per head; no causal mask

The plain way materialises the (N, N) score matrix per head, writes it to memory, reads it back for the softmax and
again for the product with V. This kernel never stores it: each program owns BLOCK_M query rows, streams the keys
and values past them BLOCK_N at a time, and keeps only three running quantities per row in registers (Dao et al.,
"FlashAttention", 2022; Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018).

Online softmax. For one query row with scores s_j, softmax(s)·V = Σ_j e^{s_j − m} v_j / Σ_j e^{s_j − m} for any m;
taking m = max_j s_j keeps every exponent ≤ 0, so nothing overflows. The maximum is not known until all keys have
been seen, so it is tracked as it grows. After each block S = scale · Q Kᵀ (BLOCK_M × BLOCK_N), every row updates

    m_new = max(m, rowmax(S))                        running maximum
    l     = l · e^{m − m_new} + rowsum(e^{S − m_new})  running softmax denominator
    acc   = acc · e^{m − m_new} + e^{S − m_new} V      running numerator (BLOCK_M × D)
    m     = m_new

and at the end out = acc / l. The factor e^{m − m_new} re-expresses what was summed against the old maximum relative
to the new one, so the result is exactly the softmax, computed in one pass. m, l and acc are float32 in every input
dtype (the scores of a float16 model can exceed float16's range before the max is subtracted).

exp2 instead of exp. GPUs evaluate 2^x natively (one MUFU.EX2 instruction); e^x costs an extra multiply by log2(e).
Since e^{s − m} = 2^{(s − m)·log2 e}, folding log2(e) into the softmax scale once (qk_scale = scale · log2 e) makes
every score come out in base-2 units; m and l are then tracked in those units and exp2 is used throughout. The final
out = acc / l is unchanged, because the same base is used in numerator and denominator.

Padding. `attention_mask` (B, N) marks real tokens with 1 and padding with 0; padding is on the right, as the
tokenizer makes it. A padded key must get zero weight, i.e. score −inf (e^{−inf} = 0). Keys that come after a
sequence's last real token contribute nothing to any row, so whole key blocks past it need not be loaded or
multiplied at all: each program first scans its sequence's mask for kv_end = 1 + index of the last visible key, and
the loop over key blocks stops there. In a batch of short captions padded to its longest one, the padding blocks
cost nothing, where a dense kernel (or SDPA with a mask) computes them and throws them away. Inside the last visited
block the mask is applied element-wise (padded keys there are loaded and weighted by 0, as in SDPA), and so are
positions past N (out-of-range keys are set to −inf, never loaded as 0: e^0 = 1 would corrupt the row). A mask that
is not right-padded (holes, left padding) is still handled exactly; only the skipping does less.

Rows with no visible key. If a sequence is all padding, every score is −inf: the textbook formula gives
e^{−inf − (−inf)} = NaN. Here the running maximum is replaced by 0 while it is still −inf, so those rows keep l = 0
and acc = 0, and the final division is guarded to return 0 (what torch's SDPA returns for such rows).

Padded *query* rows are computed like real ones (they attend to the real keys), exactly as the reference does; the
model never reads them.

Output layout. The kernel writes through the output's strides. `attention` allocates the output as (B, N, H, D) in
memory and returns its (B, H, N, D) transposed view, so the caller's `out.transpose(1, 2).reshape(B, N, H * D)` that
merges the heads is a free view rather than a copy.
"""
import math

import torch
import triton
import triton.language as tl

from . import HEAD_SIZES


@triton.jit
def _attention_fwd_kernel(
    Q, K, V,  # pointers to the (B, H, N, D) query, key and value tensors: any strides, unit stride along D
    Out,  # pointer to the (B, H, N, D) output, written through its own strides (see `attention` for the layout)
    Mask,  # pointer to the (B, N) key mask, any dtype: nonzero = may be attended to (read only if HAS_MASK)
    stride_qb, stride_qh, stride_qn,  # element strides of Q along batch, head and sequence
    stride_kb, stride_kh, stride_kn,  # element strides of K along batch, head and sequence
    stride_vb, stride_vh, stride_vn,  # element strides of V along batch, head and sequence
    stride_ob, stride_oh, stride_on,  # element strides of Out along batch, head and sequence
    stride_mb, stride_mn,  # element strides of Mask along batch and sequence
    H,  # number of heads; program id 0 enumerates the B·H (batch, head) pairs
    N,  # sequence length, for queries and keys alike
    qk_scale,  # softmax scale · log2(e): scores come out in base-2 units, ready for exp2
    HEAD_DIM: tl.constexpr,  # D, a power of two from 16 to 128 (tl.arange and tl.dot need powers of two)
    BLOCK_M: tl.constexpr,  # query rows handled by one program
    BLOCK_N: tl.constexpr,  # keys processed per iteration of the key loop
    HAS_MASK: tl.constexpr,  # False: every key is visible and Mask is not read
    DOT_IN_FP32: tl.constexpr,  # upcast tl.dot operands to fp32 (the interpreter multiplies bf16 as raw bits)
    INPUT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no TF32 rounding); "tf32", ignored by fp16/bf16 dots
):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)  # int64 so that b · stride cannot overflow on large batches
    h = (pid_bh % H).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # this program's query rows
    offs_n = tl.arange(0, BLOCK_N)  # key offsets inside one key block
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]  # (BLOCK_M, D)
    k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]  # (BLOCK_N, D)
    v_ptrs = V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]  # (BLOCK_N, D)

    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if DOT_IN_FP32:
        q = q.to(tl.float32)

    # Where this sequence's keys end: kv_end = 1 + index of its last visible key (0 if none). Key blocks from
    # kv_end on hold only padding, so the main loop stops there and never loads them. The scan reads N mask
    # entries; doing it here rather than in torch saves the caller several tiny kernel launches per call.
    if HAS_MASK:
        kv_end = tl.full([], 0, dtype=tl.int32)
        for start_n in range(0, N, BLOCK_N):
            keys = start_n + offs_n
            visible = tl.load(Mask + b * stride_mb + keys * stride_mn, mask=keys < N, other=0) != 0
            kv_end = tl.maximum(kv_end, tl.max(tl.where(visible, keys + 1, 0), 0))
    else:
        kv_end = N

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row maximum (base-2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running softmax denominator
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # running numerator, sum of p · v

    for start_n in range(0, kv_end, BLOCK_N):
        keys = start_n + offs_n
        in_range = keys < N
        k = tl.load(k_ptrs + start_n * stride_kn, mask=in_range[:, None], other=0.0)
        v = tl.load(v_ptrs + start_n * stride_vn, mask=in_range[:, None], other=0.0)
        if DOT_IN_FP32:
            k = k.to(tl.float32)

        # S = scale · Q Kᵀ in base-2 units; invisible keys (padding, past N) get -inf so that 2^S = 0.
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        visible = in_range
        if HAS_MASK:
            visible = visible & (tl.load(Mask + b * stride_mb + keys * stride_mn, mask=in_range, other=0) != 0)
        s = tl.where(visible[None, :], s, float("-inf"))

        # Online softmax update. While a row has seen no visible key its maximum is -inf; subtracting 0 instead
        # keeps 2^(-inf - m) at 0 rather than 2^(-inf + inf) = NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_sub)  # rescales what was summed against the old maximum
        p = tl.math.exp2(s - m_sub[:, None])  # (BLOCK_M, BLOCK_N) unnormalised probabilities
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]

        # P V: P is rounded to the input dtype so fp16/bf16 run on tensor cores (as FlashAttention does); the
        # accumulator stays fp32.
        p = p.to(V.dtype.element_ty)
        if DOT_IN_FP32:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = tl.dot(p, v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new

    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # rows with no visible key: acc is 0, return 0 rather than 0/0
    out = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


def _is_interpreted(kernel) -> bool:
    """True when `kernel` was defined under TRITON_INTERPRET=1 and so runs in Triton's CPU interpreter.

    Asking the kernel object rather than re-reading the environment variable at launch gives the right answer
    even when the variable changed after the @triton.jit decorator ran (the decorator is what reads it)."""
    return not isinstance(kernel, triton.JITFunction)


def _block_config(n: int, head_dim: int, dtype: torch.dtype, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a sequence length, head size and dtype.

    In the interpreter every program runs one after another in numpy and each tile operation has a fixed Python
    cost, so the fewer and larger the tiles the faster: one tile covers up to 256 rows and keys (each halving of
    the tile side multiplies the number of programs by four).
    On a GPU they are picked from the ranges Triton's tutorial 06 (fused attention) autotunes over for Hopper
    (BLOCK_M 64/128, BLOCK_N 32/64, 4/8 warps, 2-3 pipeline stages). They are UNTUNED: chosen without a GPU to
    measure on. bench/gpu_kernels.py prints the tiles it ran with and is the place to tune them.
    """
    if interpreted:
        block = min(256, max(16, triton.next_power_of_2(n)))
        return block, block, 4, 1
    if dtype == torch.float32:
        # fp32 tiles take twice the registers and shared memory, and the IEEE dot runs on CUDA cores anyway.
        return 64, 32, 4, 2
    block_m = 128 if n > 64 else 64
    block_n = 32 if n <= 128 else 64  # short (text) sequences: finer key blocks stop closer to the real length
    return block_m, block_n, (4 if head_dim <= 64 else 8), (3 if head_dim <= 64 else 2)


def attention(q, k, v, attention_mask=None, scale=None, *, _blocks=None):
    """Multi-head attention, softmax(scale · q kᵀ) v, without materialising the scores.

    q, k, v: (B, H, N, D) tensors of one dtype (float32, float16 or bfloat16) on one device. Any strides are
        accepted as long as the last dimension is contiguous, so views of a fused projection need no copy:
        `q, k, v = qkv.view(B, N, 3, H, D).unbind(2)` then `.transpose(1, 2)` on each.
        D must be 16, 32, 64 or 128; N may be anything (1..512 is what AltCLIP needs).
    attention_mask: optional (B, N) 0/1 key mask (bool, integer or float; 1 = attend, 0 = padding). Not an
        additive mask. Right padding is fastest: key blocks after each sequence's last real token are skipped.
    scale: softmax scale, default 1/sqrt(D).

    Returns (B, H, N, D) in q's dtype. It is a transposed view of a contiguous (B, N, H, D) tensor, so
    `out.transpose(1, 2).reshape(B, N, H * D)` costs nothing. A query row whose keys are all padding gets 0.
    `_blocks` (BLOCK_M, BLOCK_N) overrides the tile sizes; tests use it to force many small blocks.
    """
    if not (q.shape == k.shape == v.shape and q.dim() == 4):
        raise ValueError(f"q, k, v must be (B, H, N, D) of one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype and q.dtype in (torch.float32, torch.float16, torch.bfloat16)):
        raise ValueError(f"q, k, v must share one of float32/float16/bfloat16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, N, D = q.shape
    if D not in HEAD_SIZES:
        raise ValueError(f"head size D must be one of {HEAD_SIZES}, got {D}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along its last dimension (stride 1), "
                             f"got stride {t.stride(-1)}")
    interpreted = _is_interpreted(_attention_fwd_kernel)
    if q.device.type != "cuda" and not interpreted:
        raise RuntimeError(f"Triton kernels need CUDA tensors (got {q.device}); to run them on CPU set "
                           "TRITON_INTERPRET=1 before the kernels are first used")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    # (B, N, H, D) in memory, returned as a (B, H, N, D) view: merging the heads afterwards is free.
    out = torch.empty((B, N, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)

    has_mask = attention_mask is not None
    if has_mask:
        if attention_mask.shape != (B, N):
            raise ValueError(f"attention_mask must be (B, N) = {(B, N)}, got {tuple(attention_mask.shape)}")
        mask = attention_mask.to(q.device)  # read as is, in its own dtype and strides: no conversion kernels
    else:
        mask = q  # placeholder, never read

    if out.numel() == 0:
        return out
    block_m, block_n, num_warps, num_stages = _block_config(N, D, q.dtype, interpreted)
    if _blocks is not None:
        block_m, block_n = _blocks
    grid = (B * H, triton.cdiv(N, block_m))
    _attention_fwd_kernel[grid](
        q, k, v, out, mask,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        mask.stride(0), mask.stride(1),
        H, N, scale * math.log2(math.e),
        HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n, HAS_MASK=has_mask,
        # The interpreter's tl.dot on bfloat16 multiplies the raw bit patterns; fp32 operands are exact there.
        DOT_IN_FP32=interpreted and q.dtype == torch.bfloat16,
        # fp32 inputs: full IEEE fp32 products. Left to the default, tl.dot would round them to TF32 on the GPU
        # (~1e-3 relative error). fp16/bf16 inputs use tensor cores and ignore this setting.
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def attention_reference(q, k, v, attention_mask=None, scale=None):
    """Plain-torch attention in float32: what `attention` must equal. Same arguments and return convention
    (returned in q's dtype, contiguous); rows whose keys are all padding give 0."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = (qf @ kf.transpose(-2, -1)) * scale  # (B, H, N, N)
    if attention_mask is not None:
        visible = (attention_mask != 0)[:, None, None, :]  # (B, 1, 1, N), broadcast over heads and queries
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        probs = probs.masked_fill(~visible.any(dim=-1, keepdim=True), 0.0)  # no visible key: 0, not NaN
    else:
        probs = torch.softmax(scores, dim=-1)
    return (probs @ vf).to(q.dtype)  # (B, H, N, D)
