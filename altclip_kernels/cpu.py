"""What this CPU can do, and the fast-path choices measured on each class of CPU.

x86 CPUs that run this project fall into two classes that behave differently:

    class      vector units           bfloat16 / float16 matmuls        e.g.
    AVX512     AVX-512 (BW, VL, DQ)   native bf16 (AVX512-BF16, AMX)   AMD Zen 4+, Intel Xeon Sapphire Rapids+
    AVX2       AVX2 + FMA only        emulated: ~4-6x slower than fp32  AMD Zen 1-3, most Intel consumer CPUs

PyTorch says which kernels it dispatched to (`torch.backends.cpu.get_cpu_capability()`: "AVX512", "AVX2", …) and
whether oneDNN has native low-precision instructions here (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`, which
asks for AVX512-BW/VL/DQ or AVX-NE-CONVERT, exactly what its bf16 packing op requires; `_is_mkldnn_fp16_supported()`
likewise for float16). Automatic choices below are made from these answers and from measurements on each class, never
from one class's figures applied to the other.
"""
from __future__ import annotations

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)

# Where packing the linears for oneDNN (altclip_kernels/onednn.py) was measured faster than the plain path, per CPU
# class and dtype (bench/cpu.py; figures and machines in bench/README.md). A (class, dtype) not listed runs the plain
# path automatically: on AVX2 packed float32 was slower (the plain path is already near the FMA peak there), and
# bfloat16 cannot be packed without native instructions.
ONEDNN_MEASURED_FASTER = {
    ("AVX512", torch.float32): "measured faster on AVX-512 CPUs (bench/README.md)",
    ("AVX512", torch.bfloat16): "measured faster on AVX-512 CPUs (bench/README.md)",
}

# How much slower an emulated low-precision dtype runs than float32, for the one-line warning (bench/README.md has
# the matmul and image-feature figures behind it, measured on an AVX2 CPU).
EMULATED_SLOWDOWN = "~5x"


class EmulatedDtypeWarning(UserWarning):
    """A low-precision dtype was asked for on a CPU that has no native instructions for it: it works, slowly."""


def capability() -> str:
    """The vector instruction set PyTorch's CPU kernels were dispatched to: "AVX512", "AVX2", "DEFAULT", …"""
    return torch.backends.cpu.get_cpu_capability()


def native(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies `dtype` matrices natively (float32 always; bf16/fp16 only with the instructions)."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


def describe() -> str:
    """This CPU's class in a few words, for -v and benchmark headers: e.g. "AVX2, bfloat16 emulated"."""
    low = [f"{dtype_name(d)} {'native' if native(d) else 'emulated'}" for d in LOW_PRECISION]
    return f"{capability()}, {', '.join(low)}"


def missing(dtype: torch.dtype) -> str:
    """What this CPU lacks for native `dtype`, in words (empty if nothing)."""
    if native(dtype):
        return ""
    needs = {torch.bfloat16: "AVX-512 BW/VL/DQ or AVX-NE-CONVERT",
             torch.float16: "native float16 matmul instructions such as AVX512-FP16"}[dtype]
    return f"this CPU ({capability()}) has no native {dtype_name(dtype)} (needs {needs})"


def emulation_warning(dtype: torch.dtype) -> str | None:
    """One line for stderr when `dtype` would run emulated on this CPU, else None."""
    if dtype not in LOW_PRECISION or native(dtype):
        return None
    return (f"{missing(dtype)}: {dtype_name(dtype)} runs emulated, {EMULATED_SLOWDOWN} slower than float32; "
            f"float32 is the fast choice on this CPU")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
