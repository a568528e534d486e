"""One training step of the mini AltCLIP's stage 0, with and without train.keep_freed_memory, timed in the same run.

Each variant runs in a fresh process (glibc's settings cannot be undone in a process), alternating, and reports
seconds per step and minor page faults per step: a step of stage 0 (batch 128 at 224 px) frees and reallocates
blocks over glibc's 32 MB mmap threshold, which come back as fresh zeroed pages unless the thresholds are raised.

    python bench/train_step.py            # 3 rounds of 10 steps per variant, ~2 min on 2 cores
"""
import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)


def one(keep: bool, steps: int):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    import shapes
    import train
    torch.set_num_threads(2)
    if keep:
        train.keep_freed_memory()
    torch.manual_seed(0)
    recipe = train.Recipe()
    teacher = train.new_teacher(recipe, 1000)
    images = train.render([shapes.sample_scene(random.Random(k)) for k in range(256)], recipe.image_size)
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
    stat = Path(f"/proc/{os.getpid()}/stat")

    def faults():
        return int(stat.read_text().split()[9]) if stat.exists() else 0
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            t0, f0 = time.perf_counter(), faults()
        batch = torch.randint(0, len(images), (recipe.batch0,))
        image = teacher.visual_projection(teacher.vision_model(train.pixel_values(images[batch])).pooler_output)
        loss = image.pow(2).mean()  # a stand-in loss: the step's cost is the image tower's forward and backward
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{(time.perf_counter() - t0) / steps} {(faults() - f0) / steps}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--_one", choices=["keep", "plain"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:
        return one(args._one == "keep", args.steps)
    import torch
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, 2 threads; load average {os.getloadavg()[0]:.2f}")
    times = {"plain": [], "keep": []}
    faults = {"plain": [], "keep": []}
    for r in range(args.rounds):
        for variant in ("plain", "keep"):
            out = subprocess.run([sys.executable, __file__, "--_one", variant, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True).stdout.split()
            times[variant].append(float(out[0]))
            faults[variant].append(float(out[1]))
            print(f"round {r + 1}  {variant:5}  {times[variant][-1]:.3f} s/step  {faults[variant][-1]:9.0f} faults/step")
    plain, keep = statistics.median(times["plain"]), statistics.median(times["keep"])
    print(f"\nmedian s/step: plain {plain:.3f}, keep_freed_memory {keep:.3f}: {plain / keep:.2f}x faster; "
          f"page faults per step {statistics.median(faults['plain']):.0f} -> {statistics.median(faults['keep']):.0f}")


if __name__ == "__main__":
    main()
