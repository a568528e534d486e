"""`train.py teach` and `train.py tune` shown on the mini AltCLIP: two languages it never saw, before and after.

The committed model (examples/mini-altclip) learned ten languages; shapes.NEW_LANGUAGES (Italian, Ukrainian) were
not among them. This script writes
  - PAIRS.tsv: parallel sentences, an English caption and its Italian or Ukrainian version, no picture;
  - CAPTIONS.tsv and its pictures: shapes pictures captioned in Italian or Ukrainian only;
all of training classes only (the held-out classes stay unseen), from seeds that are neither the training nor the
test set's. It runs `python train.py teach` and, from the same starting model, `python train.py tune`, each as the
user would (a fresh process, timed), and scores the three models on train.py's test set (seed 1, 720 pictures):
zero-shot top-1 among the 36 class labels, in every language.

    python bench/adapt.py                      # 3,000 pairs and 600 pictures, the defaults of both commands
    python bench/adapt.py --pairs 600 --pictures 120 --steps 40   # a quick check that it runs
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
from altclip_kernels import cpu  # noqa: E402
from load_weights import load_pretrained  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

MINI = ROOT / "examples" / "mini-altclip"
PAIRS_SEED, PICTURES_SEED = 20, 21  # train.py trains from seed 0 and tests on seed 1


def write_pairs(path: Path, n: int):
    """n lines `English<TAB>Italian or Ukrainian`, the languages alternating."""
    rng = random.Random(PAIRS_SEED)
    with open(path, "w", encoding="utf-8") as f:
        for k in range(n):
            lang = shapes.NEW_LANGUAGES[k % len(shapes.NEW_LANGUAGES)]
            caps = shapes.captions(shapes.sample_scene(rng), rng, ["en", lang])
            f.write(f"{caps['en']}\t{caps[lang]}\n")


def write_pictures(folder: Path, n: int) -> Path:
    """n pictures (PNG, 224 px) and CAPTIONS.tsv, each captioned in Italian or Ukrainian, the languages alternating."""
    rng = random.Random(PICTURES_SEED)
    (folder / "pictures").mkdir(parents=True, exist_ok=True)
    lines = ["image\tcaption"]
    for k in range(n):
        scene = shapes.sample_scene(rng)
        lang = shapes.NEW_LANGUAGES[k % len(shapes.NEW_LANGUAGES)]
        name = f"pictures/{k:04d}.png"
        if not (folder / name).exists():
            shapes.render(scene).save(folder / name)
        lines.append(f"{name}\t{shapes.captions(scene, rng, [lang])[lang]}")
    (folder / "captions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "captions.tsv"


def score(folder: Path, test) -> dict:
    model, tokenizer = load_pretrained(folder), Tokenizer.from_pretrained(folder)
    return train.evaluate(model, tokenizer, test, languages=shapes.LANGUAGES + shapes.NEW_LANGUAGES)


def run(command: str, *args) -> float:
    """`python train.py COMMAND ARGS` in a fresh process; its wall time in seconds."""
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "train.py"), command, *map(str, args)], check=True, cwd=ROOT)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3000, help="parallel sentences for teach (default: 3000)")
    p.add_argument("--pictures", type=int, default=600, help="captioned pictures for tune (default: 600)")
    p.add_argument("--steps", type=int, help="steps of each command (default: each command's own)")
    p.add_argument("--precision", default="auto", help="train.py's --precision (default: auto)")
    p.add_argument("--threads", type=int, default=2, help="train.py's --threads (default: 2)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "adapt")
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu.describe()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start",
          flush=True)
    write_pairs(out / "pairs.tsv", args.pairs)
    captions = write_pictures(out / "tune-data", args.pictures)
    steps = ["--steps", args.steps] if args.steps else []
    common = ["--model", MINI, "--precision", args.precision, "--threads", args.threads, *steps]
    seconds = {"teach": run("teach", *common, "--pairs", out / "pairs.tsv", "--out", out / "taught"),
               "tune": run("tune", *common, "--data", captions, "--out", out / "tuned")}
    test = train.make_test_set(train.TEST_SEED, train.Recipe.test_per_class, 224)
    rows = {"before": score(MINI, test), "taught": score(out / "taught", test), "tuned": score(out / "tuned", test)}
    names = {"before": "the mini model, before",
             "taught": f"after teach ({args.pairs:,} pairs, no picture)",
             "tuned": f"after tune instead ({args.pictures:,} pictures)"}
    langs = shapes.LANGUAGES + shapes.NEW_LANGUAGES
    print(f"\nzero-shot top-1 on train.py's test set ({len(test.scenes)} pictures, 36 classes, chance 0.028)\n")
    print("| model | " + " | ".join(langs) + " | time |")
    print("|---|" + "---:|" * (len(langs) + 1))
    for key, result in rows.items():
        top1 = result["zero_shot_top1"]
        took = f"{seconds[{'taught': 'teach', 'tuned': 'tune'}[key]]:.0f} s" if key != "before" else ""
        print(f"| {names[key]} | " + " | ".join(f"{top1[lang]:.2f}" for lang in langs) + f" | {took} |")
    print()
    before = rows["before"]["zero_shot_top1"]
    for key in ("taught", "tuned"):
        top1 = rows[key]["zero_shot_top1"]
        new = {lang: top1[lang] / top1["en"] for lang in shapes.NEW_LANGUAGES}
        drift = max(abs(top1[lang] - before[lang]) for lang in shapes.LANGUAGES)
        print(f"{names[key]}: new languages " + ", ".join(f"{lang} {r:.2f}x" for lang, r in new.items())
              + f" English; old languages move by at most {drift:.3f}")
    (out / "table.json").write_text(json.dumps({"seconds": seconds, "top1": {k: r["zero_shot_top1"] for k, r in
                                                                             rows.items()}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
