"""Peak memory of one tower loaded alone from a full checkpoint, against the whole model, each in its own process.

    python bench/towers.py                 # builds /tmp/altclip-random-ours once (3.5 GB), then measures
    python bench/towers.py --model DIR     # any full AltCLIP checkpoint folder with a tokenizer

Three processes, alternating, `--repeats` times: the page's example run on the whole model (AltCLIPModel, two texts
and one image), AltCLIPTextModel on the two texts, AltCLIPVisionModel on the image; each loads from the same full
checkpoint (model.safetensors, memory-mapped) and runs once. Peak RSS is the process's own (wait4's ru_maxrss),
mapped file pages it touched included. Goal: each tower ≤ 0.6× the whole model's peak. The weights are read once
before timing, so every process finds them in the page cache.

The checkpoint is this project's AltCLIP() with its own random initialisation, saved with
load_weights.save_pretrained, and a small sentencepiece tokenizer (the text tower still has the real 250,002-row
embedding table).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import ROOT, run_measured, train_tokenizer

GOAL = 0.6
DEFAULT = Path(tempfile.gettempdir()) / "altclip-random-ours"

RUN = """
import sys, time, torch
sys.path.insert(0, {root!r})
from PIL import Image
import altclip
kind, folder = {kind!r}, {folder!r}
t0 = time.perf_counter()
processor = altclip.AltCLIPProcessor.from_pretrained(folder)
inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=Image.open({image!r}), return_tensors="pt",
                   padding=True)
with torch.no_grad():
    if kind == "whole":
        out = altclip.AltCLIPModel.from_pretrained(folder)(**inputs).logits_per_image
    elif kind == "text":
        out = altclip.AltCLIPTextModel.from_pretrained(folder)(inputs.input_ids, inputs.attention_mask).pooler_output
    else:
        out = altclip.AltCLIPVisionModel.from_pretrained(folder)(inputs.pixel_values).pooler_output
print(kind, tuple(out.shape), round(time.perf_counter() - t0, 2))
"""


def build(folder: Path) -> Path:
    """AltCLIP() with random weights (full size) → folder, with a tokenizer. Written to folder.tmp, then renamed."""
    import shutil

    import torch

    import altclip
    import load_weights

    if (folder / "model.safetensors").exists() and (folder / "sentencepiece.bpe.model").exists():
        return folder
    print(f"building the random full-size checkpoint in {folder} (once) ...", flush=True)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    load_weights.save_pretrained(altclip.AltCLIP(), tmp)
    train_tokenizer(tmp, 8000)
    tmp.rename(folder)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT, help=f"full checkpoint folder (default {DEFAULT}, built)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    from altclip_kernels import cpu
    from search import cpu_model

    folder = build(args.model) if args.model == DEFAULT else args.model
    with open(folder / "model.safetensors", "rb") as f:  # into the page cache
        while f.read(1 << 26):
            pass
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; class {cpu.describe()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = {"whole": [], "text": [], "vision": []}
    for k in range(args.repeats):
        for kind in results:
            code = RUN.format(root=str(ROOT), kind=kind, folder=str(folder), image=str(ROOT / "examples" / "cat.jpg"))
            r = run_measured([sys.executable, "-c", code])
            if r["rc"]:
                raise SystemExit(f"{kind} failed:\n{r['stderr'][-2000:]}")
            results[kind].append(r)
            print(f"repeat {k + 1} {kind:6s}: {r['wall_s']:5.1f} s, peak RSS {r['rss_mib']:6.0f} MiB", flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    whole = statistics.median(r["rss_mib"] for r in results["whole"])
    whole_s = statistics.median(r["wall_s"] for r in results["whole"])
    print()
    print(f"| full checkpoint, float32, load + one run (median of {args.repeats}) | wall s | peak RSS MiB | "
          f"RSS / whole |")
    print("|---|---:|---:|---:|")
    summary = {}
    for kind, label in (("whole", "AltCLIPModel, 2 texts + 1 image"), ("text", "AltCLIPTextModel, 2 texts"),
                        ("vision", "AltCLIPVisionModel, 1 image")):
        rss, wall = (statistics.median(r[k] for r in results[kind]) for k in ("rss_mib", "wall_s"))
        ratio = rss / whole
        verdict = "" if kind == "whole" else f" (goal ≤ {GOAL}: {'met' if ratio <= GOAL else 'NOT met'})"
        print(f"| {label} | {wall:.1f} | {rss:.0f} | {ratio:.2f}{verdict} |")
        summary[kind] = {"rss_mib": rss, "wall_s": wall, "rss_ratio": ratio, "wall_ratio": wall / whole_s}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
