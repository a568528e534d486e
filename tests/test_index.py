"""index.py on its own: what keys a stored embedding (model_key, file_signature), what lookup returns, what
forget_missing drops, and the file it writes (WAL mode, marked as ours). The command line's use of it, with real
embeddings, is tested in test_search.py."""
import json
import os
import sqlite3

import numpy as np
import pytest

import index
from index import EmbeddingIndex, file_signature, model_key

DIM = 8


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


@pytest.fixture
def checkpoint(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"projection_dim": 768}))
    (d / "model.safetensors").write_bytes(b"\0" * 1000)
    return d


def test_model_key_changes_with_config_weights_and_dtype(checkpoint, tmp_path):
    weights = checkpoint / "model.safetensors"
    key = model_key(checkpoint, weights, "float32")
    assert key == model_key(checkpoint, weights, "float32")  # stable
    assert key != model_key(checkpoint, weights, "bfloat16")
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a re-downloaded or rewritten file
    touched = model_key(checkpoint, weights, "float32")
    assert touched != key
    weights.write_bytes(b"\0" * 1001)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert model_key(checkpoint, weights, "float32") not in (key, touched)  # the size counts too
    (checkpoint / "config.json").write_text(json.dumps({"projection_dim": 1024}))
    assert model_key(checkpoint, weights, "float32") not in (key, touched)
    # The file's name and its folder's path do not count: a copy with the same times is the same model.
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in checkpoint.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
        os.utime(copy / f.name, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns))
    assert model_key(copy, copy / "model.safetensors", "float32") == model_key(checkpoint, weights, "float32")


def test_model_key_of_a_sharded_checkpoint_covers_every_shard(checkpoint):
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for s in shards:
        (checkpoint / s).write_bytes(b"\0" * 10)
    idx = checkpoint / "model.safetensors.index.json"
    idx.write_text(json.dumps({"weight_map": {"a": shards[0], "b": shards[1], "c": shards[1]}}))
    key = model_key(checkpoint, idx, "float32")
    (checkpoint / shards[1]).write_bytes(b"\0" * 11)  # the second shard alone changes
    assert model_key(checkpoint, idx, "float32") != key


def test_lookup_returns_only_what_matches(tmp_path):
    db = EmbeddingIndex(tmp_path / "i.sqlite", "model-a")
    db.add([("/p/a.jpg", (10, 100), vec(0)), ("/p/b.jpg", (20, 200), vec(1))])
    found = db.lookup({"/p/a.jpg": (10, 100), "/p/b.jpg": (20, 201), "/p/c.jpg": (30, 300), "/p/d.jpg": None}, DIM)
    assert list(found) == ["/p/a.jpg"]  # b changed (time), c never stored, d unreadable
    np.testing.assert_array_equal(found["/p/a.jpg"], vec(0))  # float32, bit for bit
    assert db.lookup({"/p/a.jpg": (10, 100)}, DIM + 1) == {}  # another width: not ours to use
    assert EmbeddingIndex(tmp_path / "i.sqlite", "model-b").lookup({"/p/a.jpg": (10, 100)}, DIM) == {}
    db.add([("/p/b.jpg", (20, 201), vec(2))])  # replaced, not duplicated
    np.testing.assert_array_equal(db.lookup({"/p/b.jpg": (20, 201)}, DIM)["/p/b.jpg"], vec(2))
    assert len(db) == 2


def test_forget_missing_drops_only_gone_files_in_scope(tmp_path):
    db = EmbeddingIndex(tmp_path / "i.sqlite", "m")
    other = EmbeddingIndex(tmp_path / "i.sqlite", "other-model")
    paths = ["/p/a.jpg", "/p/gone.jpg", "/p/sub/x.jpg", "/p/sub/gone.jpg", "/p2/gone.jpg", "/pp/gone.jpg"]
    db.add([(p, (1, 1), vec(k)) for k, p in enumerate(paths)])
    other.add([("/p/gone.jpg", (1, 1), vec(9))])
    present = {"/p/a.jpg", "/p/sub/x.jpg"}
    db.forget_missing("/p", recursive=False, present={"/p/a.jpg"})
    left = set(db.lookup({p: (1, 1) for p in paths}, DIM))
    assert left == set(paths) - {"/p/gone.jpg"}  # the subfolder and look-alike folders are not in scope
    assert other.lookup({"/p/gone.jpg": (1, 1)}, DIM) == {}  # a deleted file is gone for every model
    db.forget_missing("/p", recursive=True, present=present)
    assert set(db.lookup({p: (1, 1) for p in paths}, DIM)) == present | {"/p2/gone.jpg", "/pp/gone.jpg"}


def test_paths_that_are_not_utf8(tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes in a Linux file name: a lone surrogate in Python
    db = EmbeddingIndex(tmp_path / "i.sqlite", "m")
    db.add([(f"/p/{name}", (1, 2), vec(0))])
    assert list(db.lookup({f"/p/{name}": (1, 2)}, DIM)) == [f"/p/{name}"]
    db.forget_missing("/p", recursive=False, present={f"/p/{name}"})
    assert len(db) == 1


def test_the_file_is_marked_and_in_wal_mode(tmp_path):
    EmbeddingIndex(tmp_path / "deep" / "er" / "i.sqlite", "m").close()  # missing folders are made
    with sqlite3.connect(tmp_path / "deep" / "er" / "i.sqlite") as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == index.APPLICATION_ID
        assert con.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_empty_file_becomes_an_index(tmp_path):
    (tmp_path / "i.sqlite").write_bytes(b"")  # e.g. `touch index.sqlite`: an empty SQLite database
    db = EmbeddingIndex(tmp_path / "i.sqlite", "m")
    db.add([("/a.jpg", (1, 1), vec(0))])
    assert len(db) == 1 and db.rebuilt_from is None


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert index.default_path() == tmp_path / "altclip" / "index.sqlite"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert index.default_path() == tmp_path / "home" / ".cache" / "altclip" / "index.sqlite"


def test_file_signature(tmp_path):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"12345")
    st = os.stat(f)
    assert file_signature(str(f)) == (5, st.st_mtime_ns)
    assert file_signature(str(tmp_path / "missing.jpg")) is None


def test_forget_missing_keeps_files_that_still_exist(tmp_path, monkeypatch):
    """A file left out of a listing (hidden, excluded) but still on disk keeps its embedding; a deleted one is dropped
    and returned; a file that cannot be reached (no permission) is not known to be deleted."""
    d = tmp_path / "p"
    (d / "locked").mkdir(parents=True)
    odd = os.fsdecode(b"caf\xe9.jpg")  # a name that is not UTF-8: stored with \\xNN, found again on disk
    for name in ("kept.jpg", "gone.jpg", odd, "locked/x.jpg"):
        (d / name).write_bytes(b"x")
    db = EmbeddingIndex(tmp_path / "i.sqlite", "m")
    db.add([(str(d / name), (1, 1), vec(k)) for k, name in enumerate(("kept.jpg", "gone.jpg", odd, "locked/x.jpg"))])
    os.remove(d / "gone.jpg")
    stat = os.stat

    def refusing(path, *args, **kwargs):
        if os.fspath(path).startswith(str(d / "locked")):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", refusing)  # root reads any folder, so the refusal is simulated
    assert db.forget_missing(str(d), recursive=True, present=set()) == [str(d / "gone.jpg")]
    assert len(db) == 3
