"""int8 on the CPU: the towers' linear layers with int8 weights and int8 activations, the rest in float32.

Each quantized linear computes, for a token row x (K wide) and the weight W (N × K):

    x̃ = x / s                       s (K,): SmoothQuant's per-channel smoothing, s_j = max|X_j|^α / max|W_j|^(1-α)
    t = max_j |x̃_j| / 127           one scale per token (row), computed on the fly ("dynamic")
    q = round(x̃ / t)   ∈ int8
    Q = round(W·s / r)  ∈ int8      r (N,): one scale per output channel, fixed at load time
    y = t · (q Qᵀ) · r + b'         the int8 × int8 product is summed exactly in int32; b' = b - (Q·r - W)·mean(x)

Why these choices (simulated on the full-size model first, figures in bench/README.md; tests/test_int8.py checks
the result on full-size random weights, an outlier-stressed copy and the trained mini AltCLIP):
- per-token activation scales: a few tokens carry values far larger than the rest; one scale per tensor (what
  torch.ao's dynamic quantization does) lets them crush every other token's resolution;
- per-channel smoothing (Xiao et al., "SmoothQuant", 2022, https://arxiv.org/abs/2211.10438), α = 0.5: a few
  *channels* are 10-100× larger than the rest in CLIP-like models ("massive activations"); s moves that range from
  the activations, which have one scale per row, into the weights, which have one per output channel. max|X_j| comes
  from calibration: one float32 forward pass at load time over a small built-in set (CALIBRATION_*: synthetic images
  and random token sequences: no data has to ship with the model, and such inputs show the channels that are large
  for every input, which is what a per-channel factor can fix);
- bias correction (Nagel et al., "Data-Free Quantization", 2019, https://arxiv.org/abs/1906.04721): rounding W
  moves every output by (Ŵ - W)·x; its mean over calibration's inputs, (Ŵ - W)·mean(x), is a constant shift, taken out
  of the bias. Inputs with a large mean (GELU's outputs are mostly positive) make it most of the rounding error: with
  it, 7-bit weights (below) keep the text tower at cosine 0.9992 or more where they gave 0.9984;
- the first and the last text blocks stay in float32 (KEEP_FLOAT): with outlier channels, the text tower loses most
  there, and those two are 1/12 of its work. The embeddings, LayerNorms, attention itself (softmax(QKᵀ)V), the text
  tower's `transformation`, both projections and the patch embedding stay in float32 too.

Kernels, chosen by measurement (bench/README.md, "int8"), in this order where the CPU can run them and has VNNI:
- "onednn": torch.ops.onednn.qlinear_pointwise, the int8 matmul that torch.compile's x86 backend emits, with the
  weight prepacked once into oneDNN's blocked layout (onednn.qlinear_prepack). oneDNN runs it on AMX or AVX-512 VNNI
  where present (AVX2 VNNI or plain AVX2 otherwise) and applies the per-channel r in its epilogue, writing float32;
  it takes only a per-tensor activation scale, so it runs with scale 1 and the per-token t is applied after, in
  one pass with the bias (addcmul). The fastest that keeps per-token scales.
- "int_mm": torch._int_mm (int8 × int8 → int32, any PyTorch ≥ 2.2), then t·r and the bias in float32: the
  portable fallback, half oneDNN's speed with VNNI or AMX (the weight is not prepacked).
Without VNNI (the AVX2 class: int8 sums saturate, see QMAX_NO_VNNI) the order is reversed: there oneDNN's int8
linear is barely faster than float32, and torch._int_mm 1.3-1.6× faster than it (kernel_order).
Not taken: torchao (it installs without pulling another torch, but its CPU int8-dynamic path runs torch._int_mm in
eager mode, the fallback above, and is fast only under torch.compile); torch.ao.nn.quantized.dynamic, with one
activation scale per tensor (see above). Its kernel, fbgemm's quantized::linear_dynamic, was tried as a third
kernel for the AVX2 class: rows scaled to max|x| = 1 (per-token scales after all), reduce_range=False (8-bit
activations; 7-bit weights keep its u8·s8 pair sums exact) and one extra row holding -128/127 so that its
per-tensor grid is exactly ±127 per row (without it each row's largest value, the outlier channel, lands between
two steps: stressed image cosine 0.9977). It then computes torch._int_mm's integer products, but the whole model
was no faster (AVX2 simulated, 2 threads: images 1.03×, texts 0.95× torch._int_mm's), its prepacking added 7 s to
every int8 load, and it rests on quantized tensors, which torch 2.13 says it will remove.
`choose_kernel()` returns the first that runs here and says why the others do not, in one line.

    model = load_weights.load_pretrained(folder, dtype="int8")      # or: int8.quantize(float32_model)
    model.int8      # "int8 linears (onednn: oneDNN qlinear_pointwise, ...); first and last text blocks in float32"
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

ALPHA = 0.5  # SmoothQuant's migration strength: 0.5 splits the range evenly between activations and weights
KEEP_FLOAT = {"text_model": (0, -1)}  # per tower, the blocks whose linears stay float32 (negative: from the end)
LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # the linears of a block that are quantized
QMAX = 127  # symmetric int8: -127..127 (-128 unused, so that negating a value never overflows)
# Without VNNI (AVX2, early AVX-512), int8 products are summed by vpmaddubsw, which adds two u8·s8 products into a
# saturating int16: full-range operands overflow it and the results are silently wrong. Weights in -63..63 keep
# every pair sum below 2^15 (255·63·2 < 32767), so there the weights get 7 bits (saturates() decides, by trying).
QMAX_NO_VNNI = 63

# The built-in calibration set (see the docstring): images, texts per batch, and the texts' lengths in tokens.
CALIBRATION_IMAGES = 2  # 514 image tokens: the float32 forward pass over them is most of the time int8 takes to load
CALIBRATION_TEXTS = 16
CALIBRATION_LENGTHS = (4, 24)
CALIBRATION_SEED = 0

KERNELS = ("onednn", "int_mm")
# Towers whose blocks normalise *before* attention and MLP (altclip.VisionBlock): there, a LayerNorm's output feeds
# one linear only, so the smoothing can be folded into that LayerNorm. In the text tower's post-LN blocks the
# LayerNorm's output is also the residual stream, which must stay as it is.
PRE_LN_TOWERS = ("vision_model",)
QUICK_GELU_ALPHA = 1.702  # quick_gelu(h) = h·σ(1.702h) = silu(1.702h) / 1.702


# -----------------------------------------------------------------------------
# Which kernel runs here.


def _onednn_works() -> str | None:
    """Why oneDNN's int8 linear cannot run here, or None when it can (tried once on a tiny product)."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    ops = getattr(torch.ops, "onednn", None)
    if ops is None or not (hasattr(ops, "qlinear_pointwise") and hasattr(ops, "qlinear_prepack")):
        return "this PyTorch version lacks torch.ops.onednn.qlinear_pointwise/qlinear_prepack"
    try:
        w = torch.ones(8, 16, dtype=torch.int8)
        y = _qlinear(torch.ones(2, 16, dtype=torch.int8), torch.ops.onednn.qlinear_prepack(w, [2, 16]),
                     torch.ones(8), torch.zeros(8, dtype=torch.long))
        if not torch.equal(y, torch.full((2, 8), 16.0)):
            return "oneDNN's int8 linear gave a wrong result on this CPU"
    except RuntimeError as e:
        return f"oneDNN's int8 linear does not run on this CPU ({str(e).splitlines()[0]})"
    return None


def _int_mm_works() -> str | None:
    if not hasattr(torch, "_int_mm"):
        return "this PyTorch version lacks torch._int_mm"
    try:
        y = torch._int_mm(torch.ones(17, 16, dtype=torch.int8), torch.ones(16, 8, dtype=torch.int8))
        if not torch.equal(y, torch.full((17, 8), 16, dtype=torch.int32)):
            return "torch._int_mm gave a wrong result on this CPU"
    except RuntimeError as e:
        return f"torch._int_mm does not run here ({str(e).splitlines()[0]})"
    return None


_CHECKS = {"onednn": _onednn_works, "int_mm": _int_mm_works}
_DESCRIPTIONS = {"onednn": "oneDNN qlinear_pointwise, weights prepacked",
                 "int_mm": "torch._int_mm, int32 dequantised in float32"}


def kernel_order(onednn_runs: bool) -> tuple[tuple[str, ...], str]:
    """(KERNELS in the order to try them on this CPU, why that order): oneDNN's prepacked linear first, except where
    its int8 sums saturate (no VNNI: the AVX2 class), where torch._int_mm was measured faster (bench/README.md)."""
    if onednn_runs and saturates("onednn"):
        return ("int_mm", "onednn"), "before oneDNN's: faster without VNNI"
    return KERNELS, ""


def choose_kernel() -> tuple[str | None, str]:
    """(the fastest kernel that runs here, or None; one line saying which and, for the skipped ones, why not)."""
    reasons = {name: _CHECKS[name]() for name in KERNELS}  # why each cannot run here, or None
    order, why_order = kernel_order(reasons["onednn"] is None)
    skipped = []
    for name in order:
        why_not = reasons[name]
        if why_not is None:
            notes = [why_order] if name == order[0] and why_order else []
            notes += [f"fallback: {'; '.join(skipped)}"] if skipped else []
            return name, _DESCRIPTIONS[name] + (f" ({'; '.join(notes)})" if notes else "")
        skipped.append(why_not)
    return None, "; ".join(skipped)


def available() -> tuple[bool, str]:
    """Whether int8 linears can run on this CPU, and a one-line reason either way."""
    kernel, why = choose_kernel()
    return kernel is not None, why


# -----------------------------------------------------------------------------
# The quantized linear.


def _qlinear(q, packed, r, zeros):
    """oneDNN: float32 (q Qᵀ) · r, with the activation's scale 1 and zero point 0 (t is applied by the caller)."""
    return torch.ops.onednn.qlinear_pointwise(q, 1.0, 0, packed, r, zeros, None, 1.0, 0, torch.float32, "none", [], "")


def quantize_weight(weight: torch.Tensor, inplace: bool = False,
                    qmax: int = QMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float → (Q int8 (N, K), r float32 (N,)) with weight ≈ Q · r[:, None], one scale per output channel:
    the same rounding as the activations', a row being an output channel here, to ±qmax."""
    q, r = quantize_rows(weight, inplace, qmax)
    return q, r.squeeze(1)


@functools.cache
def saturates(kernel: str) -> bool:
    """Whether `kernel` sums int8 products in saturating 16-bit steps on this CPU (no VNNI): tried on a product of
    full-range operands whose exact result is known."""
    x, w = torch.full((2, 64), QMAX, dtype=torch.int8), torch.full((8, 64), QMAX, dtype=torch.int8)
    if kernel == "onednn":
        y = _qlinear(x, torch.ops.onednn.qlinear_prepack(w, [2, 64]), torch.ones(8), torch.zeros(8, dtype=torch.long))
    else:
        y = torch._int_mm(torch.cat([x] * 9), w.t())[:2].float()  # _int_mm wants more than 16 rows on some builds
    return not torch.equal(y, torch.full((2, 8), float(64 * QMAX * QMAX)))


def weight_qmax(kernel: str) -> int:
    """The largest int8 weight magnitude `kernel` computes exactly on this CPU: QMAX, or QMAX_NO_VNNI."""
    return QMAX_NO_VNNI if saturates(kernel) else QMAX


def quantize_rows(x: torch.Tensor, inplace: bool = False, qmax: int = QMAX) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float → (q int8 (M, K), t float32 (M, 1)) with x ≈ q · t, |q| ≤ qmax, one scale per row (token).

    inplace: overwrite `x` (a temporary of the caller's) instead of allocating. max|x| is read as max(max x, -min x),
    without the temporary that abs() would make (and faster than torch.aminmax on CPU).
    """
    t = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_()).clamp_(min=1e-12) / qmax
    x = x.mul_(t.reciprocal()) if inplace else x * t.reciprocal()
    return x.round_().to(torch.int8), t  # |x/t| ≤ qmax (up to rounding): no clamp needed


def smoothing(act_max: torch.Tensor, weight: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """SmoothQuant's s (K,): s_j = max|X_j|^α / max|W_j|^(1-α), from calibration's max|X_j| and the (N, K) weight."""
    weight = weight.detach()
    w_max = torch.maximum(weight.amax(dim=0), weight.amin(dim=0).neg()).float()  # max_n |W_nj|, without a copy of |W|
    return (act_max.float().clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


def _silu_(y):
    return torch.nn.functional.silu(y, inplace=True)


ACTIVATIONS = {"none": None, "silu": _silu_, "gelu": torch.ops.aten.gelu_}  # applied in place to the output


class Int8Linear(nn.Module):
    """y = act(x Wᵀ + b) with W in int8 (per output channel) and x quantized per token.

    weight, bias: float; smooth: SmoothQuant's s (K,) still to divide the input by, or None where it was folded
    into whatever computes the input (then `weight` already carries it). activation: "none", "silu" or "gelu",
    applied in place. own_input: the input is a temporary nobody else reads (the previous Int8Linear's output), so
    it may be overwritten instead of copied. input_mean: the input's mean per channel in calibration (K,), to
    correct the bias with (Nagel et al., "Data-Free Quantization", 2019, https://arxiv.org/abs/1906.04721): rounding
    the weights shifts the output by (Ŵ - W)·x, whose mean over the inputs, (Ŵ - W)·mean(x), is the same for every
    token and is taken out of the bias. What stays is the part that varies from token to token.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str, smooth: torch.Tensor | None = None,
                 activation: str = "none", own_input: bool = False, input_mean: torch.Tensor | None = None):
        super().__init__()
        weight = weight.detach().float()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        if smooth is not None:
            weight = weight * smooth  # x Wᵀ = (x / s)(W s)ᵀ
        self.register_buffer("inv_smooth", None if smooth is None else 1 / smooth)
        if input_mean is not None:
            mean = input_mean.float() if smooth is None else input_mean.float() / smooth  # the mean of x / s
            mean_out = weight @ mean  # W·mean, before `weight` is overwritten
        # inplace: a product of our own may be overwritten
        q, r = quantize_weight(weight, inplace=smooth is not None, qmax=weight_qmax(kernel))
        del weight
        if input_mean is not None:  # bias - (Ŵ - W)·mean, Ŵ = Q·r
            shift = torch.cat([Q.float() @ mean for Q in q.split(1024)]) * r - mean_out  # Q in slices: no (N, K) copy
            bias = -shift if bias is None else bias.detach().float() - shift
        self.kernel, self.activation, self.own_input = kernel, activation, own_input
        if kernel == "onednn":
            # [1024, K]: a typical row count (an image batch's tokens), to steer the layout; any number of rows works
            self.register_buffer("weight", torch.ops.onednn.qlinear_prepack(q, [1024, self.in_features]))
            self.register_buffer("zeros", torch.zeros(self.out_features, dtype=torch.long))
        elif kernel == "int_mm":
            self.register_buffer("weight", q.t())  # (K, N): _int_mm's layout; a view of Q, no copy
        else:
            raise ValueError(f"unknown int8 kernel {kernel!r} (known: {', '.join(KERNELS)})")
        self.register_buffer("scale", r)  # (N,) r
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        if len(x) == 0:
            return x.new_zeros(*shape[:-1], self.out_features)
        own = self.own_input
        if self.inv_smooth is not None:
            x, own = (x.mul_(self.inv_smooth) if own else x * self.inv_smooth), True
        q, t = quantize_rows(x, inplace=own)
        del x
        if self.kernel == "onednn":
            y = _qlinear(q, self.weight, self.scale, self.zeros)  # (M, N) = (q Qᵀ)·r
        else:
            y = torch._int_mm(q, self.weight).float().mul_(self.scale)  # int32 → float32 (exact below 2^24), · r
        y = y.mul_(t) if self.bias is None else torch.addcmul(self.bias, y, t, out=y)  # · t + b, in place
        if self.activation != "none":
            ACTIVATIONS[self.activation](y)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}, "
                f"activation={self.activation}, smoothing={'folded' if self.inv_smooth is None else 'on input'}")


# -----------------------------------------------------------------------------
# Quantizing a model: calibrate, then swap each block's linears, block by block.


def calibration_inputs(config, seed: int = CALIBRATION_SEED):
    """(pixel_values, input_ids, attention_mask): the built-in calibration set, made from a seed.

    Images: smooth colour fields (a random 4×4 grid of colours resized bicubically) plus a little noise, in the
    normalised range CLIP's preprocessing gives. Texts: <s>, random vocabulary ids, </s>, right-padded.
    """
    g = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    coarse = torch.randn(CALIBRATION_IMAGES, 3, 4, 4, generator=g)
    pixels = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    pixels = pixels + 0.1 * torch.randn(pixels.shape, generator=g)
    text = config.text
    pad, low, high = text.pad_token_id, 3, text.vocab_size - 1  # ids 0-2 are <s>, <pad>, </s>; the last is <mask>
    lengths = torch.randint(CALIBRATION_LENGTHS[0], CALIBRATION_LENGTHS[1] + 1, (CALIBRATION_TEXTS,), generator=g)
    lengths = lengths.clamp(max=text.max_position_embeddings - pad - 1)
    ids = torch.full((CALIBRATION_TEXTS, int(lengths.max())), pad, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = 0, 2
        ids[i, 1:n - 1] = torch.randint(low, max(high, low + 1), (n - 2,), generator=g)
    return pixels, ids, (ids != pad).long()


def _kept_float(tower_name: str, n_blocks: int) -> set[int]:
    return {i % n_blocks for i in KEEP_FLOAT.get(tower_name, ())} if n_blocks else set()


@torch.no_grad()
def quantize_block(block, act_max: dict, kernel: str, pre_ln: bool, alpha: float = ALPHA, means: dict | None = None):
    """Replace the four linears of one block by Int8Linear, with SmoothQuant's factors folded where that is exact.

    act_max: per linear ("attn.qkv", …), the largest |input| per channel seen in calibration. means: per linear,
    the input's mean per channel in calibration, to correct the biases with (Int8Linear), or None not to.
    - attn.proj: its input is softmax(QKᵀ)·V, linear in V, so 1/s goes into the V rows of qkv (weight and bias);
    - attn.qkv, mlp.fc1 in a pre-LN block: into the LayerNorm before them (ln_1, ln_2), whose output only they read;
      elsewhere the input is divided by s on the way in;
    - mlp.fc1's activation runs in place on its output (quick_gelu as silu(1.702h)/1.702: 1.702 into fc1, 1/1.702
      into fc2), and mlp.fc2 smooths that output in place: nobody else reads it.
    """
    attn, mlp = block.attn, block.mlp
    act = mlp.act.__name__
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(f"no in-place int8 epilogue for the activation {act!r}")
    C = attn.proj.in_features

    s_proj = smoothing(act_max["attn.proj"], attn.proj.weight, alpha)
    qkv_w, qkv_b = attn.qkv.weight.detach().float().clone(), attn.qkv.bias.detach().float().clone()
    qkv_w[2 * C:] /= s_proj[:, None]  # V rows: (x W_vᵀ + b_v) / s
    qkv_b[2 * C:] /= s_proj
    s_qkv = smoothing(act_max["attn.qkv"], qkv_w, alpha)
    s_fc1 = smoothing(act_max["mlp.fc1"], mlp.fc1.weight, alpha)
    fc1_w, fc1_b, fc2_w, fc2_in = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, 1.0  # fc2_in: fc2's input's scale
    if act == "quick_gelu":
        fc1_w, fc1_b = fc1_w * QUICK_GELU_ALPHA, fc1_b * QUICK_GELU_ALPHA
        fc2_w, fc2_in = fc2_w / QUICK_GELU_ALPHA, QUICK_GELU_ALPHA
    fc2_max = act_max["mlp.fc2"] * fc2_in
    s_fc2 = smoothing(fc2_max, fc2_w, alpha)
    on_input = {}  # the smoothing still to apply to each linear's input
    if pre_ln:
        for ln, s in ((block.ln_1, s_qkv), (block.ln_2, s_fc1)):
            ln.weight.div_(s)
            ln.bias.div_(s)
        qkv_w, fc1_w = qkv_w * s_qkv, fc1_w * s_fc1
        folded = {"attn.qkv": 1 / s_qkv, "mlp.fc1": 1 / s_fc1}
    else:
        on_input = {"qkv": s_qkv, "fc1": s_fc1}
        folded = {}

    def mean(path, factor=1.0):  # the input's mean as the int8 linear receives it; None: no bias correction
        return None if means is None else means[path] * folded.get(path, 1.0) * factor

    attn.qkv = Int8Linear(qkv_w, qkv_b, kernel, on_input.get("qkv"), input_mean=mean("attn.qkv"))
    attn.proj = Int8Linear(attn.proj.weight * s_proj, attn.proj.bias, kernel, input_mean=mean("attn.proj", 1 / s_proj))
    mlp.fc1 = Int8Linear(fc1_w, fc1_b, kernel, on_input.get("fc1"), input_mean=mean("mlp.fc1"),
                         activation="silu" if act == "quick_gelu" else "gelu")
    mlp.fc2 = Int8Linear(fc2_w, mlp.fc2.bias, kernel, s_fc2, own_input=True, input_mean=mean("mlp.fc2", fc2_in))
    mlp.act = _identity


def _identity(x):
    return x


def quantize(model, kernel: str | None = None, calibration=None, alpha: float = ALPHA, correct_bias: bool = True):
    """Turn a float32 altclip.AltCLIP into the int8 model, in place; returns it. Sets `model.int8` to a description.

    kernel: one of KERNELS, or None for choose_kernel()'s. calibration: (pixel_values, input_ids, attention_mask)
    to take the activation ranges from, instead of the built-in set (calibration_inputs). correct_bias: take the
    weights' rounding error on the mean input out of the biases (Int8Linear's input_mean).

    One float32 forward pass over the calibration inputs records each linear's largest |input| and mean input per
    channel; as soon as a block has run, its linears are replaced by Int8Linear and its float32 weights dropped. So
    the float32 weights of only one block are needed at a time (with memory-mapped weights, the rest are never all
    read in).
    """
    if kernel is None:
        kernel, why = choose_kernel()
        if kernel is None:
            raise RuntimeError(f"int8 cannot run on this CPU: {why}")
    else:
        why = _DESCRIPTIONS[kernel]
    if model.dtype != torch.float32:
        raise ValueError(f"int8 quantization starts from a float32 model, not {model.dtype}")
    pixels, ids, mask = calibration if calibration is not None else calibration_inputs(model.config)
    seen, handles = {}, []  # seen: per linear, [max |x| per channel, Σ x per channel, rows] of its inputs

    def record(name):
        def hook(module, args):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            m, total, rows = x.abs().amax(dim=0), x.sum(dim=0), len(x)
            if name in seen:
                m, total, rows = torch.maximum(seen[name][0], m), seen[name][1] + total, seen[name][2] + rows
            seen[name] = [m, total, rows]
        return hook

    def swap(block, prefix, pre_ln):
        def hook(module, args, output):
            if isinstance(block.mlp.fc2, Int8Linear):
                return  # already swapped (a block run twice)
            stats = {path: seen.pop(f"{prefix}.{path}") for path in LINEARS}
            act_max = {path: m for path, (m, _, _) in stats.items()}
            means = {path: total / rows for path, (_, total, rows) in stats.items()} if correct_bias else None
            quantize_block(block, act_max, kernel, pre_ln, alpha, means)
        return hook

    for tower_name in ("vision_model", "text_model"):
        blocks = getattr(model, tower_name).blocks
        keep = _kept_float(tower_name, len(blocks))
        for i, block in enumerate(blocks):
            if i in keep:
                continue
            prefix = f"{tower_name}.blocks.{i}"
            hs = [block.get_submodule(path).register_forward_pre_hook(record(f"{prefix}.{path}")) for path in LINEARS]
            hs.append(block.register_forward_hook(swap(block, prefix, tower_name in PRE_LN_TOWERS)))
            handles.extend(hs)
    try:
        with torch.no_grad():
            model.get_image_features(pixels)
            model.get_text_features(ids, mask)
    finally:
        for h in handles:
            h.remove()
    if seen:  # a block that did not run (cannot happen with both towers run): say so rather than leave it float
        raise RuntimeError(f"calibration did not reach {sorted(seen)}")
    kept = [f"{'first' if i == 0 else 'last'}" for i in sorted(_kept_float("text_model", len(model.text_model.blocks)))]
    bits = "" if weight_qmax(kernel) == QMAX else "; weights in 7 bits (this CPU's int8 sums saturate: no VNNI)"
    model.int8 = (f"int8 linears ({kernel}: {why}){bits}" + (f"; {' and '.join(kept)} text blocks in float32"
                                                              if kept else ""))
    return model


def describe(model) -> str | None:
    """The int8 path of a model in words (for -v), or None for a float model."""
    return getattr(model, "int8", None)
