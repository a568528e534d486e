"""
An index of image embeddings in SQLite, so that searching a folder a second time embeds only what changed.

    index = EmbeddingIndex(default_path(), model_key(folder, weights, "float32"))
    stored = index.lookup({path: file_signature(path) for path in paths}, dim=768)   # {path: float32 vector}
    index.add([(path, signature, vector), ...])                                         # one transaction

A stored embedding counts only for the same model and the same file. The model is `model_key`: a hash of the
checkpoint's config.json, the names, sizes and modification times of its weight files, and the dtype it ran in (the
weights themselves are never read: 3.5 GB). The file is its absolute path, size and modification time
(`file_signature`): a file whose size or time changed is embedded again.

One SQLite file holds the embeddings of any number of models, a row per (model, image), so `--index FILE` names one
thing and deleting that file clears everything. A row is dropped when its file is deleted (`forget_missing`); a file
that a search leaves out but that still exists (hidden, excluded, in a folder it cannot read) keeps its row. Rows are committed batch by batch as the images are embedded, so a
search that is killed keeps what it finished; SQLite's write-ahead log and a busy timeout let two searches share one
index (each may embed an image the other is embedding too; the row is then written twice, identically). The file is
marked as ours (PRAGMA application_id): a file that is not an SQLite database, or is another program's, is refused
with an error naming it, never overwritten; an altclip index of another schema version is rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from checkpoint_files import shard_names

APPLICATION_ID = 0x416C7443  # "AltC", in the SQLite header: the file is an altclip index
SCHEMA_VERSION = 1  # PRAGMA user_version; an index of another version is rebuilt
BUSY_TIMEOUT_S = 60.0  # how long to wait for another search's write to finish (a commit takes milliseconds)

SCHEMA = """
CREATE TABLE embeddings (
    model TEXT NOT NULL,        -- model_key(): checkpoint fingerprint and dtype
    path TEXT NOT NULL,         -- absolute path of the image file
    size INTEGER NOT NULL,      -- the file's size in bytes and modification time in ns when it was embedded
    mtime_ns INTEGER NOT NULL,
    vector BLOB NOT NULL,       -- the image features, float32, not normalised
    PRIMARY KEY (model, path)
) WITHOUT ROWID
"""


class IndexFileError(Exception):
    """An index file that cannot be used: not an SQLite database, another program's, damaged or not writable.
    The message names the file."""


def default_path() -> Path:
    """$XDG_CACHE_HOME/altclip/index.sqlite, or ~/.cache/altclip/index.sqlite (XDG: a relative value is ignored)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(cache):
        cache = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "altclip" / "index.sqlite"


def model_key(folder: Path, weights: Path, dtype: str) -> str:
    """What makes two runs' image embeddings interchangeable: the checkpoint's config.json (its bytes), its weight
    files (name, size, modification time: a changed or re-downloaded file changes them) and the dtype."""
    files = [weights]
    if weights.name.endswith(".index.json"):  # sharded: the index and every shard it names
        files += [weights.parent / shard for shard in shard_names(weights)]
    h = hashlib.sha256((Path(folder) / "config.json").read_bytes())
    for f in files:
        st = f.stat()  # through symlinks: the hub cache links names to content-addressed blobs
        h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    h.update(f"\0{dtype}".encode())
    return h.hexdigest()[:32]


def _text(path: str) -> str:
    """A path as SQLite text: a name that is not valid UTF-8 (Linux allows any bytes) keeps its odd bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_signature(path: str) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file, or None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _deleted(text: str) -> bool:
    """Whether a stored path (as _text wrote it) names no file now. A file that cannot be reached for another reason
    (a folder without permission, a disk that is not mounted) is not known to be deleted."""
    candidates = [text]
    if "\\x" in text:  # maybe a name that is not UTF-8: its odd bytes back as they were
        raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode("utf-8"))
        candidates.append(os.fsdecode(raw))
    for path in candidates:
        try:
            os.stat(path)
            return False
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return False
    return True


class EmbeddingIndex:
    def __init__(self, path: str | os.PathLike, model: str):
        self.path, self.model = Path(path), model
        self.rebuilt_from = None  # the schema version of an index rebuilt on opening, for the caller to say so
        with self._errors("cannot open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: every transaction below is an explicit BEGIN … COMMIT.
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        with self._errors("cannot use"):
            self._check_or_create()
            # The write-ahead log: readers never wait for a writer, a killed writer leaves committed rows intact.
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: safe against a killed process, fewer fsyncs

    def _check_or_create(self):
        try:  # the first read of the header: a file that is not an SQLite database fails here
            app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise IndexFileError(f"index '{self.path}' is not an SQLite database ({e}); delete it, or choose "
                                 f"another file with --index") from None
        if app_id == APPLICATION_ID and self._version() == SCHEMA_VERSION:
            return
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
            raise IndexFileError(f"index '{self.path}' is another program's SQLite database, not an altclip index; "
                                 f"choose another file with --index (it is left as it is)")
        with self._transaction():
            # Checked again under the write lock: another search may have created or rebuilt it meanwhile.
            app_id = self.db.execute("PRAGMA application_id").fetchone()[0]
            if app_id == APPLICATION_ID and self._version() == SCHEMA_VERSION:
                return
            self.rebuilt_from = self._version() if app_id == APPLICATION_ID else None
            self.db.execute("DROP TABLE IF EXISTS embeddings")
            self.db.execute(SCHEMA)
            self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")  # the write lock now (waiting up to the busy timeout), not mid-way
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def _errors(self, doing: str):
        """sqlite3 and file-system errors → IndexFileError naming the file, in one line."""
        try:
            yield
        except sqlite3.OperationalError as e:  # locked past the timeout, read-only, disk full, cannot be opened
            raise IndexFileError(f"{doing} index '{self.path}': {e}") from None
        except sqlite3.DatabaseError as e:  # its pages are not what SQLite wrote
            raise IndexFileError(f"index '{self.path}' is damaged ({e}): delete it (it is only a cache of "
                                 f"embeddings), or choose another file with --index") from None
        except OSError as e:
            raise IndexFileError(f"{doing} index '{self.path}': {e.strerror or e}") from None

    def lookup(self, files: dict[str, tuple[int, int] | None], dim: int) -> dict[str, np.ndarray]:
        """{absolute path: file_signature} → {absolute path: stored (dim,) float32 vector} for the files whose stored
        signature is theirs; a file that changed, has no signature or is not stored is left out."""
        found = {}
        with self._errors("cannot read"):
            for path, signature in files.items():
                row = self.db.execute("SELECT size, mtime_ns, vector FROM embeddings WHERE model = ? AND path = ?",
                                      (self.model, _text(path))).fetchone()
                if row is not None and signature is not None and tuple(row[:2]) == signature \
                        and len(row[2]) == 4 * dim:
                    found[path] = np.frombuffer(row[2], dtype=np.float32)
        return found

    def add(self, rows: list[tuple[str, tuple[int, int], np.ndarray]]):
        """Store (absolute path, file_signature, vector) rows, replacing older ones, in one transaction."""
        with self._errors("cannot write"), self._transaction():
            self.db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?)",
                                [(self.model, _text(path), size, mtime, np.asarray(v, dtype=np.float32).tobytes())
                                 for path, (size, mtime), v in rows])

    def forget_missing(self, folder: str, recursive: bool, present: set[str]) -> list[str]:
        """Drop the rows, of every model, of files in `folder` (and its subfolders if `recursive`) that are not in
        `present` (the folder's image files now) and no longer exist: a deleted file's embedding is never kept, while
        a file left out of this listing (hidden, excluded) keeps its own. Returns the paths dropped."""
        folder, present = _text(folder), {_text(p) for p in present}
        prefix = os.path.join(folder, "")
        with self._errors("cannot write"), self._transaction():
            paths = [p for (p,) in self.db.execute("SELECT DISTINCT path FROM embeddings WHERE substr(path, 1, ?) = ?",
                                                   (len(prefix), prefix))]
            gone = [p for p in paths if p not in present and (recursive or os.path.dirname(p) == folder)
                    and _deleted(p)]
            self.db.executemany("DELETE FROM embeddings WHERE path = ?", [(p,) for p in gone])
        return gone

    def __len__(self):
        with self._errors("cannot read"):
            return self.db.execute("SELECT count(*) FROM embeddings WHERE model = ?", (self.model,)).fetchone()[0]

    def close(self):
        self.db.close()
