"""`train.py teach` on a full-size AltCLIP (random weights): peak memory and seconds per step.

BAAI/AltCLIP's architecture (altclip.AltCLIPConfig's defaults: ViT-L/14 image tower, XLM-R large text tower with
its 250,002-row word embeddings, 864M parameters) at random, saved with load_weights.save_pretrained into --folder
(built once, never committed), with a small sentencepiece model trained on shapes.py's captions: the tokenizer uses
the first ids only, which changes nothing of the memory or the time of a step. Then `python train.py teach` runs a
few steps at batch 16 in a fresh process, and its adapt.json gives the peak resident memory (after the steps, and
after saving the checkpoint) and the seconds per step.

    python bench/adapt_full.py                    # batch 16, 4 steps, 200 pairs
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import shapes  # noqa: E402
import train  # noqa: E402
from altclip import AltCLIP  # noqa: E402
from altclip_kernels import cpu  # noqa: E402
from load_weights import save_pretrained  # noqa: E402


def build(folder: Path):
    if (folder / "model.safetensors").exists():
        return
    torch.manual_seed(0)
    save_pretrained(AltCLIP(), folder)
    rng = random.Random(0)
    corpus = [t for s in train.training_scenes(500, rng) for t in shapes.captions(s, rng).values()]
    train.train_tokenizer(corpus, folder, 1000, 512)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=ROOT / "bench" / "out" / "altclip-full-random")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    print(f"CPU: {cpu.describe()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}", flush=True)
    t = time.perf_counter()
    build(args.folder)
    print(f"full-size random checkpoint in {args.folder} ({time.perf_counter() - t:.0f} s)", flush=True)
    rng = random.Random(20)
    pairs = args.folder.parent / "adapt-full-pairs.tsv"
    with open(pairs, "w", encoding="utf-8") as f:
        for _ in range(args.pairs):
            caps = shapes.captions(shapes.sample_scene(rng), rng, ["en", "it"])
            f.write(f"{caps['en']}\t{caps['it']}\n")
    out = args.folder.parent / "adapt-full-out"
    subprocess.run([sys.executable, str(ROOT / "train.py"), "teach", "--model", str(args.folder), "--pairs",
                    str(pairs), "--out", str(out), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                    "--val-fraction", "0", "--save-every", "1000", "--precision", args.precision], check=True)
    report = json.loads((out / "adapt.json").read_text())
    print(f"\nteach, full size, batch {args.batch_size} pairs + {report['settings']['anchors']} anchors, "
          f"{report['settings']['precision']}: {report['seconds_per_step']:.1f} s/step; peak RSS "
          f"{report['peak_rss_gib']['training']:.2f} GiB after the steps, {report['peak_rss_gib']['with_saving']:.2f} "
          f"GiB with the checkpoint saved")


if __name__ == "__main__":
    main()
