"""The whole model with the Triton kernels on equals the model with them off.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on a GPU, compiled.
Tolerance: float32, 1e-4 absolute on logits and embeddings (the kernels sum in a different order than torch).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import altclip_kernels
from helpers import save_checkpoint, tiny_reference
from load_weights import load_pretrained
from helpers import images, ragged_batch

pytestmark = pytest.mark.skipif(not altclip_kernels.available()[0], reason=f"Triton cannot run: {altclip_kernels.available()[1]}")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32 = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_checkpoint(tiny_reference(seed=3), tmp_path_factory.mktemp("tiny"))


def test_kernels_on_equals_kernels_off(folder):
    fast = load_pretrained(folder, device=DEVICE, kernels=True)
    slow = load_pretrained(folder, device=DEVICE, kernels=False)
    assert fast.kernels and not slow.kernels
    assert "path=Triton kernels" in repr(fast) and "path=torch" in repr(slow)
    ids, mask = ragged_batch([20, 2, 9])  # includes a text of just <s></s>
    args = dict(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE), pixel_values=images(3).to(DEVICE))
    with torch.no_grad():
        a, b = fast(**args, output_hidden_states=True), slow(**args, output_hidden_states=True)
    for name in ("logits_per_image", "text_embeds", "image_embeds"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **F32, msg=name)
    for x, y in zip(a.text_model_output.hidden_states, b.text_model_output.hidden_states):
        torch.testing.assert_close(x, y, **F32)


def test_attention_probabilities_fall_back_to_the_readable_path(folder):
    fast = load_pretrained(folder, device=DEVICE, kernels=True)
    slow = load_pretrained(folder, device=DEVICE, kernels=False)
    ids, mask = ragged_batch([6, 3])
    with torch.no_grad():
        a = fast.text_model(ids.to(DEVICE), mask.to(DEVICE), output_attentions=True)
        b = slow.text_model(ids.to(DEVICE), mask.to(DEVICE), output_attentions=True)
    for x, y in zip(a.attentions, b.attentions):
        torch.testing.assert_close(x, y, **F32)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, **F32)


def test_switching_back_and_forth(folder):
    model = load_pretrained(folder, device=DEVICE, kernels=False)
    assert model.use_kernels(True).kernels and not model.use_kernels(False).kernels


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice made on a machine without CUDA")
def test_auto_picks_torch_without_cuda(folder):
    assert not load_pretrained(folder, kernels=None).kernels


def load_forcing_kernels_without_interpreter(source: str, before: str = ""):
    """Run `before`, then load_pretrained(source, kernels=True), in a fresh Python without TRITON_INTERPRET (the
    kernels read it at import). Exit status 3 and the message on stdout when it raises RuntimeError."""
    code = ("import load_weights, sys\n" + before +
            "try:\n"
            f"    load_weights.load_pretrained({source!r}, kernels=True)\n"
            "except RuntimeError as e:\n"
            "    print(e); sys.exit(3)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_forcing_kernels_without_gpu_or_interpreter_is_a_clear_error(folder):
    proc = load_forcing_kernels_without_interpreter(str(folder))
    assert proc.returncode == 3, proc.stderr
    assert "kernels=True" in proc.stdout and "TRITON_INTERPRET=1" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without CUDA")
def test_forcing_kernels_fails_before_anything_is_downloaded():
    """kernels=True where they cannot run says so before resolving a hub id (which would download the weights)."""
    proc = load_forcing_kernels_without_interpreter(
        "BAAI/AltCLIP", before="load_weights.resolve = lambda *a, **k: sys.exit('resolve was called')\n")
    assert proc.returncode == 3, proc.stderr
    assert "kernels=True" in proc.stdout


def test_text_features_with_padding_skipped(folder):
    """get_text_features packs the real tokens; with the kernels, attention still sees each text's own tokens."""
    fast = load_pretrained(folder, device=DEVICE, kernels=True)
    slow = load_pretrained(folder, device=DEVICE, kernels=False)
    ids, mask = ragged_batch([33, 2, 12, 7])
    with torch.no_grad():
        torch.testing.assert_close(fast.get_text_features(ids.to(DEVICE), mask.to(DEVICE)),
                                   slow.get_text_features(ids.to(DEVICE), mask.to(DEVICE)), **F32)


def test_a_head_size_the_kernel_lacks_is_refused_or_left_to_torch(folder, monkeypatch):
    """The mini AltCLIP's text tower has heads of 24 (96 wide, 4 heads), which the attention kernel does not take:
    kernels=True and use_kernels(True) say so in one line, and kernels=None on a CUDA machine runs torch instead of
    failing in the first forward."""
    import load_weights

    mini = Path(__file__).resolve().parents[1] / "examples" / "mini-altclip"
    with pytest.raises(RuntimeError, match=r"text tower's attention heads have size 24 \(96 / 4 heads\)"):
        load_pretrained(mini, kernels=True)
    model = load_pretrained(mini, kernels=False)
    with pytest.raises(RuntimeError, match="cannot run this model: the text tower's attention heads have size 24"):
        model.use_kernels(True)
    assert not model.kernels
    monkeypatch.setattr(altclip_kernels, "available", lambda: (True, "as on a machine with a CUDA device"))
    monkeypatch.setattr(altclip_kernels, "interpreted", lambda: False)
    assert not load_weights._want_kernels(None, torch.device("cuda"), model.config)
    assert load_weights._want_kernels(None, torch.device("cuda"), load_weights.load_config(folder))
