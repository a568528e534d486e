"""The embedding index at work: the first search of a 16-image folder (empty index) against the second (unchanged
folder, every embedding stored), each a whole `python altclip.py FOLDER --search QUERY` process.

    python bench/search.py          # builds bench/out/altclip-random once (see bench/common.py), then measures

The second search should cost the model load and one text: the goal is ≤ 0.6× the first's wall time. The folder
holds 16 different 640×480 JPEGs (crops of the example photos); each repeat starts from a new, empty index, and runs
the two searches one after the other. The weights are read once before timing, so both find them in the page cache.
Also checked: the first search embeds 16 images and the second none (from their -v lines), and both print the same
ranking.

The second search loads the text tower alone (every image is indexed: AltCLIPTextModelWithProjection reads only the
text tower's tensors). Each repeat also runs it the old way, loading the whole model (cli.load_text_side replaced by
cli.load_model in that process), in alternating order: goal ≤ 0.85× the whole-model second search's wall time and
peak RSS. All three searches run through the same `python -c` wrapper around cli.main.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, ensure_checkpoint, example_image, run_measured

GOAL = 0.6
TEXT_SIDE_GOAL = 0.85
# `python altclip.py ARGS` through cli.main; WHOLE also makes an indexed search load the whole model, as it did before
# the text side could be loaded alone.
CLI = "import sys; sys.path.insert(0, {root!r}); import cli; {patch}sys.exit(cli.main(sys.argv[1:]))"
WHOLE = "cli.load_text_side = lambda args: cli.load_model(args, 0); "
N_IMAGES = 16


def make_folder(folder: Path, n: int = N_IMAGES) -> Path:
    """n different 640×480 JPEGs: crops of the example photos at different offsets, some mirrored."""
    from PIL import Image, ImageOps

    photos = [Image.open(p).convert("RGB") for p in (example_image(), ROOT / "examples" / "coffee.jpg")
              if p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        photo = photos[k % len(photos)]
        w, h = photo.size
        scale = max(640 / w, 480 / h) * (1 + 0.1 * (k // len(photos)))  # each image a different zoom
        big = photo.resize((int(w * scale) + 1, int(h * scale) + 1))
        left, top = (k * 37) % (big.width - 640 + 1), (k * 23) % (big.height - 480 + 1)
        crop = big.crop((left, top, left + 640, top + 480))
        (ImageOps.mirror(crop) if k % 3 == 0 else crop).save(folder / f"photo{k:02d}.jpg", quality=90)
    return folder


def search(folder: Path, model: Path, index: Path, query: str, whole: bool = False) -> dict:
    cmd = [sys.executable, "-c", CLI.format(root=str(ROOT), patch=WHOLE if whole else ""), str(folder), "--search",
           query, "--model", str(model), "--index", str(index), "-v"]
    r = run_measured(cmd)
    if r["rc"]:
        raise SystemExit(f"search failed (exit {r['rc']}):\n{r['stderr'][-2000:]}")
    return r


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="checkpoint folder (default: bench/out/altclip-random, built if missing)")
    p.add_argument("--repeats", type=int, default=1, help="pairs of searches, each on a new index (default 1)")
    p.add_argument("--query", default="a cat on a sofa")
    args = p.parse_args()

    import torch

    from altclip_kernels import cpu
    model = args.model or ensure_checkpoint()
    with open(model / "model.safetensors", "rb") as f:  # into the page cache, so that neither search reads the disk
        while f.read(1 << 26):
            pass
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; class {cpu.describe()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    firsts, seconds, wholes = [], [], []
    with tempfile.TemporaryDirectory(prefix="altclip-search-") as tmp:
        folder = make_folder(Path(tmp) / "photos")
        for k in range(args.repeats):
            index = Path(tmp) / f"index{k}.sqlite"
            first = search(folder, model, index, args.query)
            if k % 2:  # alternate which way of doing the second search runs first
                whole, second = search(folder, model, index, args.query, whole=True), search(folder, model, index,
                                                                                             args.query)
            else:
                second, whole = search(folder, model, index, args.query), search(folder, model, index, args.query,
                                                                                 whole=True)
            assert f"0 image(s) from the index, {N_IMAGES} embedded" in first["stderr"], first["stderr"]
            for r in (second, whole):
                assert f"{N_IMAGES} image(s) from the index, 0 embedded" in r["stderr"], r["stderr"]
                assert [line.split("  ")[-1] for line in first["stdout"].splitlines()] == \
                    [line.split("  ")[-1] for line in r["stdout"].splitlines()], "the rankings differ"
            assert "text tower loaded alone" in second["stderr"] and "text tower" not in whole["stderr"]
            firsts.append(first)
            seconds.append(second)
            wholes.append(whole)
            print(f"repeat {k + 1}: first {first['wall_s']:.1f} s ({first['rss_mib']:.0f} MiB), "
                  f"second {second['wall_s']:.1f} s ({second['cpu_s']:.1f} CPU s, {second['rss_mib']:.0f} MiB), "
                  f"second loading the whole model {whole['wall_s']:.1f} s ({whole['cpu_s']:.1f} CPU s, "
                  f"{whole['rss_mib']:.0f} MiB)", flush=True)

    t1, t2 = statistics.median(r["wall_s"] for r in firsts), statistics.median(r["wall_s"] for r in seconds)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"| {N_IMAGES}-image folder, float32, whole process (median of {args.repeats}) | wall s | peak RSS MiB |")
    print("|---|---:|---:|")
    print(f"| first search (empty index: {N_IMAGES} images embedded) | {t1:.1f} | "
          f"{statistics.median(r['rss_mib'] for r in firsts):.0f} |")
    print(f"| second search (unchanged folder: nothing embedded) | {t2:.1f} | "
          f"{statistics.median(r['rss_mib'] for r in seconds):.0f} |")
    tw = statistics.median(r["wall_s"] for r in wholes)
    r2, rw = (statistics.median(r["rss_mib"] for r in runs) for runs in (seconds, wholes))
    print(f"| second search loading the whole model (before) | {tw:.1f} | {rw:.0f} |")
    print(f"| second / first | {t2 / t1:.2f}× (goal ≤ {GOAL}×: {'met' if t2 / t1 <= GOAL else 'NOT met'}) | |")
    c2, cw = (statistics.median(r["cpu_s"] for r in runs) for runs in (seconds, wholes))
    print(f"| second, text side alone / whole model: CPU seconds (user + system) | {c2 / cw:.2f}× | |")
    print(f"| second, text side alone / whole model | {t2 / tw:.2f}× (goal ≤ {TEXT_SIDE_GOAL}×: "
          f"{'met' if t2 / tw <= TEXT_SIDE_GOAL else 'NOT met'}) | {r2 / rw:.2f}× (goal ≤ {TEXT_SIDE_GOAL}×: "
          f"{'met' if r2 / rw <= TEXT_SIDE_GOAL else 'NOT met'}) |")


if __name__ == "__main__":
    main()
