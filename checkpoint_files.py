"""Finding a checkpoint's files: a local folder, or a hub repo id through huggingface_hub's cache.

Weights (load_weights.py) and the tokenizer (tokenizer.py) come from the same places and fail the same way: a
folder that does not exist or holds no weights is named; offline, a model that is not cached gets one line saying
how to get it, after one quick probe instead of huggingface_hub's retries with back-off.
"""
from __future__ import annotations

import json
from pathlib import Path

# Weight formats in order of preference: safetensors can be memory-mapped tensor by tensor.
WEIGHT_FILES = ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]
EXTRA_FILES = ["sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "preprocessor_config.json"]


def shard_names(index: Path) -> list[str]:
    """The shard files a sharded checkpoint's index (*.index.json) names, each once, sorted."""
    return sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))


def resolve(source: str | Path, optional: list[str] = ()) -> tuple[Path, Path]:
    """Return (folder, weights file) for a local folder or a hub repo id, fetching only what is needed.

    From the hub: config.json, the first weight format present in WEIGHT_FILES order (safetensors first, with the
    shards an index names) and, if they exist, the `optional` files. Everything lands in the hub cache.
    """
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is a file; pass the folder that holds config.json and the weights")
        for name in WEIGHT_FILES:
            if (path / name).exists():
                return path, path / name
        raise FileNotFoundError(f"{path} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise FileNotFoundError(f"model folder {source} does not exist (a hub id looks like BAAI/AltCLIP)")
    return _download(str(source), optional)


def _download(repo_id: str, optional) -> tuple[Path, Path]:
    return cache_first(repo_id, lambda local_only: _fetch_all(repo_id, optional, local_only))


def cache_first(repo_id: str, fetch):
    """fetch(local_only=True) from the cache, without touching the network (a model used once works offline and
    starts fast); if that finds nothing, one quick probe of the hub, then fetch(local_only=False)."""
    found = fetch(True)
    if found is None:
        if not hub_reachable():
            raise OSError(offline_message(repo_id))
        found = fetch(False)
    return found


def _fetch_all(repo_id, optional, local_only):
    """(folder, weights) with config.json, one weight format (and its shards) and the optional files, or None."""
    config = hub_file(repo_id, "config.json", local_only)
    if config is None:
        if local_only:
            return None
        raise FileNotFoundError(f"{repo_id} has no config.json on the Hugging Face Hub")
    for name in WEIGHT_FILES:
        weights = hub_file(repo_id, name, local_only)
        if weights is None:
            continue
        if name.endswith(".index.json"):
            if any(hub_file(repo_id, shard, local_only) is None for shard in shard_names(weights)):
                if local_only:
                    return None
                raise FileNotFoundError(f"{repo_id}: {name} names shards that the repository does not have")
        for extra in optional:
            hub_file(repo_id, extra, local_only)
        return config.parent, weights
    if local_only:
        return None
    raise FileNotFoundError(f"{repo_id} has none of {', '.join(WEIGHT_FILES)} on the Hugging Face Hub")


def hub_file(repo_id: str, filename: str, local_only: bool = False) -> Path | None:
    """One file of a hub repo through huggingface_hub's cache, or None if the repo has no such file (or, with
    local_only, if it is not cached). Errors: FileNotFoundError for a repo that does not exist, OSError offline."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=local_only))
    except HFValidationError:
        raise FileNotFoundError(f"{repo_id!r} is neither a local folder nor a Hugging Face Hub repo id") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo_id} is not a model repository on the Hugging Face Hub (or it is private), "
                                f"and no local folder has that name") from None
    except EntryNotFoundError:
        return None
    except LocalEntryNotFoundError:  # not in the cache, and (when asked to download) the hub could not be reached
        if local_only:
            return None
        raise OSError(offline_message(repo_id)) from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all: one quick connection instead of huggingface_hub's retries with back-off."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy can tell; let huggingface_hub try
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_message(repo_id: str) -> str:
    return (f"cannot reach the Hugging Face Hub to download {repo_id}, and it is not in the local cache. Download "
            f"it once with network access (`hf download {repo_id}`), or point at a local copy: --model "
            f"/path/to/folder (or load_pretrained('/path/to/folder'))")
