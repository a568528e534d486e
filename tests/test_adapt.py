"""`train.py teach` and `train.py tune` ("make it yours"): each runs end to end on a tiny random checkpoint and on the
committed mini model, and writes a checkpoint that the reference (transformers.AltCLIPModel) loads with our logits
and `python altclip.py --model` reads; teach and tune train the text tower only (the image tower, both projections,
the temperature and the word embeddings stay bit-identical); tune embeds each picture once; an interrupted run
(SIGKILL) resumed with --resume ends bit for bit where an uninterrupted one does; two torchrun processes compute what
one does; bad input is one line naming the file and line, and bad pairs are skipped and counted."""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cli
import shapes
import train
from altclip import preprocess
from helpers import tiny_model_folder
from load_weights import load_pretrained
from tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "examples" / "mini-altclip"
QUICK = ["--steps", "3", "--batch-size", "4", "--anchors", "4", "--precision", "float32", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random AltCLIP checkpoint with a small multilingual tokenizer (tests/helpers.py)."""
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """pairs.tsv (English → German, Latin script, which both tokenizers spell) and captions.tsv with 12 pictures,
    two of them captioned twice."""
    folder = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    lines = []
    for _ in range(40):
        caps = shapes.captions(shapes.sample_scene(rng), rng)
        lines.append(f"{caps['en']}\t{caps['de']}")
    (folder / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "pics").mkdir()
    rows = ["image\tcaption"]
    for k in range(12):
        scene = shapes.sample_scene(rng)
        shapes.render(scene).save(folder / "pics" / f"{k}.png")
        rows.append(f"pics/{k}.png\t{shapes.captions(scene, rng)['fr']}")
        if k < 2:
            rows.append(f"pics/{k}.png\t{shapes.captions(scene, rng)['es']}")
    (folder / "captions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def command(kind: str, model: Path, data: Path, out: Path, *extra) -> list[str]:
    source = ["--pairs", data / "pairs.tsv"] if kind == "teach" else ["--data", data / "captions.tsv"]
    return [kind, "--model", str(model), *map(str, source), "--out", str(out), *map(str, extra)]


def parameters(folder: Path) -> dict:
    return {n: p.detach().clone() for n, p in load_pretrained(folder).named_parameters()}


def assert_reference_agrees(folder: Path):
    """transformers' AltCLIPModel loads every tensor of `folder` and scores as ours does (1e-4 on logits scaled by
    exp(logit_scale), float32)."""
    from transformers import AltCLIPModel

    ours = load_pretrained(folder)
    ref, info = AltCLIPModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    ref.eval()
    tokens = Tokenizer.from_pretrained(folder)(["ein roter Kreis", "a blue star", "un cœur vert"])
    pixels = preprocess([shapes.render(shapes.sample_scene(random.Random(k))) for k in range(2)],
                        ours.config.vision.image_size)
    with torch.no_grad():
        a = ours(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
        b = ref(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-4, rtol=0)


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["teach", "tune"])
@pytest.mark.parametrize("which", ["tiny", "mini"])
def test_command_trains_the_text_tower_only_and_the_reference_loads_the_result(kind, which, tiny, data, tmp_path):
    model = tiny if which == "tiny" else MINI
    out = tmp_path / "out"
    assert train.main(command(kind, model, data, out, *QUICK)) == 0
    before, after = parameters(model), parameters(out)
    assert before.keys() == after.keys()
    frozen = [n for n in before if not n.startswith("text_model.") or "word_embeddings" in n]
    assert any(n.startswith("vision_model.") for n in frozen) and "logit_scale" in frozen
    for name in frozen:
        assert torch.equal(before[name], after[name]), f"{name} changed"
    learned = [n for n in before if n not in frozen]
    assert all(not torch.equal(before[n], after[n]) for n in learned if ".blocks." in n)
    for name in ("sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (model / name).read_bytes()
    report = json.loads((out / "adapt.json").read_text())
    assert report["settings"]["steps"] == 3 and len(report["loss"]) == 3
    assert set(report["before"]) == set(report["after"]) - {"known_side_cosine_to_the_original"}
    assert_reference_agrees(out)
    picture = tmp_path / "shape.png"
    shapes.render(shapes.sample_scene(random.Random(0))).save(picture)
    assert cli.main([str(picture), "un cerchio rosso", "a blue star", "--model", str(out)]) == 0  # altclip.py


def test_tune_embeds_each_picture_once_and_reuses_the_embeddings(tiny, data, tmp_path, monkeypatch):
    """12 pictures, 14 pairs: 12 pictures opened, once; a second run into the same folder opens none (the run's
    cache), and a changed picture is opened again."""
    import altclip

    opened = []
    real = altclip.load_image
    monkeypatch.setattr(altclip, "load_image", lambda p: opened.append(Path(p).name) or real(p))
    out = tmp_path / "out"
    assert train.main(command("tune", tiny, data, out, *QUICK)) == 0
    assert sorted(opened) == sorted(f"{k}.png" for k in range(12))
    opened.clear()
    assert train.main(command("tune", tiny, data, out, *QUICK)) == 0
    assert opened == []
    os.utime(data / "pics" / "3.png", ns=(1, 1))
    assert train.main(command("tune", tiny, data, out, *QUICK)) == 0
    assert len(opened) == 12


def test_batches_are_epochs_and_follow_from_the_seed_and_step():
    n, batch = 10, 4
    drawn = [k for step in range(5) for k in train.batch_of(step, batch, n, seed=7)]  # two whole epochs
    assert sorted(drawn) == sorted(list(range(n)) * 2)
    assert drawn[:n] != list(range(n))
    assert train.batch_of(3, batch, n, seed=7) == drawn[12:16]  # a step's batch needs nothing but (seed, step)
    assert train.batch_of(3, batch, n, seed=8) != drawn[12:16]


def test_autocast_is_bfloat16_only_where_it_is_native(monkeypatch):
    from altclip_kernels import cpu

    for native, expected in [(True, "bfloat16"), (False, "float32")]:  # an AVX-512 BF16 CPU, then an AVX2 one
        monkeypatch.setattr(cpu, "native", lambda dtype, native=native: native if dtype == torch.bfloat16 else True)
        assert train.autocast_dtype("auto", torch.device("cpu"), 1024) == expected
        assert train.autocast_dtype("auto", torch.device("cpu"), 96) == "float32"  # narrow: casts cost more
        assert train.autocast_dtype("float32", torch.device("cpu"), 1024) == "float32"


# --- nothing lost: SIGKILL, then --resume ---------------------------------------------------------------------


def run_train(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow  # three training processes
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny, data, tmp_path):
    args = ["--steps", "24", "--batch-size", "4", "--anchors", "4", "--precision", "float32", "--threads", "1",
            "--save-every", "3"]
    whole = run_train(command("teach", tiny, data, tmp_path / "whole", *args))
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()[-2000:]

    cut = tmp_path / "cut"
    proc = run_train(command("teach", tiny, data, cut, *args))
    deadline = time.time() + 300
    while not (cut / train.STATE_FILE).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(cut / train.STATE_FILE, weights_only=True)
    assert 0 < state["step"] < 24, "the run was not cut short: nothing to resume"
    assert not (cut / "model.safetensors").exists()

    resumed = run_train(command("teach", tiny, data, cut, *args, "--resume"))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert f"resuming {cut / train.STATE_FILE} at step {state['step']}" in resumed.stderr.read().decode()
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(cut / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((cut / "adapt.json").read_text())["loss"] == \
        json.loads((tmp_path / "whole" / "adapt.json").read_text())["loss"]


def test_resume_refuses_other_settings(tiny, data, tmp_path, capsys):
    assert train.main(command("teach", tiny, data, tmp_path, *QUICK)) == 0
    capsys.readouterr()
    assert train.main(command("teach", tiny, data, tmp_path, *QUICK[:-6], "--lr", "0.1", *QUICK[-6:],
                              "--resume")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train.py: error: --resume:") and "lr differ" in err


# --- data-parallel: two processes compute what one does -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a torchrun launcher with two processes, and one more process
@pytest.mark.parametrize("kind", ["teach", "tune"])
def test_two_torchrun_processes_equal_one(kind, tiny, data, tmp_path):
    """The global batch of 4 pairs and 4 anchors is split 2 + 2; gradients are summed across the processes (gloo),
    and tune's contrastive loss sees every process's captions. Same weights as one process, to float32 rounding
    (other batch shapes, other summation order): 1e-5 absolute after 3 steps."""
    one = run_train(command(kind, tiny, data, tmp_path / "one", *QUICK))
    assert one.wait(timeout=300) == 0, one.stderr.read().decode()[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "train.py"),
                          *command(kind, tiny, data, tmp_path / "two", *QUICK)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "adapt.json").read_text())["processes"] == 2
    a, b = parameters(tmp_path / "one"), parameters(tmp_path / "two")
    source = parameters(tiny)
    assert any(not torch.equal(a[n], source[n]) for n in a)
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("attn.qkv.bias"):  # (3C,): q, k, v. The key bias shifts every score of a query alike, which
            # softmax ignores: its gradient is rounding noise, which Adam scales up to the learning rate. Left out.
            x, y = x.view(3, -1)[[0, 2]], y.view(3, -1)[[0, 2]]
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0, msg=name)


# --- bad input ------------------------------------------------------------------------------------------------


def run_main(args, capsys):
    try:
        code = train.main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if "train.py:" in line]


def test_fatal_input_is_one_line_naming_the_file(tiny, data, tmp_path, capsys):
    (tmp_path / "empty.tsv").write_text("\n\n")
    (tmp_path / "unk.tsv").write_text("a red circle\tწითელი წრე\na blue star\tლურჯი ვარსკვლავი\n")
    for args, message in [
            (["teach", "--model", tiny, "--pairs", tmp_path / "missing.tsv"],
             f"cannot read {tmp_path / 'missing.tsv'}"),
            (["teach", "--model", tiny, "--pairs", tmp_path / "empty.tsv"], f"{tmp_path / 'empty.tsv'} is empty"),
            (["teach", "--model", tmp_path / "nothing", "--pairs", data / "pairs.tsv"], "--model"),
            (["teach", "--model", tiny, "--pairs", tmp_path / "unk.tsv"], "no good pair left")]:
        code, err = run_main([*map(str, args), "--out", str(tmp_path / "o"), *QUICK], capsys)
        assert code == 1 and err[-1].startswith("train.py: error:") and message in err[-1], err
    code, err = run_main(["teach", "--model", str(tiny), "--pairs", "x", "--out", "o", "--val-fraction", "1"], capsys)
    assert code == 2


def test_bad_pairs_are_skipped_counted_and_named(tiny, data, tmp_path, capsys):
    good = (data / "pairs.tsv").read_text().splitlines()
    lines = good[:6] + ["no tab on this line", "a red circle\tწითელი წრე", "\ta known side missing"] + good[6:12]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    code, err = run_main(["teach", "--model", str(tiny), "--pairs", str(tmp_path / "pairs.tsv"),
                          "--out", str(tmp_path / "o"), *QUICK], capsys)
    assert code == 0
    path = tmp_path / "pairs.tsv"
    assert any(line.startswith(f"train.py: warning: {path}:7: no tab") for line in err), err
    assert any(line.startswith(f"train.py: warning: {path}:8:") and "<unk> only" in line for line in err), err
    assert any(line.startswith(f"train.py: warning: {path}:9:") and "empty" in line for line in err), err
    assert any(line.startswith(f"train.py: {path}: 12 good pair(s), 3 skipped") for line in err), err


def test_pictures_that_do_not_open_are_skipped_and_named(tiny, data, tmp_path, capsys):
    (tmp_path / "pics").symlink_to(data / "pics")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    rows = (data / "captions.tsv").read_text().splitlines()
    rows.insert(3, "broken.png\tun cercle rouge")
    rows.insert(4, "missing.png\tun cercle bleu")
    (tmp_path / "captions.tsv").write_text("\n".join(rows) + "\n")
    code, err = run_main(["tune", "--model", str(tiny), "--data", str(tmp_path / "captions.tsv"),
                          "--out", str(tmp_path / "o"), *QUICK], capsys)
    assert code == 0
    path = tmp_path / "captions.tsv"
    for _ in range(2):  # the second run reuses the first one's picture embeddings, and names the same lines
        assert any(line.startswith(f"train.py: warning: {path}:4: cannot open image") for line in err), err
        assert any(line.startswith(f"train.py: warning: {path}:5: cannot open image") for line in err), err
        assert any(line.startswith(f"train.py: {path}: 14 good pair(s), 2 skipped") for line in err), err
        code, err = run_main(["tune", "--model", str(tiny), "--data", str(tmp_path / "captions.tsv"),
                              "--out", str(tmp_path / "o"), *QUICK], capsys)
        assert code == 0


# --- the two languages the mini model never saw ----------------------------------------------------------------


def test_new_languages_are_grammatical_and_kept_apart():
    """Italian and Ukrainian, written from knowledge of each language; the ten languages' captions are still drawn
    from the random stream as before (the committed model's test set stays what it was)."""
    assert shapes.caption("red", "star", "it") == "una stella rossa"
    assert shapes.caption("blue", "circle", "it", "small", "left") == "un piccolo cerchio blu a sinistra"
    assert shapes.caption("yellow", "cross", "it", None, "top", 2) == "c'è una croce gialla in alto"
    assert shapes.caption("green", "heart", "it", "large", None, 1) == "un'immagine di un grande cuore verde"
    assert shapes.caption("blue", "circle", "uk") == "синє коло"
    assert shapes.caption("red", "star", "uk", "small") == "мала червона зірка"
    assert shapes.caption("purple", "square", "uk", None, "right", 1) == "зображення фіолетового квадрата праворуч"
    assert shapes.caption("yellow", "star", "uk", None, None, 2) == "на малюнку намальована жовта зірка"
    for lang in shapes.NEW_LANGUAGES:
        assert lang not in shapes.LANGUAGES
        assert len({shapes.label(c, s, lang) for c, s in shapes.CLASSES}) == 36
    rng_a, rng_b = random.Random(4), random.Random(4)
    scene = shapes.sample_scene(rng_a)
    assert shapes.captions(scene, rng_a) == shapes.captions(shapes.sample_scene(rng_b), rng_b)
    assert rng_a.random() == rng_b.random()
    test = train.make_test_set(1, 1, 56)
    assert set(test.captions[0]) == set(shapes.LANGUAGES + shapes.NEW_LANGUAGES)
