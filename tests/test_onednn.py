"""kernels/onednn.py: linears packed for oneDNN (CPU), activations fused, against plain torch.

Tolerances: float32 1e-5 absolute on a single linear (oneDNN sums in another order than MKL; seen ~1e-6), 1e-4 on
the whole model's logits; bfloat16: the packed products are those of F.linear, but folding quick_gelu's 1.702 into
bfloat16 weights rounds them once more, so the whole model is held to a cosine of 0.999 with float32.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from altclip import quick_gelu
from checkpoints import save_checkpoint, tiny_reference
from kernels import onednn
from load_weights import load_pretrained
from test_model import images, ragged_batch

pytestmark = pytest.mark.skipif(not onednn.available()[0], reason=f"oneDNN packing: {onednn.available()[1]}")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 257])
@pytest.mark.parametrize("activation,reference", [("none", lambda h: h), ("gelu", F.gelu), ("silu", F.silu)])
def test_packed_linear_equals_torch(dtype, rows, activation, reference):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40).to(dtype)
    x = torch.randn(2, rows, 96, dtype=dtype)
    packed = onednn.PackedLinear(linear, activation)
    with torch.no_grad():
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
