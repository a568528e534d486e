"""`python altclip.py FOLDER --search QUERY` / `--like IMAGE` end to end, and its embedding index, on a tiny random
checkpoint with a tokenizer trained in the tests.

Scores are compared with the reference's cosine similarities: transformers' AltCLIPModel (the same tiny model the
checkpoint was saved from) + XLMRobertaTokenizer + a CLIPImageProcessor built from BAAI's preprocessor_config values.
Tolerance: 1e-4 absolute on cosines, float32. The index's behaviour (reused, changed, deleted, new, killed half-way,
two searches at once, damaged or foreign files) is checked by counting the images that reach the model.
"""
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import altclip
import cli
import index
from helpers import tiny_model_folder, tiny_reference
from tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
CAT, COFFEE = ROOT / "examples" / "cat.jpg", ROOT / "examples" / "coffee.jpg"
ATOL = 1e-4  # cosines against the reference, float32
QUERIES = ["a photo of a cat", "一只猫的照片", "eine Tasse Kaffee"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A checkpoint folder as --model takes it: config.json, model.safetensors and sentencepiece.bpe.model."""
    return tiny_model_folder(tmp_path_factory.mktemp("tiny-altclip-search"))


@pytest.fixture(scope="session")
def reference(model_dir):
    """(texts(list) → (n, P), images(paths) → (n, P)): the reference's L2-normalised embeddings."""
    from transformers import XLMRobertaTokenizer

    from helpers import reference_processor  # BAAI's preprocessor_config, not altclip's constants

    model = tiny_reference(seed=0, vocab_size=Tokenizer.from_pretrained(model_dir).vocab_size)  # = the saved one
    tokenizer = XLMRobertaTokenizer.from_pretrained(model_dir)
    processor = reference_processor()

    def texts(queries):
        tokens = tokenizer(queries, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(out.pooler_output, dim=-1)

    def images(paths):
        pixels = processor([Image.open(p) for p in paths], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)

    return texts, images


GOOD = ["cat.jpg", "coffee.JPEG", "gradient.bmp", "noise.png", "wide.gif"]  # name order
BAD = ["bad.jpg"]


@pytest.fixture
def folder(tmp_path):
    """Five readable images (two photos, a BMP, a transparent PNG, a GIF), a broken one, a text file, a subfolder."""
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(CAT, d / "cat.jpg")
    shutil.copy(COFFEE, d / "coffee.JPEG")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 4), dtype=np.uint8)).save(d / "noise.png")
    Image.fromarray(rng.integers(0, 256, (40, 300), dtype=np.uint8)).convert("P").save(d / "wide.gif")
    ramp = np.linspace(0, 255, 200, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (150, 1))] * 3, axis=-1)).save(d / "gradient.bmp")
    (d / "bad.jpg").write_text("not an image\n")
    (d / "notes.txt").write_text("not an image, and not named like one\n")
    (d / "sub").mkdir()
    shutil.copy(COFFEE, d / "sub" / "nested.jpg")
    return d


@pytest.fixture
def counted(monkeypatch):
    """The number of images each get_image_features call embedded, call by call."""
    calls = []
    embed = altclip.AltCLIP.get_image_features

    def counting(self, pixel_values, *args, **kwargs):
        calls.append(len(pixel_values))
        return embed(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(altclip.AltCLIP, "get_image_features", counting)
    return calls


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def search(capsys, model_dir, db, *argv):
    """A --json search on index `db` → (exit status, results, stderr)."""
    code, out, err = run(capsys, *argv, "--model", model_dir, "--index", db, "--json")
    assert "Traceback" not in err
    return code, json.loads(out), err


def one_error_line(code, out, err):
    assert code == 1 and out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("altclip.py: error: "), err
    return err.strip()


def rows(db) -> dict[str, tuple]:
    """The index's rows: {path: (size, mtime_ns, vector)}, read with sqlite3 directly."""
    with sqlite3.connect(db) as con:
        return {p: (s, t, np.frombuffer(v, dtype=np.float32))
                for p, s, t, v in con.execute("SELECT path, size, mtime_ns, vector FROM embeddings")}


def bad_line(path) -> str:
    return f"altclip.py: error: cannot open image '{path}': not an image file, or in a format Pillow cannot read"


# -----------------------------------------------------------------------------
# The ranking: the reference's cosines, most similar first.


@pytest.mark.parametrize("query", QUERIES)
def test_search_scores_equal_reference(capsys, model_dir, reference, folder, tmp_path, query):
    texts, images = reference
    code, result, err = search(capsys, model_dir, tmp_path / "index.sqlite", folder, "--search", query)
    assert code == 1 and err.splitlines() == [bad_line(folder / "bad.jpg")]  # the broken file is named, not ranked
    assert sorted(r["image"] for r in result) == sorted(str(folder / n) for n in GOOD)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    expected = (images([r["image"] for r in result]) @ texts([query])[0]).tolist()
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected), atol=ATOL, rtol=0)
    assert max(expected) - min(expected) > 0.05  # the images are told apart, so a mix-up would show


def test_template_applies_to_the_query(capsys, model_dir, reference, folder, tmp_path):
    texts, images = reference
    code, result, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", "cat",
                             "--template", "a photo of a {}")
    expected = (images([r["image"] for r in result]) @ texts(["a photo of a cat"])[0]).tolist()
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]), torch.tensor(expected), atol=ATOL, rtol=0)


def test_like_ranks_by_an_image_and_leaves_it_out(capsys, model_dir, reference, folder, tmp_path, counted):
    _, images = reference
    shutil.copy(CAT, folder / "copy of cat.jpg")
    code, result, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--like", folder / "cat.jpg")
    ranked = [r["image"] for r in result]
    assert str(folder / "cat.jpg") not in ranked and len(ranked) == len(GOOD)  # the query itself is left out
    assert ranked[0] == str(folder / "copy of cat.jpg") and result[0]["score"] == pytest.approx(1, abs=1e-5)
    expected = (images(ranked) @ images([folder / "cat.jpg"])[0]).tolist()
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]), torch.tensor(expected), atol=ATOL, rtol=0)
    # A query image from elsewhere: every image of the folder is ranked; only the query image is new to the index.
    counted.clear()
    code, outside, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--like", COFFEE)
    assert len(outside) == len(GOOD) + 1 and outside[0]["image"] == str(folder / "coffee.JPEG")
    assert sum(counted) == 1


def test_plain_output_and_top_k(capsys, model_dir, folder, tmp_path):
    db = tmp_path / "i.sqlite"
    _, result, _ = search(capsys, model_dir, db, folder, "--search", "a cat")
    code, out, err = run(capsys, folder, "--search", "a cat", "--model", model_dir, "--index", db)
    assert code == 1 and err.splitlines() == [bad_line(folder / "bad.jpg")]
    lines = out.splitlines()
    assert len(lines) == len(GOOD)
    for line, r in zip(lines, result):  # " 0.1234  PATH" (or "-0.1234  PATH"), most similar first
        m = re.fullmatch(r"([ -]\d\.\d{4})  (.+)", line)
        assert m and m[2] == r["image"] and float(m[1]) == pytest.approx(r["score"], abs=5e-5), line
    _, top2, _ = search(capsys, model_dir, db, folder, "--search", "a cat", "--top-k", "2")
    assert top2 == result[:2]
    code, out, _ = run(capsys, folder, "--search", "a cat", "--top-k", "2", "--model", model_dir, "--index", db)
    assert out.splitlines() == lines[:2]


def test_all_readable_exits_0_and_single_file(capsys, model_dir, tmp_path):
    d = tmp_path / "two"
    d.mkdir()
    shutil.copy(CAT, d / "b.jpg")
    shutil.copy(COFFEE, d / "a.jpg")
    code, result, err = search(capsys, model_dir, tmp_path / "i.sqlite", d, "--search", "a cat")
    assert code == 0 and err == "" and len(result) == 2
    code, result, err = search(capsys, model_dir, tmp_path / "i.sqlite", d / "a.jpg", "--search", "a cat")
    assert code == 0 and err == "" and [r["image"] for r in result] == [str(d / "a.jpg")]


# -----------------------------------------------------------------------------
# The index: what is reused, what is embedded again.


def test_second_search_embeds_nothing(capsys, model_dir, folder, tmp_path, counted):
    db = tmp_path / "i.sqlite"
    code, first, _ = search(capsys, model_dir, db, folder, "--search", "a cat", "--batch-size", "2")
    assert sum(counted) == len(GOOD)  # the broken file never reaches the model
    assert sorted(rows(db)) == sorted(str(folder / n) for n in GOOD)  # absolute paths
    counted.clear()
    code, second, err = search(capsys, model_dir, db, folder, "--search", "something else", "-v")
    assert counted == [] and f"{len(GOOD)} image(s) from the index, 0 embedded" in err
    code, again, _ = search(capsys, model_dir, db, folder, "--search", "a cat")
    assert again == first and counted == []  # the stored embeddings give the same scores


def test_changed_deleted_new_and_moved_files(capsys, model_dir, folder, tmp_path, counted):
    db = tmp_path / "i.sqlite"
    search(capsys, model_dir, db, folder, "--search", "a cat")
    counted.clear()
    # changed content (same name), changed time only, deleted, new, and renamed
    shutil.copy(COFFEE, folder / "cat.jpg")
    st = os.stat(folder / "gradient.bmp")
    os.utime(folder / "gradient.bmp", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    os.remove(folder / "noise.png")
    shutil.copy(CAT, folder / "new.jpg")
    os.rename(folder / "wide.gif", folder / "moved.gif")
    code, result, _ = search(capsys, model_dir, db, folder, "--search", "a cat", "--batch-size", "1")
    assert sum(counted) == 4  # cat.jpg, gradient.bmp, new.jpg, moved.gif; coffee.JPEG from the index
    now = ["cat.jpg", "coffee.JPEG", "gradient.bmp", "moved.gif", "new.jpg"]
    assert sorted(r["image"] for r in result) == sorted(str(folder / n) for n in now)
    stored = rows(db)
    assert sorted(stored) == sorted(str(folder / n) for n in now)  # noise.png and wide.gif are forgotten
    for name in now:
        st = os.stat(folder / name)
        assert stored[str(folder / name)][:2] == (st.st_size, st.st_mtime_ns)
    # The same scores as a search from scratch, image by image. (Not the same order: cat.jpg now holds the coffee
    # photo, so it ties with coffee.JPEG, and batch sizes 1 and 8 round differently at 1e-7.)
    _, fresh, _ = search(capsys, model_dir, tmp_path / "fresh.sqlite", folder, "--search", "a cat")
    by_image = {r["image"]: r["score"] for r in fresh}
    assert sorted(by_image) == sorted(r["image"] for r in result)
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]),
                               torch.tensor([by_image[r["image"]] for r in result]), atol=1e-6, rtol=0)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)  # most similar first


def test_other_dtype_or_weights_are_embedded_again(capsys, model_dir, folder, tmp_path, counted):
    db = tmp_path / "i.sqlite"
    search(capsys, model_dir, db, folder, "--search", "a cat")
    counted.clear()
    search(capsys, model_dir, db, folder, "--search", "a cat", "--dtype", "bfloat16")
    assert sum(counted) == len(GOOD)  # another dtype: other embeddings
    counted.clear()
    search(capsys, model_dir, db, folder, "--search", "a cat")
    assert counted == []  # both kept, side by side
    weights = model_dir / "model.safetensors"
    st = os.stat(weights)
    try:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if the weights were replaced
        search(capsys, model_dir, db, folder, "--search", "a cat")
        assert sum(counted) == len(GOOD)
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_default_index_location(capsys, model_dir, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, out, _ = run(capsys, folder, "--search", "a cat", "--model", model_dir)
    assert len(rows(tmp_path / "cache" / "altclip" / "index.sqlite")) == len(GOOD)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run(capsys, folder, "--search", "a cat", "--model", model_dir)
    assert len(rows(tmp_path / "home" / ".cache" / "altclip" / "index.sqlite")) == len(GOOD)


# -----------------------------------------------------------------------------
# Nothing lost, nothing corrupt: killed half-way, two at once, damaged and foreign files.

# Runs the command line with get_image_features wrapped: DIE_AT=N kills the process (SIGKILL, no clean-up of any
# kind) as its N-th batch starts; BARRIER=DIR makes the first batch wait until two processes have reached it, so two
# searches embed at the same time, then every batch takes 20 ms longer so that their commits interleave.
WRAPPED = """
import os, signal, sys, time
import altclip, cli
embed, calls = altclip.AltCLIP.get_image_features, []
def wrapped(self, pixel_values, *args, **kwargs):
    calls.append(len(pixel_values))
    if len(calls) == int(os.environ.get("DIE_AT", 0)):
        os.kill(os.getpid(), signal.SIGKILL)
    if "BARRIER" in os.environ:
        if len(calls) == 1:
            open(os.path.join(os.environ["BARRIER"], str(os.getpid())), "w").close()
            deadline = time.time() + 60
            while len(os.listdir(os.environ["BARRIER"])) < 2 and time.time() < deadline:
                time.sleep(0.01)
        time.sleep(0.02)
    return embed(self, pixel_values, *args, **kwargs)
altclip.AltCLIP.get_image_features = wrapped
sys.exit(cli.main(sys.argv[1:]))
"""


def wrapped(argv, **env):
    return subprocess.Popen([sys.executable, "-c", WRAPPED, *map(str, argv)], cwd=ROOT, text=True,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def many_images(d: Path, n: int) -> Path:
    d.mkdir()
    rng = np.random.default_rng(1)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(d / f"img{k:02d}.png")
    return d


def test_killed_search_keeps_what_it_finished(capsys, model_dir, tmp_path, counted):
    photos, db = many_images(tmp_path / "photos", 10), tmp_path / "i.sqlite"
    proc = wrapped([photos, "--search", "a cat", "--model", model_dir, "--index", db, "--batch-size", "3"],
                   DIE_AT="3")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(rows(db)) == [str(photos / f"img{k:02d}.png") for k in range(6)]  # two batches were committed
    code, result, err = search(capsys, model_dir, db, photos, "--search", "a cat", "--batch-size", "3", "-v")
    assert code == 0 and sum(counted) == 4 and "6 image(s) from the index, 4 embedded" in err  # only the rest
    assert len(rows(db)) == 10
    _, fresh, _ = search(capsys, model_dir, tmp_path / "fresh.sqlite", photos, "--search", "a cat")
    assert [r["image"] for r in fresh] == [r["image"] for r in result]
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]), torch.tensor([r["score"] for r in fresh]),
                               atol=1e-6, rtol=0)


def test_ctrl_c_keeps_the_finished_batches(capsys, model_dir, tmp_path, monkeypatch):
    photos, db = many_images(tmp_path / "photos", 5), tmp_path / "i.sqlite"
    embed, calls = altclip.AltCLIP.get_image_features, []

    def interrupted(self, pixel_values, *args, **kwargs):
        calls.append(len(pixel_values))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return embed(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(altclip.AltCLIP, "get_image_features", interrupted)
    code, out, err = run(capsys, photos, "--search", "a cat", "--model", model_dir, "--index", db, "--batch-size", "2")
    assert code == 130 and out == "" and err == "altclip.py: interrupted\n"
    assert sorted(rows(db)) == [str(photos / "img00.png"), str(photos / "img01.png")]


@pytest.mark.slow  # two processes that each import torch: ~10-30 s on 2 busy cores
def test_two_searches_at_once_on_one_index(capsys, model_dir, tmp_path, counted):
    photos, db, barrier = many_images(tmp_path / "photos", 12), tmp_path / "i.sqlite", tmp_path / "barrier"
    barrier.mkdir()
    argv = [photos, "--search", "a cat", "--model", model_dir, "--index", db, "--batch-size", "1", "--json"]
    procs = [wrapped(argv, BARRIER=str(barrier)) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert len(os.listdir(barrier)) == 2  # both were embedding at the same time
    first, second = (json.loads(out) for out, _ in outs)
    assert [r["image"] for r in first] == [r["image"] for r in second] and len(first) == 12
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = rows(db)
    assert sorted(stored) == [str(photos / f"img{k:02d}.png") for k in range(12)]  # complete, one row each
    code, third, _ = search(capsys, model_dir, db, photos, "--search", "a cat")
    assert code == 0 and counted == []
    torch.testing.assert_close(torch.tensor([r["score"] for r in third]), torch.tensor([r["score"] for r in first]),
                               atol=1e-6, rtol=0)


def test_garbage_index_is_an_error_and_left_alone(capsys, model_dir, folder, tmp_path, counted):
    db = tmp_path / "garbage.sqlite"
    junk = bytes(range(256)) * 64
    db.write_bytes(junk)
    err = one_error_line(*run(capsys, folder, "--search", "a cat", "--model", model_dir, "--index", db))
    assert err == (f"altclip.py: error: index '{db}' is not an SQLite database (file is not a database); delete it, "
                   f"or choose another file with --index")
    assert db.read_bytes() == junk and counted == []  # nothing overwritten, nothing embedded


def test_foreign_sqlite_index_is_an_error_and_left_alone(capsys, model_dir, folder, tmp_path):
    db = tmp_path / "photos.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE albums (name TEXT, year INTEGER)")
        con.execute("INSERT INTO albums VALUES ('holidays', 2024)")
    before = db.read_bytes()
    err = one_error_line(*run(capsys, folder, "--search", "a cat", "--model", model_dir, "--index", db))
    assert err.startswith(f"altclip.py: error: index '{db}' is another program's SQLite database")
    assert db.read_bytes() == before


def test_damaged_index_is_an_error(capsys, model_dir, tmp_path):
    photos, db = many_images(tmp_path / "photos", 12), tmp_path / "i.sqlite"
    search(capsys, model_dir, db, photos, "--search", "a cat")
    data = bytearray(db.read_bytes())
    assert len(data) > 4096  # the header page, then the table's pages
    data[4096:] = np.random.default_rng(0).integers(0, 256, len(data) - 4096, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    err = one_error_line(*run(capsys, photos, "--search", "a cat", "--model", model_dir, "--index", db))
    assert err.startswith(f"altclip.py: error: index '{db}' is damaged (") and "delete it" in err


def test_index_of_another_schema_version_is_rebuilt_saying_so(capsys, model_dir, folder, tmp_path, counted):
    db = tmp_path / "i.sqlite"
    search(capsys, model_dir, db, folder, "--search", "a cat")
    with sqlite3.connect(db) as con:
        con.execute(f"PRAGMA user_version={index.SCHEMA_VERSION + 1}")
    counted.clear()
    code, result, err = search(capsys, model_dir, db, folder, "--search", "a cat")
    assert err.splitlines()[0] == (f"altclip.py: warning: index '{db}' was written by another version of altclip.py "
                                   f"(schema {index.SCHEMA_VERSION + 1}, this one reads {index.SCHEMA_VERSION}): "
                                   f"rebuilt, every image is embedded again")
    assert sum(counted) == len(GOOD) and len(result) == len(GOOD) and len(rows(db)) == len(GOOD)


# -----------------------------------------------------------------------------
# Folders: -r, unreadable files; classification's single-label warning; usage.


def test_recursive(capsys, model_dir, folder, tmp_path):
    _, flat, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", "a cat")
    assert str(folder / "sub" / "nested.jpg") not in [r["image"] for r in flat]
    _, deep, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", "a cat", "-r")
    assert sorted(r["image"] for r in deep) == sorted([str(folder / n) for n in GOOD] + [str(folder / "sub/nested.jpg")])
    # a non-recursive search forgets nothing of the subfolder's
    search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", "a cat")
    assert str(folder / "sub" / "nested.jpg") in rows(tmp_path / "i.sqlite")
    code, out, _ = run(capsys, folder, "a cat", "a dog", "-r", "--model", model_dir, "--json")
    nested = [str(folder / n) for n in GOOD[:4]] + [str(folder / "sub" / "nested.jpg"), str(folder / GOOD[4])]
    assert [r["image"] for r in json.loads(out)] == nested  # name order, path by path: sub/ between noise and wide


def test_recursive_names_an_unreadable_subfolder(capsys, model_dir, folder, tmp_path, monkeypatch):
    locked = folder / "locked"
    locked.mkdir()
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)  # root reads any folder, so the refusal is simulated
    code, result, err = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", "a cat", "-r")
    assert code == 1 and len(result) == len(GOOD) + 1
    assert f"altclip.py: error: cannot read folder '{locked}': Permission denied" in err.splitlines()


def test_progress_bar_on_a_terminal(capsys, model_dir, folder, tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, folder, "--search", "a cat", "--model", model_dir, "--index", tmp_path / "i")
    n = len(GOOD) + len(BAD)
    assert f"{n}/{n}" in err and len(out.splitlines()) == len(GOOD)
    code, out, err = run(capsys, folder, "--search", "a cat", "--model", model_dir, "--index", tmp_path / "i")
    assert err.strip() == bad_line(folder / "bad.jpg")  # nothing to embed but the broken file: no bar


def test_single_label_on_a_folder_points_at_search(capsys, model_dir, folder):
    code, out, err = run(capsys, folder, "a cat", "--model", model_dir, "--json")
    warning, *rest = err.splitlines()
    assert warning == ("altclip.py: warning: with one label every image gets 100%; to rank the images by how well "
                       "they match it, use --search 'a cat'")
    assert rest == [bad_line(folder / "bad.jpg")] and all(r["scores"] == {"a cat": 1.0} for r in json.loads(out))
    code, out, err = run(capsys, CAT, "a cat", "--model", model_dir)
    assert code == 0 and err == ""  # one image: nothing to rank
    code, out, err = run(capsys, folder, "a cat", "a dog", "--model", model_dir)
    assert "warning" not in err


def test_unreadable_query_image_is_one_line(capsys, model_dir, folder, tmp_path, counted):
    err = one_error_line(*run(capsys, folder, "--like", folder / "bad.jpg", "--model", model_dir,
                              "--index", tmp_path / "i"))
    assert err == bad_line(folder / "bad.jpg") and counted == []


def test_folder_without_images_suggests_r(capsys, model_dir, tmp_path):
    (tmp_path / "album" / "2024").mkdir(parents=True)
    shutil.copy(CAT, tmp_path / "album" / "2024" / "cat.jpg")
    err = one_error_line(*run(capsys, tmp_path / "album", "--search", "cat", "--model", model_dir))
    assert f"folder '{tmp_path / 'album'}' holds no image files" in err and "-r takes those of its subfolders" in err


def test_missing_model_is_one_line(capsys, folder, tmp_path):
    err = one_error_line(*run(capsys, folder, "--search", "cat", "--model", tmp_path / "nope", "--index",
                              tmp_path / "i"))
    assert err.startswith(f"altclip.py: error: model '{tmp_path / 'nope'}': ") and "does not exist" in err


@pytest.mark.parametrize("argv, message", [
    (["--search", "cat", "a dog"], "--search ranks images by one query and takes no labels: drop 'a dog'"),
    (["--like", str(CAT), "--labels-file", "x"], "--like ranks images by one query and takes no labels"),
    (["--search", "cat", "--like", str(CAT)], "argument --like: not allowed with argument --search"),
    (["--search", "  "], "--search: the query is empty"),
    (["a cat", "a dog", "--index", "i.sqlite"], "--index is the embedding index of --search and --like"),
])
def test_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main([str(CAT.parent), *argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and message in err.strip().splitlines()[-1], err
