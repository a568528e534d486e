"""The command line end to end, on a tiny random checkpoint with a tokenizer trained in the tests.

Most runs call cli.main(argv) in-process (fast, output captured by capsys); two run `python altclip.py` for real
to prove the __main__ path, the exit status and that no traceback reaches the user. Probabilities are compared with
the reference: transformers' AltCLIPModel + XLMRobertaTokenizer + CLIPImageProcessor.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import altclip
import cli
from cli import main
from helpers import tiny_model_folder, tiny_reference
from altclip_kernels import onednn
from tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
CAT, COFFEE = ROOT / "examples" / "cat.jpg", ROOT / "examples" / "coffee.jpg"
LABELS = ["a cat", "a dog", "a cup of coffee", "一只猫的照片", "eine Katze im Haus"]
ATOL = 1e-4  # probabilities against the reference, float32


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A checkpoint folder as --model takes it: config.json, model.safetensors and sentencepiece.bpe.model."""
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-altclip"))


@pytest.fixture(scope="session")
def reference(model_dir):
    """probs(images, texts) → (images, texts) softmax of the reference's logits_per_image."""
    from transformers import XLMRobertaTokenizer

    from helpers import reference_processor  # BAAI's preprocessor_config, not altclip's constants

    model = tiny_reference(seed=0, vocab_size=Tokenizer.from_pretrained(model_dir).vocab_size)  # = the saved one
    tokenizer = XLMRobertaTokenizer.from_pretrained(model_dir)
    processor = reference_processor()

    def probs(images, texts):
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        pixels = processor([Image.open(path) for path in images], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
        return out.logits_per_image.softmax(dim=-1)

    return probs


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """Four good images (two photos, a transparent PNG, a GIF), two bad ones, and things that are not images."""
    d = tmp_path_factory.mktemp("photos")
    shutil.copy(CAT, d / "cat.jpg")
    shutil.copy(COFFEE, d / "coffee.JPEG")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 4), dtype=np.uint8)).save(d / "noise.png")
    Image.fromarray(rng.integers(0, 256, (40, 300), dtype=np.uint8)).convert("P").save(d / "wide.gif")
    (d / "bad.jpg").write_text("this is a text file with an image's name\n")
    png = (d / "noise.png").read_bytes()
    (d / "cut.png").write_bytes(png[: len(png) // 2])
    (d / "notes.txt").write_text("not an image, and not named like one\n")
    (d / "sub.jpg").mkdir()  # a folder named like an image: not an image file
    shutil.copy(CAT, d / "sub.jpg" / "nested.jpg")  # subfolders are not searched
    return d


GOOD = ["cat.jpg", "coffee.JPEG", "noise.png", "wide.gif"]  # name order
BAD = ["bad.jpg", "cut.png"]


def run(capsys, *argv):
    """main(argv) in-process → (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and err == "", err
    return json.loads(out)


def usage_error(capsys, *argv):
    """A usage error: argparse's usage lines, then one `altclip.py: error: …` line; exit status 2."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: altclip.py") and lines[-1].startswith("altclip.py: error: ")
    assert sum(line.startswith("altclip.py: error:") for line in lines) == 1 and "Traceback" not in err
    return lines[-1]


def one_error_line(code, out, err):
    assert code == 1 and out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("altclip.py: error: "), err
    return err.strip()


# -----------------------------------------------------------------------------
# Results.


def test_json_equals_reference(capsys, model_dir, reference):
    result = run_json(capsys, CAT, *LABELS, "--model", model_dir)
    assert len(result) == 1 and result[0]["image"] == str(CAT)
    scores = result[0]["scores"]
    assert sorted(scores) == sorted(LABELS)
    values = list(scores.values())
    assert values == sorted(values, reverse=True)  # most probable first
    assert sum(values) == pytest.approx(1, abs=1e-5)
    expected = reference([CAT], LABELS)[0]
    torch.testing.assert_close(torch.tensor([scores[label] for label in LABELS]), expected, atol=ATOL, rtol=0)
    assert expected.max() - expected.min() > 0.01  # the labels are told apart, so a mix-up of labels would show


def test_plain_output_matches_json(capsys, model_dir):
    scores = run_json(capsys, CAT, *LABELS, "--model", model_dir)[0]["scores"]
    code, out, err = run(capsys, CAT, *LABELS, "--model", model_dir)
    assert code == 0 and err == ""
    lines = out.rstrip("\n").split("\n")
    assert lines[0] == str(CAT) and len(lines) == 1 + len(LABELS)
    for line, (label, p) in zip(lines[1:], scores.items()):
        m = re.fullmatch(r"  ([ \d]{3}\.\d)%  (█*) *  (.+)", line)
        assert m, line
        assert float(m[1]) == pytest.approx(100 * p, abs=0.051) and len(m[2]) == round(10 * p) and m[3] == label


def test_template(capsys, model_dir, reference):
    scores = run_json(capsys, CAT, *LABELS, "--model", model_dir, "--template", "a photo of {}, {}.")
    assert set(scores := scores[0]["scores"]) == set(LABELS)  # keys are the labels as given
    expected = reference([CAT], [f"a photo of {label}, {label}." for label in LABELS])[0]
    torch.testing.assert_close(torch.tensor([scores[label] for label in LABELS]), expected, atol=ATOL, rtol=0)
    plain = reference([CAT], LABELS)[0]
    assert (expected - plain).abs().max() > 1e-3  # the template made a difference


def test_labels_file_and_duplicates(capsys, model_dir, tmp_path, reference):
    labels_file = tmp_path / "labels.txt"
    # A byte-order mark first (as Windows editors write it), blank lines, stray spaces and a CRLF line end.
    labels_file.write_text("\ufeffa dog\n\n  a cup of coffee  \r\n一只猫的照片\n   \na cat\n", encoding="utf-8")
    result = run_json(capsys, CAT, "a cat", "eine Katze im Haus", "a cat", "--labels-file", labels_file,
                      "--model", model_dir)
    scores = result[0]["scores"]
    assert len(scores) == 5 and set(scores) == set(LABELS)  # "a cat" three times counts once
    torch.testing.assert_close(torch.tensor([scores[label] for label in LABELS]), reference([CAT], LABELS)[0],
                               atol=ATOL, rtol=0)
    only_file = run_json(capsys, CAT, "--labels-file", labels_file, "--model", model_dir)[0]["scores"]
    assert set(only_file) == {"a dog", "a cup of coffee", "一只猫的照片", "a cat"}


def test_top_k(capsys, model_dir):
    full = run_json(capsys, CAT, *LABELS, "--model", model_dir)[0]["scores"]
    top2 = run_json(capsys, CAT, *LABELS, "--model", model_dir, "--top-k", "2")[0]["scores"]
    assert list(top2.items()) == list(full.items())[:2]  # still a softmax over all five labels
    assert sum(top2.values()) < 1
    code, out, _ = run(capsys, CAT, *LABELS, "--model", model_dir, "--top-k", "2")
    assert code == 0 and len(out.strip().splitlines()) == 3
    assert run_json(capsys, CAT, *LABELS, "--model", model_dir, "--top-k", "99")[0]["scores"] == full


# Labels whose reference probabilities on the cat are far apart (0.63, 0.32, 0.05), so that half precision's error
# cannot hide a swap. Per-dtype tolerance on probabilities: the logits are 100 times a cosine, so bfloat16's ~3
# significant digits move them by up to ~0.3 (worst seen over several label sets: 0.035 in probability), float16's
# ~8x more precise ones by ~0.04 (worst seen: 0.003).
DTYPE_LABELS = ["a photo of a cat", "eine Katze im Haus", "صورة قطة"]


@pytest.mark.parametrize("dtype, atol", [("bfloat16", 0.05), ("float16", 0.01)])
def test_dtype(capsys, model_dir, reference, monkeypatch, dtype, atol):
    import load_weights

    loaded = []
    load = load_weights.load_pretrained
    monkeypatch.setattr(load_weights, "load_pretrained", lambda *a, **kw: loaded.append(load(*a, **kw)) or loaded[-1])
    from altclip_kernels import cpu
    code, out, err = run(capsys, CAT, *DTYPE_LABELS, "--model", model_dir, "--dtype", dtype, "--json")
    scores = json.loads(out)[0]["scores"]
    emulated = not cpu.native(getattr(torch, dtype))  # then (only then) one line says so
    assert code == 0 and len(err.splitlines()) == emulated and ("emulated" in err) == emulated, err
    assert [m.dtype for m in loaded] == [getattr(torch, dtype)]
    assert sum(scores.values()) == pytest.approx(1, abs=1e-5)
    expected = reference([CAT], DTYPE_LABELS)[0]
    ranked = expected.sort(descending=True).values
    assert (ranked[:-1] - ranked[1:]).min() > 4 * atol  # two labels swapped would be off by a gap, far beyond atol
    assert list(scores) == [DTYPE_LABELS[i] for i in expected.argsort(descending=True)]  # the same ranking, exactly
    torch.testing.assert_close(torch.tensor([scores[label] for label in DTYPE_LABELS]), expected, atol=atol, rtol=0)


def test_folder_good_and_bad_files(capsys, model_dir, folder, reference):
    code, out, err = run(capsys, folder, *LABELS, "--model", model_dir, "--json", "--batch-size", "3")
    assert code == 1  # some files failed
    result = json.loads(out)
    assert [r["image"] for r in result] == [os.path.join(str(folder), name) for name in GOOD]  # all the good ones
    expected = reference([folder / name for name in GOOD], LABELS)
    got = torch.tensor([[r["scores"][label] for label in LABELS] for r in result])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # The bad ones are named on stderr with the reason, one line each, and nothing else is there (no progress bar).
    lines = err.splitlines()
    assert lines == [f"altclip.py: error: cannot open image '{os.path.join(str(folder), 'bad.jpg')}': not an image "
                     f"file, or in a format Pillow cannot read", lines[1]]
    assert lines[1].startswith(f"altclip.py: error: cannot open image '{os.path.join(str(folder), 'cut.png')}': ")
    assert "truncated" in lines[1] and "Traceback" not in err


def test_folder_plain_output_and_batching(capsys, model_dir, folder, monkeypatch):
    calls = {"text": 0, "image": 0, "tokenizer": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(altclip.AltCLIP, "get_text_features", counting("text", altclip.AltCLIP.get_text_features))
    monkeypatch.setattr(altclip.AltCLIP, "get_image_features", counting("image", altclip.AltCLIP.get_image_features))
    monkeypatch.setattr(Tokenizer, "__call__", counting("tokenizer", Tokenizer.__call__))
    code, out, err = run(capsys, str(folder) + os.sep, *LABELS, "--model", model_dir, "--batch-size", "2")
    assert code == 1 and len(err.splitlines()) == len(BAD)
    blocks = out.rstrip("\n").split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [os.path.join(str(folder) + os.sep, n) for n in GOOD]
    assert all(len(b.splitlines()) == 1 + len(LABELS) for b in blocks)
    # Labels once per run; 6 files in batches of 2 → 3 image forwards (bad files leave gaps, not extra calls).
    assert calls == {"text": 1, "image": 3, "tokenizer": 1}


def test_folder_all_good_exits_0(capsys, model_dir, tmp_path):
    shutil.copy(CAT, tmp_path / "b.jpg")
    shutil.copy(COFFEE, tmp_path / "a.jpg")
    code, out, err = run(capsys, tmp_path, "a cat", "coffee", "--model", model_dir)
    assert code == 0 and err == "" and out.index("a.jpg") < out.index("b.jpg")


# -----------------------------------------------------------------------------
# Bad input: one line on stderr naming what is wrong, a non-zero exit, no traceback.


def test_missing_image(capsys, model_dir, tmp_path):
    err = one_error_line(*run(capsys, tmp_path / "nope.jpg", "a cat", "--model", model_dir))
    assert err == f"altclip.py: error: cannot open image '{tmp_path / 'nope.jpg'}': No such file or directory"


def test_unreadable_image(capsys, model_dir, folder):
    err = one_error_line(*run(capsys, folder / "bad.jpg", "a cat", "--model", model_dir))
    assert err.startswith(f"altclip.py: error: cannot open image '{folder / 'bad.jpg'}': not an image file")
    err = one_error_line(*run(capsys, folder / "cut.png", "a cat", "--model", model_dir))
    assert "cut.png" in err and "truncated" in err


def test_folder_without_images(capsys, model_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    err = one_error_line(*run(capsys, tmp_path, "a cat", "--model", model_dir))
    assert f"folder '{tmp_path}' holds no image files" in err


def test_missing_model_folder(capsys, tmp_path):
    err = one_error_line(*run(capsys, CAT, "a cat", "--model", tmp_path / "no-such-model"))
    assert err.startswith(f"altclip.py: error: model '{tmp_path / 'no-such-model'}': ") and "does not exist" in err


def test_model_folder_without_tokenizer(capsys, model_dir, tmp_path):
    d = tmp_path / "weights-only"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, d / name)
    err = one_error_line(*run(capsys, CAT, "a cat", "--model", d))
    assert err.startswith(f"altclip.py: error: model '{d}': ") and "sentencepiece.bpe.model" in err


def test_refused_checkpoint(capsys, model_dir, tmp_path):
    d = tmp_path / "truncated"
    shutil.copytree(model_dir, d)
    weights = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    err = one_error_line(*run(capsys, CAT, "a cat", "--model", d))
    assert err.startswith(f"altclip.py: error: model '{d}': ") and "truncated or corrupt" in err


@pytest.mark.parametrize("argv, message", [
    ([CAT], "no labels"),
    ([CAT, "--labels-file", "EMPTY"], "no labels"),
    ([CAT, "--labels-file", "MISSING"], "cannot read --labels-file"),
    ([CAT, "a cat", "--template", "a photo of"], "--template 'a photo of' has no {}"),
    ([CAT, "a cat", "--top-k", "0"], "--top-k: expected a positive whole number, got '0'"),
    ([CAT, "a cat", "--batch-size", "x"], "--batch-size: expected a positive whole number"),
    ([CAT, "a cat", "--dtype", "float64"], "--dtype: invalid choice"),
    ([CAT, "a cat", "--device", "nonsense"], "--device nonsense"),
])
def test_usage_errors(capsys, tmp_path, argv, message):
    (tmp_path / "EMPTY").write_text("\n  \n")
    argv = [str(tmp_path / a) if a in ("EMPTY", "MISSING") else a for a in argv]
    assert message in usage_error(capsys, *argv)


# -----------------------------------------------------------------------------
# For real: `python altclip.py …` in a subprocess.


def test_subprocess_ranking(model_dir):
    p = subprocess.run([sys.executable, "altclip.py", "examples/cat.jpg", "a cat", "a dog", "a cup of coffee",
                        "--model", str(model_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "examples/cat.jpg" and len(lines) == 4
    assert {line.split("  ")[-1].strip() for line in lines[1:]} == {"a cat", "a dog", "a cup of coffee"}


def test_subprocess_offline_without_cache(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_HUB_CACHE", None)
    p = subprocess.run([sys.executable, "altclip.py", "examples/cat.jpg", "a cat", "a dog"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert p.stderr.startswith("altclip.py: error: model 'BAAI/AltCLIP': ")
    assert "not in the local cache" in p.stderr and "--model" in p.stderr  # what is wrong, and the way out


def test_progress_bar_only_on_a_terminal(capsys, model_dir, folder, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, folder, "a cat", "a dog", "--model", model_dir, "--batch-size", "4")
    assert code == 1 and f"{len(GOOD) + len(BAD)}/{len(GOOD) + len(BAD)}" in err  # the bar, finished
    assert "Traceback" not in err and out.count("\n\n") == len(GOOD) - 1  # the results are not cut by the bar
    code, _, err = run(capsys, CAT, "a cat", "a dog", "--model", model_dir)  # one image: no bar
    assert code == 0 and err == ""


# -----------------------------------------------------------------------------
# The compute path: --kernels and --verbose.


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CPU the Triton kernels run in the interpreter")
def test_kernels_on_equals_off_and_verbose_says_which_ran(capsys, model_dir):
    code, out_on, err_on = run(capsys, CAT, *LABELS, "--model", model_dir, "--kernels", "on", "-v", "--json")
    assert code == 0 and "compute path: Triton kernels" in err_on
    code, out_off, err_off = run(capsys, CAT, *LABELS, "--model", model_dir, "--kernels", "off", "-v", "--json")
    assert code == 0 and "compute path: torch" in err_off
    assert "1 image(s) scored against 5 label(s)" in err_off
    on, off = json.loads(out_on)[0]["scores"], json.loads(out_off)[0]["scores"]
    assert on.keys() == off.keys()
    for label in on:
        assert abs(on[label] - off[label]) < ATOL, label


def test_kernels_auto_on_cpu_is_torch(capsys, model_dir):
    code, _, err = run(capsys, CAT, "a cat", "a dog", "--model", model_dir, "-v")
    assert code == 0 and ("Triton kernels" in err) == torch.cuda.is_available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_kernels_on_without_gpu_or_interpreter_is_one_line(model_dir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "altclip.py", str(CAT), "a cat", "--model", str(model_dir),
                           "--kernels", "on"], cwd=ROOT, env=env, capture_output=True, text=True)
    line = one_error_line(proc.returncode, proc.stdout, proc.stderr)
    assert "--kernels on" in line and "TRITON_INTERPRET=1" in line


@pytest.mark.skipif(not onednn.available()[0], reason="no oneDNN packing here")
def test_onednn_on_equals_off(capsys, model_dir):
    code, out_on, err_on = run(capsys, CAT, *LABELS, "--model", model_dir, "--onednn", "on", "-v", "--json")
    assert code == 0 and "compute path: torch + oneDNN packed linears" in err_on
    code, out_off, err_off = run(capsys, CAT, *LABELS, "--model", model_dir, "--onednn", "off", "-v", "--json")
    assert code == 0 and "oneDNN" not in err_off
    on, off = json.loads(out_on)[0]["scores"], json.loads(out_off)[0]["scores"]
    assert all(abs(on[label] - off[label]) < ATOL for label in LABELS)


def cat_folder(folder: Path, n: int) -> Path:
    for k in range(n):
        shutil.copy(CAT, folder / f"cat{k:02d}.jpg")
    return folder


def test_onednn_auto_packs_a_large_folder_only_where_measured_faster(capsys, model_dir, tmp_path):
    """auto packs 16+ images on the CPU classes where packing was measured faster (AVX-512), never on AVX2-only ones,
    and -v names the CPU class and the path that ran."""
    cat_folder(tmp_path, cli.ONEDNN_MIN_IMAGES)
    code, out, err = run(capsys, tmp_path, "a cat", "a dog", "--model", model_dir, "-v", "--batch-size", "16")
    assert code == 0 and out.count("cat") >= cli.ONEDNN_MIN_IMAGES
    packs = torch.backends.cpu.get_cpu_capability() == "AVX512"  # the class where it was measured faster
    assert ("oneDNN packed linears" in err) is packs
    assert f"on cpu ({torch.backends.cpu.get_cpu_capability()}, bfloat16 " in err
    if not packs:
        assert "not measured faster on this CPU class" in err
    code, _, err = run(capsys, CAT, "a cat", "a dog", "--model", model_dir, "-v")
    assert code == 0 and "oneDNN" not in err


def test_bfloat16_folder_without_native_bf16_answers_every_image_with_one_warning(capsys, monkeypatch, model_dir,
                                                                                  tmp_path):
    """The issue's case: 17 images in bfloat16 on a CPU without native bf16 (real here, or simulated on an AVX-512
    one): auto does not try to pack, every image is answered, and one stderr line says bf16 is emulated."""
    from altclip_kernels import cpu
    if cpu.native(torch.bfloat16):
        monkeypatch.setattr(cpu, "native", lambda dtype: dtype == torch.float32)
        monkeypatch.setattr(cpu, "capability", lambda: "AVX2")
    n = cli.ONEDNN_MIN_IMAGES + 1
    code, out, err = run(capsys, cat_folder(tmp_path, n), *LABELS, "--model", model_dir, "--dtype", "bfloat16",
                         "--json")
    assert code == 0 and len(json.loads(out)) == n
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("altclip.py: warning: this CPU (AVX2) has no native bfloat16")
    assert "emulated" in lines[0] and "float32" in lines[0]
