"""Weights for the notebooks: the real BAAI/AltCLIP when it is on this machine, else the mini AltCLIP committed in
examples/mini-altclip, else (only when that folder is missing) a tiny random model.

    import weights
    model, tok, about = weights.load()
    print("Using", about)               # which model, and what its scores and pictures can mean
    about.kind                          # "real", "mini" or "random"

Where the weights are looked for, in order:
1. the environment variable ALTCLIP_WEIGHTS: a folder in BAAI/AltCLIP's layout (config.json, the weights,
   sentencepiece.bpe.model), or one of the words `mini` (the committed mini model, whatever else is on this machine;
   the notebook test uses it) and `random` (the tiny random model);
2. the Hugging Face hub cache, for BAAI/AltCLIP, strictly offline: `local_files_only=True` and HF_HUB_OFFLINE=1, so
   a machine without the weights (or without a network) never waits on a download;
3. examples/mini-altclip (MINI): a small AltCLIP that train.py trained with the paper's recipe on images of
   coloured shapes and their captions in ten languages (shapes.py). It knows that world, and only that world;
4. only if MINI is missing: a tiny random AltCLIP (64-wide towers of 2 blocks, the real image geometry, a small
   multilingual tokenizer trained in a fraction of a second by tests/helpers.py), with LayerNorms that are not the
   identity and BAAI's logit_scale, so that the notebooks' step-by-step checks still test something. Its scores are
   meaningless.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository: altclip.py, load_weights.py, tokenizer.py
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with warnings.catch_warnings():  # huggingface_hub's tqdm.auto warns in Jupyter that ipywidgets is missing: harmless
    warnings.filterwarnings("ignore", message="IProgress not found")
    from huggingface_hub import snapshot_download  # noqa: E402,F401 (lazy package: load it here)
    from altclip import AltCLIP, AltCLIPConfig, TextConfig, VisionConfig  # noqa: E402
    from tokenizer import Tokenizer  # noqa: E402

REPO_ID = "BAAI/AltCLIP"
MINI = ROOT / "examples" / "mini-altclip"
SEED = 0
LOGIT_SCALE = 4.6052  # BAAI/AltCLIP's trained value, ln(100), for the random model (the init default is 2.6592)


@dataclass(frozen=True)
class About:
    """Which model a notebook runs, in words (str(about)) and as a kind: "real", "mini" or "random"."""
    kind: str
    description: str
    folder: Path | None = None

    def __str__(self):
        return self.description


def load(prefer_real: bool = True):
    """(model, tokenizer, About). The model is in eval mode, float32, on the CPU.

    prefer_real=False skips the real weights (ALTCLIP_WEIGHTS and the hub cache) and takes the mini model."""
    source = os.environ.get("ALTCLIP_WEIGHTS", "").strip()
    if source.lower() == "random":
        return tiny_random(why="ALTCLIP_WEIGHTS=random asks for it")
    if prefer_real and source.lower() != "mini":
        folder = Path(source).expanduser() if source else _cached_snapshot()
        if source and not folder.is_dir():
            raise FileNotFoundError(f"ALTCLIP_WEIGHTS={source} is not a folder; point it at a BAAI/AltCLIP "
                                    f"download, or set ALTCLIP_WEIGHTS=mini (the committed mini model) or random")
        if folder is not None:
            return _load_real(folder, str(folder) if source else f"{REPO_ID} (Hugging Face cache)")
    if (MINI / "config.json").exists():
        return mini(why="ALTCLIP_WEIGHTS=mini asks for it" if source.lower() == "mini" else
                    "the real BAAI/AltCLIP weights are not on this machine")
    if source.lower() == "mini":
        raise FileNotFoundError(f"ALTCLIP_WEIGHTS=mini, but there is no mini model at {MINI}")
    where = MINI.relative_to(ROOT) if MINI.is_relative_to(ROOT) else MINI
    return tiny_random(why=f"neither the real BAAI/AltCLIP weights nor the mini model ({where}) are on this machine")


def _cached_snapshot() -> Path | None:
    """The hub cache's folder for BAAI/AltCLIP if its weights are there; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
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
    return model, tok, About("real", f"the trained weights in {name}, {n / 1e6:.1f}M parameters. Scores and pictures "
                                     f"are those of this checkpoint.", folder)


def _describe(model) -> str:
    v, t = model.config.vision, model.config.text
    g = v.image_size // v.patch_size
    return (f"image tower {v.image_size} px in {v.patch_size} px patches ({g}×{g} grid), {v.num_hidden_layers} "
            f"blocks {v.hidden_size} wide; text tower {t.num_hidden_layers} blocks {t.hidden_size} wide, "
            f"{t.vocab_size}-token vocabulary")


def mini(folder: Path = MINI, why: str = "asked for"):
    """The mini AltCLIP that train.py trained on shapes.py's world (or its teacher, folder=MINI / "teacher")."""
    from load_weights import load_pretrained

    model = load_pretrained(folder)
    tok = Tokenizer.from_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    results = folder / "results.json"
    langs = json.loads(results.read_text())["stages"]["stage2"]["languages"] if results.exists() else []
    where = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    return model, tok, About("mini", (
        f"the mini AltCLIP in {where} ({n / 1e3:.0f}K parameters; {_describe(model)}), trained by train.py with "
        f"the paper's recipe on generated images of ONE COLOURED SHAPE on a grey background (6 colours × 6 shapes, "
        f"small or large, left/right/top/bottom/centre; shapes.py) and their captions in {len(langs) or 'ten'} "
        f"languages ({', '.join(langs)}). Each shape is printed with small copies of itself, one per 14-px patch: "
        f"that print, not the outline, is how it tells shapes apart. It knows that world and nothing else: "
        f"colours, shapes, sizes and positions, in those languages. A photo of a cat is outside it, and so is any "
        f"word its captions never used. It runs here because {why} (for the real model, set ALTCLIP_WEIGHTS=/path/to/AltCLIP or download "
        f"BAAI/AltCLIP into the hub cache)."), folder)


def tiny_config(vocab_size: int) -> AltCLIPConfig:
    """AltCLIP's structure at toy width: real image geometry, 64-wide towers, 4 heads of 16, 2 blocks each."""
    return AltCLIPConfig(
        vision=VisionConfig(image_size=224, patch_size=14, hidden_size=64, intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=4),
        text=TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, project_dim=48),
        projection_dim=32,
    )


def tiny_random(why: str = "asked for"):
    """A tiny AltCLIP with seeded random weights and a small multilingual tokenizer trained on the fly."""
    spec = importlib.util.spec_from_file_location("test_helpers", ROOT / "tests" / "helpers.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    with tempfile.TemporaryDirectory() as d:  # the tokenizer reads the model file once, at construction
        tok = Tokenizer.from_pretrained(helpers.train_sentencepiece(d).parent)
    torch.manual_seed(SEED)
    model = AltCLIP(tiny_config(tok.vocab_size)).eval()
    with torch.no_grad():  # the init leaves LayerNorm the identity, which would make every by-hand LayerNorm trivial
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        model.logit_scale.fill_(LOGIT_SCALE)
    n = sum(p.numel() for p in model.parameters())
    return model, tok, About("random", (
        f"a TINY RANDOM AltCLIP ({n / 1e3:.0f}K parameters, seed {SEED}; {_describe(model)}), because {why}. "
        f"Random weights give MEANINGLESS scores and pictures; the shapes, the steps and the step-by-step checks are "
        f"what this notebook shows."))
