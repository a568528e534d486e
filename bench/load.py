"""Cold-load time and peak memory of a full-size AltCLIP checkpoint: ours against the reference.

    python bench/load.py            # builds bench/out/altclip-random once (see bench/common.py), then measures

Each load runs in a fresh process (import + load + one parameter touched), so the figures include start-up; peak
RSS is that process's own (ru_maxrss read by a small wrapper, see common.run_measured). Rows: our load_pretrained
from model.safetensors (memory-mapped), from pytorch_model.bin (the format BAAI/AltCLIP ships on the hub, read
with weights_only=True and mmap=True), and the reference's AltCLIPModel.from_pretrained from the same safetensors
file. Repeats alternate; medians are shown. The page cache is warm after the first (unmeasured) read of each file,
as it is for a user's second run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from common import OUT, ROOT, ensure_checkpoint, run_measured

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
impl, folder = {impl!r}, {folder!r}
import torch
if impl == "reference":
    from transformers import AltCLIPModel
    model = AltCLIPModel.from_pretrained(folder).eval()
else:
    from load_weights import load_pretrained
    model = load_pretrained(folder)
n = sum(p.numel() for p in model.parameters())
checksum = float(model.visual_projection.weight[0, :8].sum())  # touch real data
print(json.dumps(dict(seconds=time.perf_counter() - t0, params=n, checksum=checksum)))
"""


def bin_copy(folder: Path) -> Path:
    """The same checkpoint as pytorch_model.bin, as the hub has it (made once with our converter's inverse)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    out = OUT / "altclip-random-bin"
    if not (out / "pytorch_model.bin").exists():
        out.mkdir(parents=True, exist_ok=True)
        torch.save(load_file(folder / "model.safetensors"), out / "pytorch_model.bin.tmp")
        (out / "pytorch_model.bin.tmp").rename(out / "pytorch_model.bin")
        shutil.copyfile(folder / "config.json", out / "config.json")
    return out


def measure(impl: str, folder: Path) -> dict:
    """One load in a fresh process: its wall time and its own peak RSS (through common.run_measured's wrapper)."""
    code = CHILD.format(root=str(ROOT), impl=impl, folder=str(folder))
    r = run_measured([sys.executable, "-c", code])
    if r["rc"]:
        raise SystemExit(f"{impl} load failed:\n{r['stderr'][-2000:]}")
    return {**json.loads(r["stdout"].strip().splitlines()[-1]), "peak_mib": r["rss_mib"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    folder = ensure_checkpoint()
    rows = {"ours, model.safetensors": ("ours", folder), "ours, pytorch_model.bin": ("ours", bin_copy(folder)),
            "reference, model.safetensors": ("reference", folder)}
    results = {name: [] for name in rows}
    for name, (impl, f) in rows.items():  # warm the page cache once per file, not timed
        measure(impl, f)
    for _ in range(args.repeats):
        for name, (impl, f) in rows.items():
            results[name].append(measure(impl, f))
    checksums = {r[-1]["checksum"] for r in results.values()}
    assert len(checksums) == 1, f"the implementations loaded different weights: {checksums}"
    ref = results["reference, model.safetensors"]
    ref_s, ref_m = statistics.median(r["seconds"] for r in ref), statistics.median(r["peak_mib"] for r in ref)
    print(f"| load ({results[next(iter(results))][0]['params'] / 1e6:.0f}M params, float32, {args.repeats} runs) "
          f"| wall s | × reference | peak RSS MiB | × reference |")
    print("|---|---|---|---|---|")
    for name, rs in results.items():
        s, m = statistics.median(r["seconds"] for r in rs), statistics.median(r["peak_mib"] for r in rs)
        print(f"| {name} | {s:.2f} | {s / ref_s:.2f} | {m:.0f} | {m / ref_m:.2f} |")


if __name__ == "__main__":
    main()
