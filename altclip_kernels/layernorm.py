"""LayerNorm forward in Triton, with an optional fused residual add.

For each row x of width W (the last dimension):

    mean = Σ_i x_i / W
    var  = Σ_i (x_i − mean)² / W                 biased variance, as torch.nn.LayerNorm uses
    y_i  = (x_i − mean) / sqrt(var + eps) · weight_i + bias_i

The statistics are accumulated in float32 whatever the input dtype: a float16 sum of 1024 squares overflows or
loses the small terms. The two-pass form (subtract the mean, then square) is used rather than E[x²] − E[x]², which
cancels catastrophically when the mean is large compared to the spread; the row is in registers anyway, so the
second pass costs no memory traffic.

A row is one tile of BLOCK_COLS = next power of two ≥ W columns (tl.arange needs a power of two); the columns past
W are masked on every load and store and zeroed before the variance, so any width works (768, 1000, 1024, 1, 7).
One program normalises BLOCK_ROWS rows: one row per program for wide rows on a GPU, several for narrow rows (and
many in the interpreter, where each program is a slow sequential step).

Residual add. AltCLIP's two towers place LayerNorm differently around the residual stream:

    text  (post-LN):  x = LN(x + f(x))                   needs LN(h) of the sum h
    image (pre-LN):   h = x + f(LN(x)); next LN(h)       needs LN(h) *and* h, the new residual stream

`layer_norm(x, w, b, residual=r)` covers both: it forms h = x + r, writes h, and normalises it, in one pass over
memory (unfused it is three: read x and r, write h, read h again). h is rounded to x's dtype before its statistics
are taken, so the normalised output is exactly LN of the h that is returned, as in the unfused torch code
`h = x + r; y = layer_norm(h)`.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _layer_norm_fwd_kernel(
    X,  # pointer to the input rows, (n_rows, n_cols) with unit column stride
    Residual,  # pointer to the rows added to X before normalising (read only if HAS_RESIDUAL)
    Y,  # pointer to the normalised output rows
    Sum,  # pointer to where h = X + Residual is written (written only if HAS_RESIDUAL)
    Weight,  # pointer to the (n_cols,) scale γ
    Bias,  # pointer to the (n_cols,) shift β
    stride_x, stride_r, stride_y, stride_s,  # element strides between consecutive rows of X, Residual, Y, Sum
    n_rows,  # number of rows (all leading dimensions flattened)
    n_cols,  # W, the width normalised over
    eps,  # added to the variance before the square root
    HAS_RESIDUAL: tl.constexpr,  # fuse h = X + Residual, and write h to Sum
    BLOCK_ROWS: tl.constexpr,  # rows normalised by one program
    BLOCK_COLS: tl.constexpr,  # next power of two ≥ n_cols: one tile holds a whole row
):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    rows64 = rows.to(tl.int64)[:, None]  # (BLOCK_ROWS, 1); int64 so that row · stride cannot overflow
    col_ok = cols < n_cols
    ok = (rows[:, None] < n_rows) & col_ok[None, :]  # (BLOCK_ROWS, BLOCK_COLS): real rows, real columns

    x = tl.load(X + rows64 * stride_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(Residual + rows64 * stride_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        h = (x + r).to(Sum.dtype.element_ty)  # the new residual stream, in the stream's dtype
        tl.store(Sum + rows64 * stride_s + cols[None, :], h, mask=ok)
        x = h.to(tl.float32)  # normalise exactly the h that was stored

    mean = tl.sum(x, axis=1) / n_cols  # masked columns were loaded as 0, so they add nothing
    xc = tl.where(ok, x - mean[:, None], 0.0)  # centred; masked columns must not add mean² to the variance
    var = tl.sum(xc * xc, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)

    w = tl.load(Weight + cols, mask=col_ok, other=0.0).to(tl.float32)
    b = tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows64 * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)


def _block_config(n_rows: int, n_cols: int, interpreted: bool) -> tuple[int, int, int]:
    """(BLOCK_ROWS, BLOCK_COLS, num_warps).

    A tile is BLOCK_ROWS × BLOCK_COLS elements. On a GPU it holds about 1024 elements or one whole row, whichever
    is more (a 1024-wide row per program, as in Triton's tutorial 05; narrow rows are batched so that a program
    has enough work), with a warp per 256 elements, at most 8. In the interpreter a tile holds up to 64K elements
    so that there are few programs. UNTUNED: chosen without a GPU to measure on.
    """
    block_cols = triton.next_power_of_2(n_cols)
    tile = 65536 if interpreted else 1024
    block_rows = max(1, min(tile // block_cols, triton.next_power_of_2(n_rows)))
    num_warps = min(max(block_rows * block_cols // 256, 1), 8)
    return block_rows, block_cols, num_warps


def layer_norm(x, weight, bias, eps=1e-5, residual=None):
    """LayerNorm over the last dimension of x, statistics in float32.

    x: (..., W) in float32, float16 or bfloat16, last dimension contiguous; weight, bias: (W,), any float dtype.
    residual: optional tensor of x's shape and dtype.

    Returns:
        residual is None:  y = LN(x), a new tensor shaped and typed like x.
        residual given:    the pair (y, h) with h = x + residual (in x's dtype) and y = LN(h). Use h as the new
                           residual stream in a pre-LN block, ignore it in a post-LN block.
    """
    W = x.shape[-1]
    if weight.shape != (W,) or bias.shape != (W,):
        raise ValueError(f"weight and bias must be ({W},), got {tuple(weight.shape)} and {tuple(bias.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual must match x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                         f"got {tuple(residual.shape)} {residual.dtype}")
    if x.element_size() * triton.next_power_of_2(W) > 65536:
        raise ValueError(f"rows wider than 64 KB are not supported (one row is one tile), got width {W}")
    interpreted = not isinstance(_layer_norm_fwd_kernel, triton.JITFunction)
    if x.device.type != "cuda" and not interpreted:
        raise RuntimeError(f"Triton kernels need CUDA tensors (got {x.device}); to run them on CPU set "
                           "TRITON_INTERPRET=1 before the kernels are first used")

    x2 = x.reshape(-1, W)  # (rows, W): a view when the leading dimensions allow it
    if x2.shape[0] > 0 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    n_rows = x2.shape[0]
    y = torch.empty((n_rows, W), dtype=x.dtype, device=x.device)
    if residual is not None:
        r2 = residual.reshape(-1, W)
        if n_rows > 0 and r2.stride(1) != 1:
            r2 = r2.contiguous()
        h = torch.empty((n_rows, W), dtype=x.dtype, device=x.device)
    else:
        r2 = h = x2  # placeholders, never read or written

    if n_rows > 0:
        block_rows, block_cols, num_warps = _block_config(n_rows, W, interpreted)
        _layer_norm_fwd_kernel[(triton.cdiv(n_rows, block_rows),)](
            x2, r2, y, h, weight, bias,
            x2.stride(0), r2.stride(0), y.stride(0), h.stride(0),
            n_rows, W, eps,
            HAS_RESIDUAL=residual is not None, BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
            num_warps=num_warps,
        )
    if residual is None:
        return y.view(x.shape)
    return y.view(x.shape), h.view(x.shape)


def layer_norm_reference(x, weight, bias, eps=1e-5, residual=None):
    """Plain-torch LayerNorm in float32: what `layer_norm` must equal, with the same return convention."""
    h = x if residual is None else (x.float() + residual.float()).to(x.dtype)  # the stream's dtype, as the kernel
    hf = h.float()
    mean = hf.mean(dim=-1, keepdim=True)
    var = ((hf - mean) ** 2).mean(dim=-1, keepdim=True)  # biased, as torch.nn.LayerNorm
    y = ((hf - mean) * torch.rsqrt(var + eps) * weight.float() + bias.float()).to(x.dtype)
    return y if residual is None else (y, h)
