"""altclip_kernels/onednn.py: linears packed for oneDNN (CPU), activations fused, against plain torch; altclip_kernels/cpu.py: the
CPU class decides what can be packed and what is packed automatically.

Tolerances: float32 1e-5 absolute on a single linear (oneDNN sums in another order than MKL; seen ~1e-6), 1e-4 on
the whole model's logits. bfloat16 single linears: altclip_kernels/onednn.py says the packed products are bit-identical to
F.linear's, so with no activation they are compared exactly; with a fused activation, see TOL. The whole bfloat16
model: folding quick_gelu's 1.702 into bfloat16 weights rounds them once more, so it is held to a cosine of 0.999 with
float32.

Tests that pack need the capability and are skipped, with available()'s reason, only on a CPU that lacks it; the
tests of the fallback (a clear error, the plain path chosen automatically) run on every CPU, simulating the other
CPU class where this one is not it.
"""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cli
from altclip import quick_gelu
from helpers import save_checkpoint, tiny_reference
from altclip_kernels import cpu, onednn
from load_weights import load_pretrained
from helpers import images, ragged_batch

# Against the float32 reference act(x Wᵀ + b). bfloat16: oneDNN accumulates in float32 and applies a fused activation
# to the float32 accumulator, then rounds once to bfloat16, so the result is the float32 value rounded: within half a
# bfloat16 ulp (2^-8 relative; bfloat16 has 8 significant bits). Allowed: one ulp, 2^-7 relative, plus 1e-5 absolute
# for outputs near zero, where float32's own summation error (~1e-6 here) is not small relative to the value.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=1e-5, rtol=2**-7)}


def needs_packing(dtype):
    ok, why = onednn.available(dtype)
    return pytest.mark.skipif(not ok, reason=f"oneDNN packing of {dtype}: {why}")


def simulate(monkeypatch, capability: str, native_bf16: bool):
    """Make altclip_kernels/cpu.py answer as a CPU of another class would (the ops themselves still run on this one)."""
    monkeypatch.setattr(cpu, "capability", lambda: capability)
    monkeypatch.setattr(cpu, "native", lambda dtype: dtype == torch.float32 or (dtype == torch.bfloat16 and native_bf16))


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, marks=needs_packing(torch.float32)),
                                   pytest.param(torch.bfloat16, marks=needs_packing(torch.bfloat16))])
@pytest.mark.parametrize("rows", [1, 7, 257])
@pytest.mark.parametrize("activation,reference", [("none", lambda h: h), ("gelu", F.gelu), ("silu", F.silu)])
def test_packed_linear_equals_torch(dtype, rows, activation, reference):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40).to(dtype)
    x = torch.randn(2, rows, 96, dtype=dtype)
    packed = onednn.PackedLinear(linear, activation)
    with torch.no_grad():
        if dtype == torch.bfloat16 and activation == "none":  # the claim: bit for bit what F.linear gives
            torch.testing.assert_close(packed(x), F.linear(x, linear.weight, linear.bias), atol=0, rtol=0)
        want = reference(F.linear(x.float(), linear.weight.float(), linear.bias.float()))
        torch.testing.assert_close(packed(x).float(), want, **TOL[dtype])
    assert packed(x).shape == (2, rows, 40)


def test_quick_gelu_is_a_scaled_silu():
    """The identity the image tower's packed MLP relies on: h·σ(1.702h) = silu(1.702h)/1.702."""
    h = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    torch.testing.assert_close(quick_gelu(h), F.silu(1.702 * h) / 1.702, atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_checkpoint(tiny_reference(seed=4), tmp_path_factory.mktemp("tiny"))


@needs_packing(torch.float32)
def test_packed_model_equals_the_plain_one(folder):
    plain, packed = load_pretrained(folder), load_pretrained(folder, onednn=True)
    assert packed.onednn and not plain.onednn and "oneDNN packed linears" in repr(packed)
    ids, mask = ragged_batch([30, 2, 11])
    args = dict(input_ids=ids, attention_mask=mask, pixel_values=images(3))
    with torch.no_grad():
        a, b = packed(**args), plain(**args)
        torch.testing.assert_close(packed.get_text_features(ids, mask), plain.get_text_features(ids, mask),
                                   atol=1e-4, rtol=0)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-4, rtol=0)


@needs_packing(torch.bfloat16)
def test_packed_bfloat16_stays_close_to_float32(folder):
    full, packed = load_pretrained(folder), load_pretrained(folder, dtype=torch.bfloat16, onednn=True)
    with torch.no_grad():
        cos = F.cosine_similarity(packed.get_image_features(images(2)), full.get_image_features(images(2)))
    assert cos.min() > 0.999, cos


def test_cannot_pack_what_onednn_does_not_cover(folder):
    with pytest.raises(RuntimeError, match="onednn=True, but oneDNN packing covers float32 and bfloat16"):
        load_pretrained(folder, dtype=torch.float16, onednn=True)
    with pytest.raises(RuntimeError, match="onednn=True, but oneDNN packing is for CPU models"):
        load_pretrained(folder, device="meta", onednn=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_available_never_says_yes_where_packing_raises(dtype):
    """On this CPU, whatever it is: available() says yes exactly when oneDNN's packing op works for the dtype."""
    weight = torch.randn(40, 96).to(dtype)
    ok, why = onednn.available(dtype)
    if ok:
        torch.ops.mkldnn._reorder_linear_weight(weight, 16)
    else:
        assert why
        if "this PyTorch" not in why:  # the op exists but this CPU cannot run it for the dtype
            with pytest.raises(RuntimeError):
                torch.ops.mkldnn._reorder_linear_weight(weight, 16)


def test_bfloat16_packing_without_native_bf16_is_a_clear_error(monkeypatch, folder):
    if cpu.native(torch.bfloat16):
        simulate(monkeypatch, "AVX2", native_bf16=False)  # this CPU has it: check the message an AVX2 CPU gives
    with pytest.warns(cpu.EmulatedDtypeWarning), pytest.raises(RuntimeError) as e:
        load_pretrained(folder, dtype=torch.bfloat16, onednn=True)
    message = str(e.value)
    assert message.startswith("onednn=True, but oneDNN packs bfloat16 only with native instructions")
    assert "has no native bfloat16 (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)" in message


# What --onednn auto must do per CPU class and dtype for a large folder on CPU, from the measurements recorded in
# altclip_kernels/cpu.py (AVX-512: packing faster in float32 and bfloat16; AVX2: slower in float32, impossible in bfloat16).
AUTO = [("AVX512", True, torch.float32, True), ("AVX512", True, torch.bfloat16, True),
        ("AVX512", False, torch.bfloat16, False), ("AVX512", True, torch.float16, False),
        ("AVX2", False, torch.float32, False), ("AVX2", False, torch.bfloat16, False),
        ("DEFAULT", False, torch.float32, False)]


@pytest.mark.parametrize("capability,native_bf16,dtype,packs", AUTO)
def test_auto_packs_only_where_measured_faster(monkeypatch, capability, native_bf16, dtype, packs):
    simulate(monkeypatch, capability, native_bf16)
    assert cli.choose_onednn("auto", 17, "cpu", dtype)[0] is packs
    assert cli.choose_onednn("auto", 3, "cpu", dtype)[0] is False  # too few images to repay packing
    assert cli.choose_onednn("auto", 17, "meta", dtype)[0] is False  # not a CPU model
    assert cli.choose_onednn("off", 17, "cpu", dtype)[0] is False
    assert cli.choose_onednn("on", 1, "cpu", dtype)[0] is True  # on insists; load_pretrained says if it can't
    if not packs:
        assert cli.choose_onednn("auto", 17, "cpu", dtype)[1]  # a reason for -v


def test_auto_on_this_cpu_packs_only_what_can_be_packed():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        if onednn.faster_here(dtype)[0]:
            assert onednn.available(dtype)[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_low_precision_warns_once_and_works(folder, dtype):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_pretrained(folder, dtype=dtype)
    emulated = [w for w in caught if issubclass(w.category, cpu.EmulatedDtypeWarning)]
    assert len(emulated) == (0 if cpu.native(dtype) else 1)
    if emulated:
        message = str(emulated[0].message)
        assert "\n" not in message and "emulated" in message and "float32" in message
        assert torch.backends.cpu.get_cpu_capability() in message
    with torch.no_grad():
        assert torch.isfinite(model.get_image_features(images(1))).all()
