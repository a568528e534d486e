"""Weights for the notebooks: the real BAAI/AltCLIP when it is on this machine, else a tiny random model.

    import weights
    model, tok, description = weights.load()
    print(description)                  # says which one, and whether the scores mean anything

Where the real weights are looked for, in order:
1. the folder named by the environment variable ALTCLIP_WEIGHTS (config.json, weights, sentencepiece.bpe.model);
   ALTCLIP_WEIGHTS=random skips the search and builds the tiny model (the notebook test does this by default);
2. the Hugging Face hub cache, for BAAI/AltCLIP, strictly offline: `local_files_only=True` and HF_HUB_OFFLINE=1, so
   a machine without the weights (or without a network) never waits on a download.
Otherwise `load` builds a tiny random AltCLIP on the fly: 64-wide towers of 2 blocks each, but the real image
geometry (224 px, 14 px patches, a 16×16 grid) and a real, if small, multilingual sentencepiece tokenizer trained
in a fraction of a second by tests/spm_fixture.py. Its scores are meaningless; its shapes and steps are AltCLIP's.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository: altclip.py, load_weights.py, tokenizer.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with warnings.catch_warnings():  # huggingface_hub's tqdm.auto warns in Jupyter that ipywidgets is missing: harmless
    warnings.filterwarnings("ignore", message="IProgress not found")
    from huggingface_hub import hf_hub_download, snapshot_download  # noqa: E402,F401 (lazy package: load it here)
    from altclip import AltCLIP, AltCLIPConfig, TextConfig, VisionConfig  # noqa: E402
    from tokenizer import Tokenizer  # noqa: E402

REPO_ID = "BAAI/AltCLIP"
SEED = 0


def load(prefer_real: bool = True):
    """(model, tokenizer, description). The model is in eval mode, float32, on the CPU.

    prefer_real=False builds the tiny random model even when real weights are available.
    """
    source = os.environ.get("ALTCLIP_WEIGHTS", "").strip()
    if prefer_real and source.lower() != "random":
        folder = Path(source).expanduser() if source else _cached_snapshot()
        if source and not folder.is_dir():
            raise FileNotFoundError(f"ALTCLIP_WEIGHTS={source} is not a folder; point it at a BAAI/AltCLIP "
                                    f"download, or set ALTCLIP_WEIGHTS=random for the tiny random model")
        if folder is not None:
            return _load_real(folder, str(folder) if source else f"{REPO_ID} (Hugging Face cache)")
    return tiny_random()


def _cached_snapshot() -> Path | None:
    """The hub cache's folder for BAAI/AltCLIP if its weights are there; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(REPO_ID, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError), or huggingface_hub missing
        return None
    has_weights = any((folder / f).exists() for f in ("model.safetensors", "pytorch_model.bin",
                                                     "model.safetensors.index.json", "pytorch_model.bin.index.json"))
    return folder if has_weights and (folder / "sentencepiece.bpe.model").exists() else None


def _load_real(folder: Path, name: str):
    from load_weights import load_pretrained

    model = load_pretrained(folder)  # float32, eval mode, strict
    tok = Tokenizer.from_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    return model, tok, (f"trained weights: {name}, {n / 1e6:.1f}M parameters. Scores and pictures are those of "
                        f"this checkpoint.")


def tiny_config(vocab_size: int) -> AltCLIPConfig:
    """AltCLIP's structure at toy width: real image geometry, 64-wide towers, 4 heads of 16, 2 blocks each."""
    return AltCLIPConfig(
        vision=VisionConfig(image_size=224, patch_size=14, hidden_size=64, intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=4),
        text=TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, project_dim=48),
        projection_dim=32,
    )


def tiny_random():
    """A tiny AltCLIP with seeded random weights and a small multilingual tokenizer trained on the fly."""
    spec = importlib.util.spec_from_file_location("spm_fixture", ROOT / "tests" / "spm_fixture.py")
    spm_fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(spm_fixture)
    with tempfile.TemporaryDirectory() as d:  # the tokenizer reads the model file once, at construction
        tok = Tokenizer.from_pretrained(spm_fixture.train_sentencepiece(d).parent)
    torch.manual_seed(SEED)
    config = tiny_config(tok.vocab_size)
    model = AltCLIP(config).eval()
    n = sum(p.numel() for p in model.parameters())
    return model, tok, (f"a TINY RANDOM AltCLIP ({n / 1e3:.0f}K parameters, seed {SEED}; 64-wide towers of 2 blocks, "
                        f"a {tok.vocab_size}-token tokenizer trained on the fly): the real BAAI/AltCLIP weights are "
                        f"not on this machine. Random weights give MEANINGLESS scores and pictures; the shapes, the "
                        f"steps and the checks against the model's own forward are what this notebook shows. "
                        f"Set ALTCLIP_WEIGHTS=/path/to/AltCLIP (or download BAAI/AltCLIP into the hub cache) and "
                        f"re-run for the real thing.")
