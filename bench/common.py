"""Shared by the benchmark scripts: a full-size random AltCLIP checkpoint, fixed inputs, both implementations.

The checkpoint is BAAI/AltCLIP's architecture (CLIP ViT-L/14 image tower, XLM-RoBERTa-large text tower, 768-d
projections) with random weights, written once in BAAI's file layout and tensor names:

    bench/out/altclip-random/
        model.safetensors          864M float32 parameters (3.5 GB)
        config.json                the reference's AltCLIPConfig
        sentencepiece.bpe.model    a small sentencepiece tokenizer (the real one is a 5 MB download)
        tokenizer_config.json, special_tokens_map.json, preprocessor_config.json (BAAI's values)
        build.json                 how it was made; written last, so a half-written folder is rebuilt

Nothing here runs on import.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DEFAULT_MODEL = OUT / "altclip-random"
if str(ROOT) not in sys.path:  # the scripts run as `python bench/x.py`; altclip.py lives one level up
    sys.path.insert(0, str(ROOT))

SEED = 0
VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              patch_size=14, image_size=224, projection_dim=768)
INIT_STD = 0.02  # BERT/XLM-R's initializer_range, used for every random tensor

# BAAI/AltCLIP's preprocessor_config.json, in the current (dict-valued) spelling.
PREPROCESSOR = {
    "do_convert_rgb": True, "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3,
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "CLIPImageProcessor",
}

# -----------------------------------------------------------------------------
# The checkpoint.


def reference_config():
    from transformers import AltCLIPConfig
    return AltCLIPConfig(vision_config=dict(VISION), projection_dim=768)  # text config: the defaults, XLM-R large


def build_checkpoint(folder: Path = DEFAULT_MODEL, seed: int = SEED, vocab_size: int = 8000) -> Path:
    """Write a random full-size AltCLIP into `folder` (see the module docstring). Takes ~15-30 s on 2 cores.

    The reference model is built on the meta device (no memory, no initialisation), then every parameter is filled
    from one seeded generator with U(-a, a), a = 0.02·√3 (std 0.02): twice as fast as normal_ on the 250002×1024
    word embeddings, and three times as fast as letting transformers initialise. LayerNorm weights are 1 + noise
    rather than exactly 1 so that no part of the model is an identity; logit_scale keeps its ln(1/0.07).
    """
    from safetensors.torch import save_file
    from transformers import AltCLIPModel

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    config = reference_config()
    with torch.device("meta"):
        model = AltCLIPModel(config)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    a = INIT_STD * math.sqrt(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(config.logit_scale_init_value)
                continue
            p.uniform_(-a, a, generator=g)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(1.0)
    # BAAI/AltCLIP's tensor names: the text tower says `encoder.layer.N`, the image tower `encoder.layers.N`.
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith(("position_ids", "token_type_ids")):
            continue  # constant buffers, not weights (and uninitialised here)
        name = name.replace("vision_model.encoder.layer.", "vision_model.encoder.layers.")
        state[name.replace("text_model.roberta.encoder.layers.", "text_model.roberta.encoder.layer.")] = t
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    del model, state
    (tmp / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    train_tokenizer(tmp, vocab_size)
    (tmp / "build.json").write_text(json.dumps(
        {"seed": seed, "vision_config": VISION, "init": f"U(-a, a), std {INIT_STD}; LayerNorm weights 1 + that",
         "tokenizer_vocab_size": vocab_size, "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def train_tokenizer(folder: Path, vocab_size: int):
    """A small XLM-R-like sentencepiece model: the tests' fixture when present, else a minimal one trained here."""
    try:
        from tests.helpers import train_sentencepiece
    except ImportError:
        train_sentencepiece = None
    if train_sentencepiece is not None:
        return train_sentencepiece(folder, vocab_size=vocab_size)
    import io
    import random

    import sentencepiece as spm

    import tokenizer
    rng = random.Random(SEED)
    words = ("a photo of the cat dog bird house car tree city river mountain ein Foto der Katze Hund une photo du "
             "chat chien 一张 猫 的 照片 狗").split()
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 10))) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, model_type="unigram",
                                   vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
                                   normalization_rule_name="nmt_nfkc", num_threads=1, minloglevel=2)
    (folder / "sentencepiece.bpe.model").write_bytes(buf.getvalue())
    tokenizer.write_config(folder, 512)


def ensure_checkpoint(folder: Path = DEFAULT_MODEL, log=print) -> Path:
    """The checkpoint folder, built first if it is missing or incomplete."""
    folder = Path(folder)
    if (folder / "build.json").exists():
        return folder
    log(f"building the random full-size checkpoint in {folder} (once) ...")
    t0 = time.perf_counter()
    build_checkpoint(folder)
    log(f"  done in {time.perf_counter() - t0:.0f} s")
    return folder


def example_image() -> Path:
    """examples/cat.jpg when the repository has it, else a generated 640×480 JPEG (smooth colours plus noise)."""
    cat = ROOT / "examples" / "cat.jpg"
    if cat.exists():
        return cat
    path = OUT / "synthetic.jpg"
    if not path.exists():
        from PIL import Image
        g = torch.Generator().manual_seed(SEED)
        y, x = torch.meshgrid(torch.linspace(0, 1, 480), torch.linspace(0, 1, 640), indexing="ij")
        rgb = torch.stack([x, y, (x + y) / 2]) * 200 + torch.rand(3, 480, 640, generator=g) * 55
        OUT.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb.permute(1, 2, 0).to(torch.uint8).numpy()).save(path, quality=90)
    return path


# -----------------------------------------------------------------------------
# Inputs, fixed by a seed.


def image_batch(batch: int = 4, size: int = 224, seed: int = SEED) -> torch.Tensor:
    """(B, 3, size, size) normalised-looking pixels, N(0, 1)."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def text_batch(batch: int = 16, lengths=(5, 40), vocab_size: int = 250002, seed: int = SEED):
    """(ids, mask): texts of random length in [lengths] (including <s> and </s>), random ids, right-padded with 1."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lengths[0], lengths[1] + 1, (batch,), generator=g)
    ids = torch.full((batch, int(lens.max())), 1, dtype=torch.long)  # <pad> = 1
    for i, n in enumerate(lens.tolist()):
        ids[i, 0], ids[i, n - 1] = 0, 2  # <s> … </s>
        ids[i, 1:n - 1] = torch.randint(3, vocab_size - 1, (n - 2,), generator=g)  # no specials, no <mask>
    return ids, (ids != 1).long()


# -----------------------------------------------------------------------------
# The two implementations behind one interface.

IMPLS = ("reference", "ours")  # the main job (the command line packs only for large folders)
THROUGHPUT_IMPLS = ("reference", "ours", "ours+onednn")  # ours+onednn: linears packed for oneDNN at load


def load(impl: str, folder: Path, dtype: torch.dtype):
    if impl.startswith("ours"):
        from load_weights import load_pretrained
        return load_pretrained(folder, dtype=dtype, onednn=impl == "ours+onednn")
    from transformers import AltCLIPModel
    from transformers.utils import logging
    logging.disable_progress_bar()  # "Loading weights: 100%|…" on every load
    return AltCLIPModel.from_pretrained(folder, attn_implementation="sdpa", dtype=dtype).eval()


def image_features(impl: str, model, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 768) float32 image embeddings, not normalised."""
    if impl.startswith("ours"):
        return model.get_image_features(pixels)
    return model.get_image_features(pixel_values=pixels.to(model.dtype)).pooler_output.float()


def text_features(impl: str, model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 768) float32 text embeddings, not normalised."""
    if impl.startswith("ours"):
        return model.get_text_features(ids, mask)
    return model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.float()


# -----------------------------------------------------------------------------
# Work done, counted analytically (a multiply-add is 2 FLOPs).


def image_tower_flop_parts(batch: int = 4, image_size: int = 224, patch: int = 14, width: int = 1024,
                           layers: int = 24, mlp: int = 4096, proj: int = 768) -> dict[str, int]:
    """FLOPs of one image-tower forward (plus the visual projection), by part; norms and activations ignored."""
    n = (image_size // patch) ** 2 + 1  # 257 tokens
    return {
        "linears": layers * 2 * batch * n * (4 * width * width + 2 * width * mlp),  # q, k, v, out; fc1, fc2
        "attention": layers * 4 * batch * n * n * width,  # QKᵀ and att·V over all heads
        "patch_embedding": 2 * batch * (n - 1) * (3 * patch * patch) * width,
        "projection": 2 * batch * width * proj,
    }


def image_tower_flops(batch: int = 4, **geometry) -> int:
    """≈ 648 GFLOP for a batch of 4 at 224×224."""
    return sum(image_tower_flop_parts(batch, **geometry).values())


def gemm_shape(batch: int = 4, tokens: int = 257, width: int = 1024, mlp: int = 4096):
    """The image tower's fc1: (B·N, C) @ (C, 4C)."""
    return batch * tokens, width, mlp


# -----------------------------------------------------------------------------
# Whole processes, measured.


# Runs the job as its child and reports the child's wall time and peak RSS. The wrapper is needed because a child
# forked straight from this process inherits its peak RSS (several GB once models were loaded): Linux carries the
# high-water mark of the forked address space across exec into the child's ru_maxrss. The wrapper is small.
WRAPPER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
json.dump({"wall_s": time.perf_counter() - t0, "rss_mib": usage.ru_maxrss / 1024,
           "cpu_s": usage.ru_utime + usage.ru_stime, "rc": os.waitstatus_to_exitcode(status)}, open(sys.argv[1], "w"))
"""


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run one process: wall seconds, its own peak RSS (MiB), exit code, stdout and stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        proc = subprocess.run([sys.executable, "-c", WRAPPER, str(report), *cmd], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if not report.exists():
            raise RuntimeError(f"the measuring wrapper failed: {proc.stderr[-2000:]}")
        return {**json.loads(report.read_text()), "stdout": proc.stdout, "stderr": proc.stderr}
