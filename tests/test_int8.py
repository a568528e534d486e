"""altclip_kernels/int8.py: int8 linears (per-channel weights, per-token activations, SmoothQuant folded in) against
float32, from one linear up to the full-size model, an outlier-stressed copy and the trained mini AltCLIP.

Tolerances, int8 against float32 (issue 22's goals):
- one linear: the exact bound of rounding both operands to half a step,
  |y - ŷ|_n ≤ Σ_k (t/2·|W_nk| + r_n/2·|x_k| + t·r_n/4) (t, r: the row's and the channel's step), plus 1e-4 for
  float32 sums; the two kernels agree within 1e-5
  relative (the same integer products, scaled in another order);
- embeddings: cosine to float32 ≥ 0.999 (image and text) on full-width random models and on their outlier-stressed
  copies (five channels of every LayerNorm weight ×40, the "massive activations" of CLIP-like models), where the
  issue asks for 0.995: see HELD_TO;
- the mini AltCLIP: zero-shot top-1 within 0.02 of float32 in every language (train.py's evaluation).
The kernel choice is tried on this CPU; where a kernel is missing the other one runs and the reason is said, simulated
here on CPUs that have both.
"""
import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import altclip
import cli
import index
from altclip_kernels import int8
from helpers import images, ragged_batch, save_checkpoint, tiny_model_folder, tiny_reference
from load_weights import load_pretrained

OK, WHY = int8.available()
needs_int8 = pytest.mark.skipif(not OK, reason=f"int8 cannot run on this CPU: {WHY}")
KERNELS_HERE = [k for k in int8.KERNELS if int8._CHECKS[k]() is None]

ROOT = Path(__file__).resolve().parents[1]
STRESSED_CHANNELS = [3, 100, 257, 511, 900]  # channels of every LayerNorm weight scaled ×40 in the stressed model
STRESS = 40.0


def rounding_bound(x, weight, smooth=None, weight_qmax=127):
    """The largest |int8 result − float result| per output, for rows x (M, K) and weight (N, K), when x/s is rounded
    per row to steps t and W·s per output channel to steps r."""
    if smooth is not None:
        x, weight = x / smooth, weight * smooth
    t = x.abs().amax(1, keepdim=True) / 127  # (M, 1)
    r = weight.abs().amax(1) / weight_qmax  # (N,)
    return t / 2 * weight.abs().sum(1) + r / 2 * x.abs().sum(1, keepdim=True) + t * r / 4 * x.shape[1]


@needs_int8
@pytest.mark.parametrize("kernel", KERNELS_HERE)
@pytest.mark.parametrize("rows", [1, 7, 257])
@pytest.mark.parametrize("smoothed", [False, True])
def test_int8_linear_within_the_rounding_bound(kernel, rows, smoothed):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    x = torch.randn(2, rows, 96) * torch.linspace(0.1, 10, 96)  # channels of very different ranges,
    x = x * torch.logspace(-2, 2, 2 * rows).view(2, rows, 1)  # and tokens too
    x0 = x.clone()
    smooth = int8.smoothing(x.reshape(-1, 96).abs().amax(0), linear.weight) if smoothed else None
    q = int8.Int8Linear(linear.weight, linear.bias, kernel, smooth)
    with torch.no_grad():
        y, want = q(x), linear(x)
        bound = rounding_bound(x.reshape(-1, 96), linear.weight, smooth, int8.weight_qmax(kernel)).view(2, rows, 40)
    assert torch.equal(x, x0), "the input was overwritten"
    assert y.shape == want.shape
    assert ((y - want).abs() <= bound + 1e-4).all(), ((y - want).abs() - bound).max()
    assert (y - want).abs().max() > 0  # it did quantize


@needs_int8
@pytest.mark.parametrize("activation,reference", [("silu", F.silu), ("gelu", F.gelu)])
def test_int8_linear_activation_and_own_input(activation, reference):
    torch.manual_seed(1)
    linear = nn.Linear(64, 48)
    x = torch.randn(5, 64)
    kernel = KERNELS_HERE[0]
    plain = int8.Int8Linear(linear.weight, linear.bias, kernel)
    fused = int8.Int8Linear(linear.weight, linear.bias, kernel, activation=activation, own_input=True)
    with torch.no_grad():
        want = reference(plain(x))
        torch.testing.assert_close(fused(x.clone()), want, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(len(KERNELS_HERE) < 2, reason=f"needs both int8 kernels here; has {KERNELS_HERE}")
def test_the_two_kernels_agree():
    torch.manual_seed(2)
    linear = nn.Linear(128, 72)
    x = torch.randn(3, 33, 128)
    smooth = int8.smoothing(x.reshape(-1, 128).abs().amax(0), linear.weight)
    with torch.no_grad():
        a, b = (int8.Int8Linear(linear.weight, linear.bias, k, smooth)(x) for k in int8.KERNELS)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_int8
@pytest.mark.parametrize("kernel", KERNELS_HERE)
def test_saturation_is_detected_and_avoided(kernel):
    """Full-range int8 products are exact where saturates() says no; with the weights it then uses (7 bits where it
    says yes) they are exact either way."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-127, 128, (40, 256), generator=g, dtype=torch.int8)
    x[0] = 127  # the row that overflows 16-bit pair sums without VNNI
    qmax = int8.weight_qmax(kernel)
    w = torch.randint(-qmax, qmax + 1, (24, 256), generator=g, dtype=torch.int8)
    w[0] = qmax
    if kernel == "onednn":
        y = int8._qlinear(x, torch.ops.onednn.qlinear_prepack(w, [40, 256]), torch.ones(24),
                          torch.zeros(24, dtype=torch.long))
    else:
        y = torch._int_mm(x, w.t()).float()
    assert torch.equal(y.double(), x.double() @ w.double().t())


@needs_int8
def test_a_cpu_without_vnni(tmp_path):
    """The other class, for real where this CPU has VNNI: oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA, read when it
    starts, hence a fresh process). Its int8 sums saturate; saturates() must see it, torch._int_mm must go first, and
    the 7-bit weights keep a linear within its rounding bound. (On an AVX2-only CPU this is what runs anyway.)"""
    import os
    import subprocess
    script = (
        "import torch, test_int8 as T\n"
        "from altclip_kernels import int8\n"
        "k = int8.choose_kernel()[0]\n"
        "assert k == 'int_mm' and int8.saturates(k) and int8.weight_qmax(k) == 63, k\n"
        "torch.manual_seed(0); lin = torch.nn.Linear(256, 64); x = torch.randn(33, 256) * 3\n"
        "x[0] = x[0].abs()  # all positive: the row that overflows with 8-bit weights\n"
        "q = int8.Int8Linear(lin.weight, lin.bias, k)\n"
        "with torch.no_grad():\n"
        "    err = (q(x) - lin(x)).abs()\n"
        "    assert (err <= T.rounding_bound(x, lin.weight, None, 63) + 1e-4).all(), err.max()\n"
        "print('ok', k)\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]


@needs_int8
@pytest.mark.parametrize("kernel", KERNELS_HERE)
def test_bias_correction_takes_out_the_mean_shift(kernel):
    """Inputs with a mean far from zero (as GELU's outputs are): the weights' rounding moves every output by about
    the same amount, (Ŵ - W)·mean(x). With input_mean, what is left of the mean error over the rows is the part
    the activations' rounding adds, which averages out."""
    torch.manual_seed(4)
    linear = nn.Linear(512, 64)
    x = torch.randn(300, 512) * 0.5 + torch.rand(512) * 3  # every channel's mean between 0 and 3
    smooth = int8.smoothing(x.abs().amax(0), linear.weight)
    with torch.no_grad():
        want = linear(x)
        plain = (int8.Int8Linear(linear.weight, linear.bias, kernel, smooth)(x) - want).mean(0)
        fixed = (int8.Int8Linear(linear.weight, linear.bias, kernel, smooth, input_mean=x.mean(0))(x) - want).mean(0)
    assert fixed.abs().max() < 0.2 * plain.abs().max(), (fixed.abs().max(), plain.abs().max())


@needs_int8
@pytest.mark.parametrize("kernel", KERNELS_HERE)
@pytest.mark.parametrize("tower", ["vision", "text"])
def test_bias_correction_in_a_block(tower, kernel):
    """quantize_block hands each linear its input's mean as that linear sees it: divided by the smoothing folded into
    a LayerNorm (vision) or into the V rows (attn.proj), times 1.702 after quick_gelu's split (vision fc2). The mean
    error of the block's output over its tokens then falls to a fifth (0.19 measured, either tower); one of those
    factors missing leaves 0.33 (the 1.702) to 4.7."""
    config = full_width(1)
    cfg = config.vision if tower == "vision" else config.text
    cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads = 256, 1024, 4
    block = (altclip.VisionBlock if tower == "vision" else altclip.TextBlock)(cfg).eval()
    g = torch.Generator().manual_seed(6)
    a = 0.06 * math.sqrt(3)
    with torch.no_grad():
        for p in block.parameters():
            p.uniform_(-a, a, generator=g)
        for m in block.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(1.0)
    x = torch.randn(2, 100, 256, generator=g) + torch.rand(256, generator=g) * 2
    inputs = {}
    hooks = [block.get_submodule(path).register_forward_pre_hook(
        lambda m, args, path=path: inputs.__setitem__(path, args[0].reshape(-1, args[0].shape[-1])))
        for path in int8.LINEARS]
    with torch.no_grad():
        want = block(x)[0]
    for h in hooks:
        h.remove()
    act_max = {path: v.abs().amax(0) for path, v in inputs.items()}
    means = {path: v.mean(0) for path, v in inputs.items()}
    errors = []
    for m in (None, means):
        quantized = copy.deepcopy(block)
        int8.quantize_block(quantized, act_max, kernel, pre_ln=tower == "vision", means=m)
        with torch.no_grad():
            errors.append((quantized(x)[0] - want).mean((0, 1)).norm())
    assert errors[1] < 0.25 * errors[0], errors


@pytest.mark.skipif(len(KERNELS_HERE) < 2, reason=f"needs both int8 kernels here; has {KERNELS_HERE}")
def test_kernel_order_follows_saturation(monkeypatch):
    """With VNNI, oneDNN's prepacked linear first; without it (sums saturate), torch._int_mm, measured faster there;
    and where that one cannot run, oneDNN's after all, saying why."""
    monkeypatch.setattr(int8, "saturates", lambda kernel: False)
    assert int8.choose_kernel() == ("onednn", int8._DESCRIPTIONS["onednn"])
    monkeypatch.setattr(int8, "saturates", lambda kernel: True)
    kernel, why = int8.choose_kernel()
    assert kernel == "int_mm" and why.endswith("(before oneDNN's: faster without VNNI)"), why
    monkeypatch.setitem(int8._CHECKS, "int_mm", lambda: "simulated: no torch._int_mm")
    kernel, why = int8.choose_kernel()
    assert kernel == "onednn" and why.endswith("(fallback: simulated: no torch._int_mm)"), why


def test_quantize_rows_and_weight():
    x = torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.0, 0.0], [3.0, -0.03, 0.0]])
    q, t = int8.quantize_rows(x.clone())
    assert q.dtype == torch.int8 and q[0].tolist() == [0, 64, -127] and q[1].tolist() == [0, 0, 0]
    torch.testing.assert_close(t.squeeze(1), torch.tensor([2 / 127, 1e-12 / 127, 3 / 127]))
    w = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
    Q, r = int8.quantize_weight(w)
    assert Q.tolist() == [[64, -127], [0, 0]] and r[0].item() == pytest.approx(1 / 127)


# -----------------------------------------------------------------------------
# Whole models, against their own float32 embeddings.


def random_model(config: altclip.AltCLIPConfig, seed: int, stressed: bool = False) -> altclip.AltCLIP:
    """A random AltCLIP as bench/common.py builds the full-size one (every tensor U(-a, a) with std 0.02, LayerNorm
    weights 1 + that); stressed: STRESSED_CHANNELS of every LayerNorm weight ×40."""
    model = altclip.AltCLIP(config).eval()
    g = torch.Generator().manual_seed(seed)
    a = 0.02 * math.sqrt(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.uniform_(-a, a, generator=g)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(1.0)
                if stressed:
                    m.weight[[c for c in STRESSED_CHANNELS if c < len(m.weight)]] *= STRESS
    return model


def int8_cosines(model, n_images=2, n_texts=8):
    """(image, text) cosines between the model's float32 embeddings and its int8 ones (quantizing it in place)."""
    pixels = images(n_images, seed=5)
    ids, mask = ragged_batch([5, 40, 12, 3, 27, 9, 64, 17][:n_texts], vocab=model.config.text.vocab_size, seed=5)
    with torch.no_grad():
        fi, ft = model.get_image_features(pixels), model.get_text_features(ids, mask)
        int8.quantize(model)
        qi, qt = model.get_image_features(pixels), model.get_text_features(ids, mask)
    return F.cosine_similarity(fi, qi), F.cosine_similarity(ft, qt)


def full_width(layers: int) -> altclip.AltCLIPConfig:
    config = altclip.AltCLIPConfig()  # BAAI/AltCLIP's widths
    config.vision.num_hidden_layers = config.text.num_hidden_layers = layers
    config.text.vocab_size = 1000  # the 250002-row embedding table adds memory and time, not information, here
    return config


# Issue 22's goals are a cosine of 0.999 on random weights and 0.995 on the stressed model. Both are held to 0.999
# here: without the outlier handling (α = 0, nothing kept in float32) the stressed image embeddings fall to 0.9983
# with four blocks and 0.9959 (text 0.9987) at full size, so a lost smoothing shows; with it they stay above 0.9990
# (four blocks) and 0.9995 (full size). Where the weights get 7 bits (a CPU without VNNI, see int8.saturates), the
# four-block model is held to 0.998 (its stressed image embeddings measured 0.99901 with oneDNN limited to AVX2),
# the full-size one to 0.999 (min 0.99926 over seeds 0 and 1, stressed or not; without the bias correction its text
# embeddings fall to 0.9984).
HELD_TO = 0.999 if not KERNELS_HERE or int8.weight_qmax(KERNELS_HERE[0]) == int8.QMAX else 0.998


@needs_int8
@pytest.mark.parametrize("stressed", [False, True])
def test_full_width_model(stressed):
    model = random_model(full_width(4), seed=1, stressed=stressed)
    image, text = int8_cosines(model)
    assert image.min() >= HELD_TO and text.min() >= HELD_TO, (image, text)
    assert isinstance(model.vision_model.blocks[0].attn.qkv, int8.Int8Linear)
    kept = [i for i, b in enumerate(model.text_model.blocks) if isinstance(b.mlp.fc1, nn.Linear)]
    assert kept == [0, 3]  # KEEP_FLOAT: the first and last text blocks
    assert "int8 linears" in model.int8 and "first and last text blocks in float32" in model.int8


@needs_int8
@pytest.mark.slow
@pytest.mark.parametrize("stressed", [False, True])
def test_full_size_model(stressed):
    """BAAI/AltCLIP's full size (24 + 24 blocks; a 1000-word vocabulary), random weights, built in memory (~1.5 min
    each on 2 cores)."""
    model = random_model(full_width(24), seed=0, stressed=stressed)
    image, text = int8_cosines(model)
    assert image.min() >= 0.999 and text.min() >= 0.999, (image, text)


# -----------------------------------------------------------------------------
# Loading, the command line, the index.


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_checkpoint(tiny_reference(seed=4), tmp_path_factory.mktemp("tiny"))


@needs_int8
def test_load_pretrained_int8(folder):
    full, q = load_pretrained(folder), load_pretrained(folder, dtype="int8")
    assert q.dtype == torch.float32 and q.int8 and getattr(full, "int8", None) is None
    assert all(isinstance(b.mlp.fc2, int8.Int8Linear) for b in q.vision_model.blocks)
    ids, mask = ragged_batch([30, 2, 11])
    with torch.no_grad():
        cos_i = F.cosine_similarity(q.get_image_features(images(3)), full.get_image_features(images(3)))
        cos_t = F.cosine_similarity(q.get_text_features(ids, mask), full.get_text_features(ids, mask))
    assert cos_i.min() > 0.999 and cos_t.min() > 0.999, (cos_i, cos_t)


def test_int8_refusals(folder, monkeypatch):
    with pytest.raises(RuntimeError, match="dtype='int8', but int8 is for CPU models"):
        load_pretrained(folder, dtype="int8", device="meta")
    with pytest.raises(RuntimeError, match="does not combine with onednn=True"):
        load_pretrained(folder, dtype="int8", onednn=True)
    monkeypatch.setitem(int8._CHECKS, "onednn", lambda: "simulated: no oneDNN int8")
    monkeypatch.setitem(int8._CHECKS, "int_mm", lambda: "simulated: no torch._int_mm")
    with pytest.raises(RuntimeError, match="simulated: no oneDNN int8; simulated: no torch._int_mm"):
        load_pretrained(folder, dtype="int8")


@needs_int8
def test_fallback_kernel_says_why(folder, monkeypatch):
    """A CPU (or PyTorch) without oneDNN's int8 linear: the portable kernel runs, and the reason is in the path."""
    if "int_mm" not in KERNELS_HERE:
        pytest.skip("torch._int_mm does not run here")
    monkeypatch.setitem(int8._CHECKS, "onednn", lambda: "simulated: no oneDNN int8")
    kernel, why = int8.choose_kernel()
    assert kernel == "int_mm" and "fallback: simulated: no oneDNN int8" in why
    q = load_pretrained(folder, dtype="int8")
    assert q.vision_model.blocks[0].mlp.fc1.kernel == "int_mm" and "simulated: no oneDNN int8" in q.int8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-altclip"))


@needs_int8
def test_cli_int8_verbose_names_the_path(capsys, model_dir):
    cat = ROOT / "examples" / "cat.jpg"
    code = cli.main([str(cat), "a cat", "a dog", "--model", str(model_dir), "--dtype", "int8", "-v", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "int8 on cpu" in err and "compute path: int8 linears (" in err, err
    code = cli.main([str(cat), "a cat", "a dog", "--model", str(model_dir), "--json"])
    want, _ = capsys.readouterr()
    got, want = json.loads(out)[0]["scores"], json.loads(want)[0]["scores"]
    assert max(abs(got[k] - want[k]) for k in want) < 0.01, (got, want)  # tiny model: all blocks but the image's int8


def test_cli_int8_refused_is_one_line(capsys, model_dir, monkeypatch):
    monkeypatch.setitem(int8._CHECKS, "onednn", lambda: "simulated: no oneDNN int8")
    monkeypatch.setitem(int8._CHECKS, "int_mm", lambda: "simulated: no torch._int_mm")
    code = cli.main([str(ROOT / "examples" / "cat.jpg"), "a cat", "--model", str(model_dir), "--dtype", "int8"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("altclip.py: error: --dtype int8, but simulated: no oneDNN int8"), err


@needs_int8
def test_search_keeps_int8_embeddings_apart(capsys, model_dir, tmp_path):
    """The index keys embeddings by dtype: a float32 search after an int8 one embeds again, an int8 one reuses."""
    for name in ("cat.jpg", "coffee.jpg"):
        (tmp_path / name).write_bytes((ROOT / "examples" / name).read_bytes())
    db = tmp_path / "index.sqlite"
    common = [str(tmp_path), "--search", "a cat", "--model", str(model_dir), "--index", str(db), "-v"]
    for dtype, from_index in (("int8", 0), ("float32", 0), ("int8", 2)):
        assert cli.main([*common, "--dtype", dtype]) == 0
        _, err = capsys.readouterr()
        assert f"{from_index} image(s) from the index, {2 - from_index} embedded" in err, (dtype, err)


def test_index_keys_int8_separately(folder):
    weights = folder / "model.safetensors"
    keys = {d: index.model_key(folder, weights, d) for d in ("float32", "bfloat16", "int8")}
    assert len(set(keys.values())) == 3, keys


def test_int8_is_not_the_default():
    assert cli.parse_args(["x.jpg", "a"]).dtype == "float32"
    assert "int8" in cli.DTYPES


@needs_int8
@pytest.mark.slow
def test_mini_altclip_zero_shot_within_0_02_in_every_language():
    """The trained mini AltCLIP (examples/mini-altclip), evaluated as `train.py --eval` does, on a fresh test set:
    int8's zero-shot top-1 within 0.02 of float32's in every language (~1 min)."""
    import train
    from tokenizer import Tokenizer

    mini = ROOT / "examples" / "mini-altclip"
    tokenizer = Tokenizer.from_pretrained(mini)
    test = train.make_test_set(train.TEST_SEED, 5, 224)  # 180 images, 5 per class
    full = train.evaluate(load_pretrained(mini), tokenizer, test)["zero_shot_top1"]
    quantized = train.evaluate(load_pretrained(mini, dtype="int8"), tokenizer, test)["zero_shot_top1"]
    gaps = {lang: quantized[lang] - full[lang] for lang in full}
    assert len(gaps) == 10 and all(abs(g) <= 0.02 for g in gaps.values()), gaps


def test_int8_check_script(capsys, tmp_path, monkeypatch):
    """bench/int8_check.py on the mini AltCLIP: a line per image, the summary, exit 1 for an unreadable image while
    the others are still compared."""
    import importlib.util
    # for its `import common`, last (bench/tokenizer.py and bench/kernels.py must not shadow anything); undone after
    monkeypatch.setattr(sys, "path", [*sys.path, str(ROOT / "bench")])
    spec = importlib.util.spec_from_file_location("int8_check", ROOT / "bench" / "int8_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    shapes = ROOT / "examples" / "shapes"
    labels = ["a blue heart", "a green triangle", "a purple cross", "a yellow star"]
    code = check.main(["--model", str(ROOT / "examples" / "mini-altclip"), str(shapes), *labels,
                       "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0 and "top label agrees on 4/4 images" in out, (out, err)
    res = json.loads((tmp_path / "r.json").read_text())
    assert len(res["images"]) == 4 and res["image_cosine_min"] > 0.999 and res["max_probability_change"] < 0.02
    for png in shapes.glob("*.png"):
        (tmp_path / png.name).write_bytes(png.read_bytes())
    (tmp_path / "broken.jpg").write_text("not a picture")
    code = check.main(["--model", str(ROOT / "examples" / "mini-altclip"), str(tmp_path), *labels])
    out, err = capsys.readouterr()
    assert code == 1 and "images: 4;" in out and err.count("broken.jpg") == 1, (out, err)
