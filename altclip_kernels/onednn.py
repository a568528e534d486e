"""CPU fast path: the blocks' linear layers with their weights packed once for oneDNN, activations fused in.

On CPU, `F.linear` hands PyTorch's (out, in) row-major weight to the BLAS on every call. oneDNN (PyTorch's CPU
deep-learning library) computes fastest from a blocked weight layout of its own; packing the weight into it once,
at load time, and fusing the MLP's activation into the matmul's epilogue saves work on every call. Whether that
pays depends on the CPU class (altclip_kernels/cpu.py): it was measured faster on AVX-512 CPUs in float32 and
bfloat16, but *slower* in float32 on AVX2-only ones, where the plain float32 path already runs near the FMA peak;
bfloat16 cannot be packed there at all (oneDNN needs native bf16 instructions). `faster_here()` says which, from
those measurements (bench/cpu.py; the figures are in bench/README.md). bfloat16 products are bit-identical to
F.linear's; float32 sums in another order, so results differ in the last bits.

    y = x Wᵀ + b                   PackedLinear(linear)
    y = gelu(x Wᵀ + b)             PackedLinear(linear, "gelu")        exact erf GELU, the text tower's MLP
    y = silu(x Wᵀ + b)             PackedLinear(linear, "silu")

quick_gelu has no oneDNN epilogue, but it is a scaled silu: quick_gelu(h) = h·σ(1.702h) = silu(1.702h) / 1.702.
So the image tower's MLP fc2(quick_gelu(fc1(x))) becomes fc2'(silu(fc1'(x))) with fc1' = 1.702·fc1 (weight and
bias) and fc2' = fc2's weight / 1.702.

The ops are the ones torch.compile's CPU backend emits for the same purpose (torch.ops.mkldnn._reorder_linear_weight
and _linear_pointwise); they are private to PyTorch, so `available()` checks that they exist. Packing is one-way:
the packed model keeps no plain weights (load again without packing for those).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import cpu

QUICK_GELU_ALPHA = 1.702


def available(dtype: torch.dtype = torch.float32) -> tuple[bool, str]:
    """Whether linears of this dtype can be packed for oneDNN here, and a one-line reason either way."""
    if dtype not in (torch.float32, torch.bfloat16):
        return False, f"oneDNN packing covers float32 and bfloat16, not {dtype}"
    if not torch.backends.mkldnn.is_available():
        return False, "this PyTorch build has no oneDNN (mkldnn)"
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return False, "this PyTorch version lacks torch.ops.mkldnn._reorder_linear_weight/_linear_pointwise"
    if not cpu.native(dtype):  # oneDNN's packing raises for bf16 without native instructions (it does not emulate)
        return False, f"oneDNN packs {cpu.dtype_name(dtype)} only with native instructions, and {cpu.missing(dtype)}"
    return True, "oneDNN packed linears"


def faster_here(dtype: torch.dtype = torch.float32) -> tuple[bool, str]:
    """Whether packing was *measured* faster than the plain path on this CPU class for `dtype`, and why (not).

    The automatic choice (`--onednn auto`) follows this: it packs only where a benchmark on this class of CPU showed a
    gain (cpu.ONEDNN_MEASURED_FASTER); elsewhere the plain path runs, which is never slower than itself.
    """
    ok, why = available(dtype)
    if not ok:
        return False, why
    measured = cpu.ONEDNN_MEASURED_FASTER.get((cpu.capability(), dtype))
    if measured is None:
        return False, (f"packing {cpu.dtype_name(dtype)} was not measured faster on this CPU class ({cpu.capability()}); "
                       f"the plain path runs")
    return True, measured


class PackedLinear(nn.Module):
    """y = act(x Wᵀ + b) with W packed for oneDNN; act ∈ {none, gelu (exact), silu}. Takes (..., in) inputs.

    weight_scale, bias_scale: constants folded into W and b (computed in float32, rounded once to their dtype).
    """

    ATTRS = {"none": ("none", ""), "gelu": ("gelu", "none"), "silu": ("swish", "")}  # oneDNN's name, algorithm

    def __init__(self, linear: nn.Linear, activation: str = "none", weight_scale: float = 1.0,
                 bias_scale: float = 1.0, batch_hint: int = 1024):
        super().__init__()
        weight = linear.weight.detach()
        if weight_scale != 1.0:
            weight = (weight.float() * weight_scale).to(weight.dtype)
        bias = None if linear.bias is None else linear.bias.detach()
        if bias is not None and bias_scale != 1.0:
            bias = (bias.float() * bias_scale).to(bias.dtype)
        self.out_features = weight.shape[0]
        # batch_hint: how many rows to expect; any number of rows works, this only steers oneDNN's choice of layout.
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, batch_hint))
        self.register_buffer("bias", bias)
        self.attr, self.algorithm = self.ATTRS[activation]

    def forward(self, x):
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self.attr, [],
                                               self.algorithm)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        return f"out_features={self.out_features}, activation={self.attr}"


def pack(model) -> None:
    """Swap the linears in every block of an altclip.AltCLIP for PackedLinear, in place, MLP activations fused.

    Each original weight is dropped as soon as its packed copy exists, so (with weights memory-mapped one tensor at a
    time, as load_weights reads safetensors) packing needs no second copy of the model in memory.
    """
    for tower in (model.vision_model, model.text_model):
        for block in tower.blocks:
            attn, mlp = block.attn, block.mlp
            attn.qkv, attn.proj = PackedLinear(attn.qkv), PackedLinear(attn.proj)
            act = mlp.act.__name__
            if act == "quick_gelu":  # quick_gelu(h) = silu(1.702 h) / 1.702, constants folded into fc1 and fc2
                mlp.fc1 = PackedLinear(mlp.fc1, "silu", QUICK_GELU_ALPHA, QUICK_GELU_ALPHA)
                mlp.fc2 = PackedLinear(mlp.fc2, weight_scale=1 / QUICK_GELU_ALPHA)
            elif act == "gelu":
                mlp.fc1, mlp.fc2 = PackedLinear(mlp.fc1, "gelu"), PackedLinear(mlp.fc2)
            else:
                raise ValueError(f"no fused oneDNN epilogue for the activation {act!r}")
            mlp.act = _identity


def _identity(x):
    return x
