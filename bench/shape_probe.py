"""How fast can a tiny ViT/14 learn shapes.py's shapes? The measurement behind shapes.py's print.

A 64-wide, 2-block image tower (altclip.AltCLIP's, at 224 px in 14-px patches, as the mini AltCLIP) with a linear
head learns supervised 6-way shape classification from scratch, on three drawings of the same scenes:

    plain    the shape filled with its colour: a silhouette
    print    shapes.py's drawing: the shape printed with small copies of itself, one per 14 x 14 cell of the image
    shifted  the same print moved by a random 0-13 px per image, so that its cells no longer match the patches

and prints the accuracy on 600 fresh scenes every 50 steps, the three side by side. Same seeds, same scenes, same
initial weights for each drawing; only the pixels differ.

    python bench/shape_probe.py                 # 150 steps of batch 64 per drawing, ~2-4 min each on 2 cores
    python bench/shape_probe.py --steps 300 --drawings plain print
"""
import argparse
import os
import random
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import common  # noqa: E402,F401  (puts the repository on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import shapes  # noqa: E402
import train  # noqa: E402
from altclip import VisionConfig, VisionTower  # noqa: E402

DRAWINGS = ["plain", "print", "shifted"]


def draw(scenes, drawing: str) -> torch.Tensor:
    """uint8 (N, 3, 224, 224) of the scenes in one drawing."""
    shade, mask = shapes.PRINT_SHADE, shapes.print_mask
    out = []
    try:
        if drawing == "plain":
            shapes.PRINT_SHADE = 1.0  # the motifs in the shape's own colour: invisible
        for scene in scenes:
            if drawing == "shifted":  # the print is periodic and 224 = 16 x 14, so rolling it shifts it exactly
                dx, dy = scene.seed % shapes.PRINT_CELL, (scene.seed // 97) % shapes.PRINT_CELL
                shapes.print_mask = lambda shape, size=shapes.IMAGE_SIZE, d=(dy, dx): np.roll(mask(shape, size), d,
                                                                                             (0, 1))
            out.append(shapes._pixels(scene))
    finally:
        shapes.PRINT_SHADE, shapes.print_mask = shade, mask
    return torch.from_numpy(np.stack(out))


def probe(drawing, scenes, test, steps, batch, lr, seed=0):
    images, test_images = draw(scenes, drawing), draw(test, drawing)
    labels = torch.tensor([shapes.SHAPES.index(s.shape) for s in scenes])
    test_labels = torch.tensor([shapes.SHAPES.index(s.shape) for s in test])
    torch.manual_seed(seed)
    tower = VisionTower(VisionConfig(image_size=224, patch_size=14, hidden_size=64, intermediate_size=256,
                                     num_hidden_layers=2, num_attention_heads=4))
    head = torch.nn.Linear(64, len(shapes.SHAPES))
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr, weight_decay=0.05)
    rng, scores, t0 = torch.Generator().manual_seed(seed), [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch,), generator=rng)
        loss = F.cross_entropy(head(tower(train.pixel_values(images[idx])).pooler_output), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            with torch.no_grad():
                guess = head(tower(train.pixel_values(test_images)).pooler_output).argmax(1)
            scores.append((step, (guess == test_labels).float().mean().item(), time.perf_counter() - t0))
            print(f"  {drawing:8} step {step:4}  accuracy {scores[-1][1]:.3f}  ({scores[-1][2]:.0f} s)", flush=True)
    return scores


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--drawings", nargs="+", choices=DRAWINGS, default=DRAWINGS)
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; chance 1/6 = 0.167")
    rng = random.Random(0)
    scenes = [shapes.sample_scene(rng, shapes.CLASSES) for _ in range(args.images)]
    test = [shapes.sample_scene(random.Random(10_000 + k), shapes.CLASSES) for k in range(600)]
    results = {d: probe(d, scenes, test, args.steps, args.batch, args.lr) for d in args.drawings}
    print("\naccuracy after step  " + "".join(f"{step:>7}" for step, _, _ in next(iter(results.values()))))
    for d, scores in results.items():
        print(f"{d:20} " + "".join(f"{acc:7.3f}" for _, acc, _ in scores))


if __name__ == "__main__":
    main()
