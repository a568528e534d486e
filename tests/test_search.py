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
    (["--search", "  "], "--search: the query is empty"),
    (["a cat", "a dog", "--index", "i.sqlite"], "--index is the embedding index of --search, --like and --update"),
])
def test_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main([str(CAT.parent), *argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and message in err.strip().splitlines()[-1], err


# -----------------------------------------------------------------------------
# Combined queries: --search, --like and --not, repeated, mixed and weighted. Expected scores come from the Python API
# (load_pretrained + altclip.preprocess + Tokenizer), the formula written out: Σ w·unit(term), --not subtracted.

API_ATOL = 1e-5  # cosines, float32, the command line against the Python API on the same checkpoint


@pytest.fixture(scope="session")
def api(model_dir):
    """(texts(list) → (n, P), images(paths) → (n, P)): L2-normalised embeddings through the Python API."""
    from load_weights import load_pretrained

    model, tokenizer = load_pretrained(model_dir), Tokenizer.from_pretrained(model_dir)

    def texts(queries):
        tokens = tokenizer(queries)
        with torch.inference_mode():
            return F.normalize(model.get_text_features(tokens["input_ids"], tokens["attention_mask"]), dim=-1)

    def images(paths):
        with torch.inference_mode():
            return F.normalize(model.get_image_features(altclip.preprocess([str(p) for p in paths])), dim=-1)

    return texts, images


def expected_scores(api, query, paths):
    return (api[1](paths) @ F.normalize(query, dim=-1)).tolist()


def test_combined_weighted_query_equals_the_formula(capsys, model_dir, api, folder, tmp_path):
    texts, images = api
    code, result, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", "2:a photo of a cat",
                             "--like", folder / "noise.png", "--not", "0.5:eine Tasse Kaffee", "--search",
                             "一只猫的照片")
    t = texts(["a photo of a cat", "eine Tasse Kaffee", "一只猫的照片"])
    query = 2 * t[0] + images([folder / "noise.png"])[0] - 0.5 * t[1] + t[2]
    ranked = [r["image"] for r in result]
    assert sorted(ranked) == sorted(str(folder / n) for n in GOOD if n != "noise.png")  # the --like image left out
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]),
                               torch.tensor(expected_scores(api, query, ranked)), atol=API_ATOL, rtol=0)
    # Again with every image indexed: the texts go through the text side loaded alone, to the same scores.
    os.remove(folder / "bad.jpg")  # (never indexed: it would be tried, with the whole model, every time)
    code, again, err = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", "2:a photo of a cat",
                              "--like", folder / "noise.png", "--not", "0.5:eine Tasse Kaffee", "--search",
                              "一只猫的照片", "-v")
    assert "text tower loaded alone" in err and [r["image"] for r in again] == ranked
    torch.testing.assert_close(torch.tensor([r["score"] for r in again]), torch.tensor([r["score"] for r in result]),
                               atol=1e-6, rtol=0)
    # The weights count: unweighted, the same terms rank by another query (a mix-up of the two would show).
    unweighted = t[0] + images([folder / "noise.png"])[0] - t[1] + t[2]
    assert max(abs(a - b) for a, b in zip(expected_scores(api, query, ranked),
                                          expected_scores(api, unweighted, ranked))) > 0.01


def test_several_like_images_are_all_left_out(capsys, model_dir, api, folder, tmp_path):
    _, images = api
    code, result, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--like", folder / "cat.jpg",
                             "--like", "3:" + str(folder / "gradient.bmp"), "--template", "a photo of {}")
    ranked = [r["image"] for r in result]
    assert sorted(ranked) == sorted(str(folder / n) for n in ("coffee.JPEG", "noise.png", "wide.gif"))
    query = images([folder / "cat.jpg"])[0] + 3 * images([folder / "gradient.bmp"])[0]
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]),
                               torch.tensor(expected_scores(api, query, ranked)), atol=API_ATOL, rtol=0)


@pytest.mark.parametrize("given, text", [
    ("note: a cat", "note: a cat"),  # a colon inside a text: the text as it is
    ("1:3D: a cube", "3D: a cube"),  # a text that starts like a weight, given its own weight
    ("0.5:a cat", "a cat"),
])
def test_a_colon_inside_a_text_stays_text(capsys, model_dir, api, folder, tmp_path, given, text):
    texts, _ = api
    code, result, _ = search(capsys, model_dir, tmp_path / "i.sqlite", folder, "--search", given, "--template",
                             "a photo: {}")
    ranked = [r["image"] for r in result]
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]),
                               torch.tensor(expected_scores(api, texts([f"a photo: {text}"])[0], ranked)),
                               atol=API_ATOL, rtol=0)


@pytest.mark.parametrize("argv, message", [
    (["--search", "3D:a cube"], "--search '3D:a cube': '3D' is not a weight; W:TEXT takes a number, as in 2:… or "
                                "0.5:… (to take the whole of it as is, weigh it: '1:3D:a cube')"),
    (["--search", "1,5:a cat"], "'1,5' is not a weight"),
    (["--like", "2x:cat.jpg"], "--like 2x:cat.jpg: '2x' is not a weight; W:IMAGE takes a number"),
    (["--search", "-1:a cat"], "--search '-1:a cat': the weight must be a positive number (to subtract a text, use --not)"),
    (["--search", "a", "--not", "0:a cat"], "--not '0:a cat': the weight must be a positive number"),
    (["--search", "1e999:a cat"], "the weight must be a positive number"),
    (["--search", "2:  "], "--search '2:  ': nothing after the weight 2:"),
    (["--not", "a dog"], "--not subtracts from a query: give --search TEXT or --like IMAGE too"),
    (["--search", "a cat", "--json", "--paths"], "argument --paths: not allowed with argument --json"),
    (["a cat", "a dog", "--paths"], "--paths prints the images a search ranks; classification prints labels"),
])
def test_query_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main([str(CAT.parent), *argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "" and message in err.strip().splitlines()[-1], err


def test_like_file_that_is_not_an_image_is_one_line(capsys, model_dir, folder, tmp_path, counted):
    err = one_error_line(*run(capsys, folder, "--search", "a cat", "--like", folder / "notes.txt", "--model",
                              model_dir, "--index", tmp_path / "i"))
    assert err == bad_line(folder / "notes.txt") and counted == []  # refused before the model loads
    err = one_error_line(*run(capsys, folder, "--like", folder / "missing.jpg", "--model", model_dir))
    assert err == f"altclip.py: error: cannot open image '{folder / 'missing.jpg'}': No such file or directory"


def test_terms_that_cancel_out_are_one_line(capsys, model_dir, tmp_path):
    err = one_error_line(*run(capsys, many_images(tmp_path / "photos", 2), "--search", "2:a cat", "--not", "2:a cat", "--model", model_dir,
                              "--index", tmp_path / "i"))
    assert err == "altclip.py: error: the query has no direction left: --search '2:a cat' --not '2:a cat' cancel out"


def test_folder_of_unreadable_images_ranks_nothing(capsys, model_dir, folder, tmp_path):
    for name in GOOD:
        os.remove(folder / name)
    code, out, err = run(capsys, folder, "--search", "a cat", "--not", "a dog", "--model", model_dir, "--index",
                         tmp_path / "i")
    assert (code, out, err) == (1, "", bad_line(folder / "bad.jpg") + "\n")


def test_paths_output_is_the_ranking(capsys, model_dir, folder, tmp_path):
    db = tmp_path / "i.sqlite"
    _, result, _ = search(capsys, model_dir, db, folder, "--search", "a cat", "--not", "a dog")
    code, out, err = run(capsys, folder, "--search", "a cat", "--not", "a dog", "--paths", "--model", model_dir,
                         "--index", db)
    assert code == 1 and err.splitlines() == [bad_line(folder / "bad.jpg")]
    assert out.splitlines() == [r["image"] for r in result] and out.endswith("\n")
    code, out, _ = run(capsys, folder, "--search", "a cat", "--not", "a dog", "--paths", "--top-k", "2", "--model",
                       model_dir, "--index", db)
    assert out.splitlines() == [r["image"] for r in result[:2]]


# -----------------------------------------------------------------------------
# Hidden names and --exclude.


@pytest.fixture
def tree(tmp_path):
    """a.jpg, .hidden.jpg, .cache/c.jpg, sub/b.png, sub/.d.jpg, sub/thumbs/t.jpg, other/e.jpg"""
    d = tmp_path / "tree"
    for rel, src in [("a.jpg", CAT), (".hidden.jpg", COFFEE), (".cache/c.jpg", CAT), ("sub/b.png", COFFEE),
                     ("sub/.d.jpg", CAT), ("sub/thumbs/t.jpg", COFFEE), ("other/e.jpg", CAT)]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, d / rel)
    return d


def ranked_names(capsys, model_dir, db, d, *argv):
    code, result, err = search(capsys, model_dir, db, d, "--search", "a cat", *argv)
    return code, sorted(os.path.relpath(r["image"], d) for r in result), err


def test_hidden_files_and_folders_are_skipped_unless_hidden(capsys, model_dir, api, tree, tmp_path):
    db = tmp_path / "i.sqlite"
    assert ranked_names(capsys, model_dir, db, tree, "-r")[:2] == \
        (0, ["a.jpg", "other/e.jpg", "sub/b.png", "sub/thumbs/t.jpg"])
    assert ranked_names(capsys, model_dir, db, tree)[:2] == (0, ["a.jpg"])
    code, names, _ = ranked_names(capsys, model_dir, db, tree, "-r", "--hidden")
    assert names == [".cache/c.jpg", ".hidden.jpg", "a.jpg", "other/e.jpg", "sub/.d.jpg", "sub/b.png",
                     "sub/thumbs/t.jpg"]
    assert ranked_names(capsys, model_dir, db, tree, "--hidden")[1] == [".hidden.jpg", "a.jpg"]
    # The scores of hidden files are the Python API's too.
    code, result, _ = search(capsys, model_dir, db, tree / "sub", "--search", "a cat", "--hidden")
    texts, _ = api
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]),
                               torch.tensor(expected_scores(api, texts(["a cat"])[0], [r["image"] for r in result])),
                               atol=API_ATOL, rtol=0)


def test_exclude_drops_files_and_does_not_enter_folders(capsys, model_dir, tree, tmp_path, monkeypatch):
    db = tmp_path / "i.sqlite"
    assert ranked_names(capsys, model_dir, db, tree, "-r", "--exclude", "*.png")[1] == \
        ["a.jpg", "other/e.jpg", "sub/thumbs/t.jpg"]
    assert ranked_names(capsys, model_dir, db, tree, "-r", "--exclude", "*/thumbs", "--exclude", "other")[1] == \
        ["a.jpg", "sub/b.png"]
    assert ranked_names(capsys, model_dir, db, tree, "--exclude", "a.*", "--hidden")[1] == [".hidden.jpg"]
    # A folder that matches is not entered at all: one that would refuse to be read is not even named.
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) == str(tree / "sub" / "thumbs"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    code, names, err = ranked_names(capsys, model_dir, db, tree, "-r", "--exclude", "sub/th*")
    assert code == 0 and err == "" and names == ["a.jpg", "other/e.jpg", "sub/b.png"]
    code, names, err = ranked_names(capsys, model_dir, db, tree, "-r")
    assert code == 1 and "cannot read folder" in err  # the refusal is real when the folder is entered


def test_exclude_that_matches_everything_is_one_line(capsys, model_dir, tree, tmp_path, counted):
    err = one_error_line(*run(capsys, tree, "--search", "a cat", "-r", "--exclude", "*", "--model", model_dir,
                              "--index", tmp_path / "i"))
    assert err == (f"altclip.py: error: folder '{tree}' holds no image files ({' '.join(cli.IMAGE_EXTENSIONS)}); "
                   f"--exclude '*' left out 3 file(s) and folder(s) of it")
    (tmp_path / "only hidden").mkdir()
    shutil.copy(CAT, tmp_path / "only hidden" / ".x.jpg")
    err = one_error_line(*run(capsys, tmp_path / "only hidden", "--search", "a cat", "--model", model_dir))
    assert err.endswith("; 1 hidden file(s) and folder(s) (names starting with \".\"), which --hidden takes")
    assert counted == []


def test_excluded_and_hidden_files_keep_their_embeddings(capsys, model_dir, tree, tmp_path, counted):
    db = tmp_path / "i.sqlite"
    search(capsys, model_dir, db, tree, "--search", "a cat", "-r", "--hidden")
    assert len(rows(db)) == 7
    search(capsys, model_dir, db, tree, "--search", "a cat", "-r", "--exclude", "sub")
    assert len(rows(db)) == 7  # left out of this search, not deleted: kept
    os.remove(tree / "sub" / "b.png")
    search(capsys, model_dir, db, tree, "--search", "a cat", "-r")
    assert sorted(rows(db)) == sorted(str(tree / n) for n in [".cache/c.jpg", ".hidden.jpg", "a.jpg", "other/e.jpg",
                                                             "sub/.d.jpg", "sub/thumbs/t.jpg"])


# -----------------------------------------------------------------------------
# --update: the index brought up to date, nothing ranked.


def update(capsys, model_dir, db, d, *argv):
    code, out, err = run(capsys, d, "--update", "--model", model_dir, "--index", db, *argv)
    assert "Traceback" not in err
    return code, out, err


def test_update_embeds_new_and_changed_and_forgets_deleted(capsys, model_dir, api, folder, tmp_path, counted):
    db = tmp_path / "i.sqlite"
    code, out, err = update(capsys, model_dir, db, folder)
    assert code == 1 and out == f"{folder}: 5 embedded, 0 unchanged, 0 removed, 1 unreadable\n"
    assert err.splitlines() == [bad_line(folder / "bad.jpg")]
    stored = rows(db)
    assert sorted(stored) == sorted(str(folder / n) for n in GOOD)
    _, images = api
    torch.testing.assert_close(F.normalize(torch.from_numpy(np.stack([stored[str(folder / n)][2] for n in GOOD])),
                                           dim=-1), images([folder / n for n in GOOD]), atol=API_ATOL, rtol=0)
    os.remove(folder / "bad.jpg")
    shutil.copy(CAT, folder / "coffee.JPEG")  # changed
    os.remove(folder / "noise.png")  # deleted
    shutil.copy(COFFEE, folder / "new.jpg")  # new
    counted.clear()
    code, out, err = update(capsys, model_dir, db, folder, "-r")
    assert (code, out, err) == (0, f"{folder}: 3 embedded, 3 unchanged, 1 removed, 0 unreadable\n", "")
    assert sum(counted) == 3  # coffee.JPEG, new.jpg and sub/nested.jpg
    counted.clear()
    code, result, _ = search(capsys, model_dir, db, folder, "--search", "a cat", "-r")
    assert counted == [] and len(result) == 6  # the search finds everything in the index


def test_update_with_nothing_new_loads_no_model(capsys, model_dir, tmp_path, monkeypatch):
    photos, db = many_images(tmp_path / "photos", 3), tmp_path / "i.sqlite"
    update(capsys, model_dir, db, photos)

    def no_model(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_model", no_model)
    assert update(capsys, model_dir, db, photos) == (0, f"{photos}: 0 embedded, 3 unchanged, 0 removed, 0 unreadable\n",
                                                     "")


def test_update_on_an_empty_folder_changes_nothing(capsys, model_dir, tmp_path):
    photos, db = many_images(tmp_path / "photos", 3), tmp_path / "i.sqlite"
    update(capsys, model_dir, db, photos)
    for f in photos.iterdir():  # as if the drive it lives on were not mounted
        f.rename(tmp_path / f.name)
    err = one_error_line(*update(capsys, model_dir, db, photos))
    assert err == (f"altclip.py: error: folder '{photos}' holds no image files ({' '.join(cli.IMAGE_EXTENSIONS)}); "
                   f"--update changed nothing in the index")
    assert len(rows(db)) == 3
    (tmp_path / "empty").mkdir()
    assert one_error_line(*update(capsys, model_dir, tmp_path / "fresh.sqlite", tmp_path / "empty")).endswith(
        "--update changed nothing in the index")


@pytest.mark.parametrize("argv, message", [
    (["--search", "a cat"], "--update embeds the folder's images into the index and ranks nothing: drop "
                            "--search/--like/--not"),
    (["a cat"], "ranks nothing: drop a LABEL"),
    (["--json"], "ranks nothing: drop --json"),
    (["--paths"], "ranks nothing: drop --paths"),
    (["--top-k", "3"], "ranks nothing: drop --top-k"),
])
def test_update_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main([str(CAT.parent), "--update", *argv])
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    with pytest.raises(SystemExit) as e:
        cli.main([str(CAT), "--update"])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"--update takes a folder; '{CAT}' is not one")


@pytest.mark.slow  # two processes that each import torch: ~10-30 s on 2 busy cores
def test_update_beside_a_search_on_one_index(capsys, model_dir, tmp_path, counted):
    photos, db, barrier = many_images(tmp_path / "photos", 12), tmp_path / "i.sqlite", tmp_path / "barrier"
    barrier.mkdir()
    common = ["--model", model_dir, "--index", db, "--batch-size", "1"]
    procs = [wrapped([photos, "--search", "a cat", "--json", *common], BARRIER=str(barrier)),
             wrapped([photos, "--update", *common], BARRIER=str(barrier))]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert len(os.listdir(barrier)) == 2  # both were embedding at the same time
    assert len(json.loads(outs[0][0])) == 12
    assert re.fullmatch(rf"{re.escape(str(photos))}: \d+ embedded, \d+ unchanged, 0 removed, 0 unreadable\n", outs[1][0])
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(rows(db)) == [str(photos / f"img{k:02d}.png") for k in range(12)]
    code, out, _ = update(capsys, model_dir, db, photos)
    assert out.endswith(": 0 embedded, 12 unchanged, 0 removed, 0 unreadable\n") and counted == []


# -----------------------------------------------------------------------------
# HEIC/HEIF through the optional pillow-heif.


@pytest.fixture
def without_pillow_heif(monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` raises ImportError
    cli.heif_ready.cache_clear()
    yield
    cli.heif_ready.cache_clear()


@pytest.fixture
def fake_pillow_heif(monkeypatch):
    """pillow-heif as if installed: the .heic files of these tests hold PNG data, which Pillow reads by its content
    once the (fake) opener is registered."""
    import types
    registered = []
    monkeypatch.setitem(sys.modules, "pillow_heif",
                        types.SimpleNamespace(register_heif_opener=lambda: registered.append(True)))
    cli.heif_ready.cache_clear()
    yield registered
    cli.heif_ready.cache_clear()


def heic_folder(d: Path) -> Path:
    d.mkdir()
    shutil.copy(CAT, d / "cat.jpg")
    rng = np.random.default_rng(3)
    for name in ("phone1.HEIC", "phone2.heif"):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(d / name, format="PNG")
    return d


def test_heic_without_pillow_heif_is_named_once_and_skipped(capsys, model_dir, tmp_path, without_pillow_heif,
                                                            counted):
    d = heic_folder(tmp_path / "phone")
    code, result, err = search(capsys, model_dir, tmp_path / "i.sqlite", d, "--search", "a cat")
    hint = "HEIC/HEIF photos need pillow-heif: pip install pillow-heif"
    assert code == 1 and [r["image"] for r in result] == [str(d / "cat.jpg")] and sum(counted) == 1
    assert err.splitlines() == [f"altclip.py: error: cannot open image '{d / n}': {hint}"
                                for n in ("phone1.HEIC", "phone2.heif")]
    err = one_error_line(*run(capsys, d, "--like", d / "phone1.HEIC", "--model", model_dir, "--index",
                              tmp_path / "i.sqlite"))
    assert err == f"altclip.py: error: cannot open image '{d / 'phone1.HEIC'}': {hint}"


def test_heic_with_pillow_heif_is_answered(capsys, model_dir, api, tmp_path, fake_pillow_heif):
    d = heic_folder(tmp_path / "phone")
    code, result, err = search(capsys, model_dir, tmp_path / "i.sqlite", d, "--search", "a cat")
    assert (code, err) == (0, "") and fake_pillow_heif == [True]  # registered once
    ranked = [r["image"] for r in result]
    assert sorted(ranked) == [str(d / n) for n in ("cat.jpg", "phone1.HEIC", "phone2.heif")]
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]),
                               torch.tensor(expected_scores(api, api[0](["a cat"])[0], ranked)), atol=API_ATOL, rtol=0)


def test_real_heic_file(capsys, model_dir, api, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")  # optional: pip install pillow-heif
    cli.heif_ready.cache_clear()
    d = tmp_path / "phone"
    d.mkdir()
    pixels = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    pillow_heif.from_bytes(mode="RGB", size=(96, 64), data=pixels.tobytes()).save(d / "photo.heic", quality=90)
    shutil.copy(CAT, d / "cat.jpg")
    code, result, err = search(capsys, model_dir, tmp_path / "i.sqlite", d, "--search", "a cat")
    assert (code, err) == (0, "") and len(result) == 2
    pillow_heif.register_heif_opener()
    ranked = [r["image"] for r in result]
    torch.testing.assert_close(torch.tensor([r["score"] for r in result]),
                               torch.tensor(expected_scores(api, api[0](["a cat"])[0], ranked)), atol=API_ATOL, rtol=0)


# -----------------------------------------------------------------------------
# Decoding ahead of the model, in threads, in order, bounded; the pixels are preprocess's, bit for bit.


def test_decode_ahead_is_in_order_bounded_and_threaded():
    import threading
    import time as clock
    finished, consumed, waiting, threads = [], [0], [], set()

    def decode(path, size):  # faster than the caller: without a bound, decoded images would pile up
        threads.add(threading.current_thread().name)
        clock.sleep(0.0005 * (path % 3))  # out-of-order finishing
        finished.append(path)
        if path % 7 == 3:
            raise altclip.ImageError(f"cannot open image '{path}': broken")
        return torch.full((1, 3, 2, 2), float(path))

    paths = list(range(200))
    for k, (path, pixels, message) in enumerate(cli.decode_ahead(paths, 2, workers=3, ahead=8, decoder=decode)):
        assert path == k  # in the order given
        assert (pixels is None) == (k % 7 == 3) and (message is None) != (pixels is None)
        assert pixels is None or pixels[0, 0, 0, 0].item() == k
        clock.sleep(0.002)  # a slow model
        waiting.append(len(finished) - consumed[0])
        consumed[0] += 1
    assert max(waiting) <= 9  # never more than `ahead` decoded beyond the one the caller holds
    assert max(waiting) >= 5  # (and they did run ahead)
    assert threading.current_thread().name not in threads and len(threads) > 1
    # Stopped early (Ctrl-C): the queued decodes are dropped.
    finished.clear()
    gen = cli.decode_ahead(list(range(1000)), 2, workers=2, ahead=8, decoder=decode)
    for _ in range(3):
        next(gen)
    gen.close()
    clock.sleep(0.1)
    assert len(finished) <= 3 + 8 + 2


def test_decoded_pixels_are_preprocess_exactly(folder, tmp_path):
    from test_preprocess import jpeg_with_orientation

    # Large enough (≥ 2 × 224 on each side) that a JPEG decoder's shortcut (decoding at 1/2 or 1/4 scale) would apply.
    rotated, big = tmp_path / "rotated.jpg", tmp_path / "big.jpg"
    jpeg_with_orientation(rotated, np.random.default_rng(5).integers(0, 256, (500, 700, 3), dtype=np.uint8), 6)
    Image.open(CAT).resize((1200, 800), Image.BICUBIC).save(big, quality=90)
    paths = [str(folder / n) for n in GOOD] + [str(rotated), str(big)]
    decoded = list(cli.decode_ahead(paths, 224, workers=4, ahead=3))
    assert [p for p, _, _ in decoded] == paths
    for path, pixels, _ in decoded:
        assert torch.equal(pixels, altclip.preprocess(path)), path


# -----------------------------------------------------------------------------
# --device auto.


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    import types
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.auto_device()[0] == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends, "mps", types.SimpleNamespace(is_available=lambda: True))
    assert cli.auto_device()[0] == "mps"
    monkeypatch.setattr(torch.backends, "mps", types.SimpleNamespace(is_available=lambda: False))
    assert cli.auto_device() == ("cpu", "--device auto: torch sees no CUDA or MPS device")


def test_device_auto_takes_the_cpu_for_int8(monkeypatch):
    """int8 runs on the CPU only: --device auto must not pick a GPU for it (int8 would refuse the GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.parse_args(["x", "--search", "a cat", "--dtype", "int8"]).device == "cpu"
    with pytest.raises(SystemExit):  # float32 on a GPU torch does not have here: a usage error, as without int8
        cli.parse_args(["x", "--search", "a cat"])


def test_device_auto_is_the_default_and_verbose_says_which_ran(capsys, model_dir, tmp_path):
    code, _, err = run(capsys, CAT, "--search", "a cat", "--model", model_dir, "--index", tmp_path / "i", "-v")
    device, why = cli.auto_device()
    assert code == 0 and f"float32 on {device}" in err and why in err
    code, _, err = run(capsys, CAT, "--search", "a dog", "--model", model_dir, "--index", tmp_path / "j", "-v",
                       "--device", "cpu")
    assert "float32 on cpu" in err and "--device auto" not in err
