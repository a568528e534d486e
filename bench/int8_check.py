"""Check int8 on your own weights, pictures and labels: how far `--dtype int8` moves the answers from float32.

    python bench/int8_check.py --model BAAI/AltCLIP photos/ "a cat" "a dog" "一只猫" --template "a photo of {}"

The model is loaded twice, in float32 and then with dtype="int8" (altclip_kernels/int8.py), one after the other (so
only one is in memory at a time). Every image of the folder, and every label, is embedded by both. Printed:
- per image: the cosine between its float32 and int8 embeddings, the top label of each, and the largest change of
  any label's probability (softmax over the labels of exp(logit_scale)·cosine, as `altclip.py` prints them);
- the labels' text embeddings: the smallest cosine between float32 and int8;
- a summary: smallest and median image cosine, how often the top label agrees, the largest probability change.
int8 was validated on random full-size weights, an outlier-stressed copy and the mini AltCLIP (bench/README.md);
real BAAI weights could not be tried where it was built: this is how to check them. --json FILE keeps the numbers.
Exit status: 0 done; 1 an image could not be read (the others are still compared) or the model could not be used.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import common  # noqa: F401  (it puts the repository on sys.path)
import cli
from load_weights import CheckpointError, load_pretrained
from tokenizer import Tokenizer


def log(message: str):
    print(f"int8_check.py: {message}", file=sys.stderr, flush=True)


def embed(model, tokenizer, paths, texts, batch_size, progress):
    """(image paths that could be read, their (N, P) L2-normalised embeddings, the texts' (T, P) ones, exp(scale))."""
    text = cli.embed_texts(model, tokenizer, texts)
    good, features = [], []
    for batch, f, _ in cli.embed_images(model, paths, batch_size, progress):
        good += batch
        if f is not None:
            features.append(f)
    images = F.normalize(torch.cat(features), dim=-1) if features else torch.empty(0, text.shape[1])
    return good, images, text, model.logit_scale.detach().float().exp().item()


def compare(paths, labels, full, quantized) -> dict:
    """The numbers of the docstring, from the float32 and int8 (images, texts, scale) of the same paths."""
    (img_f, txt_f, scale_f), (img_q, txt_q, scale_q) = full, quantized
    p_f = (scale_f * img_f @ txt_f.t()).softmax(dim=-1)  # (images, labels)
    p_q = (scale_q * img_q @ txt_q.t()).softmax(dim=-1)
    cos = F.cosine_similarity(img_f, img_q, dim=-1)
    change = (p_q - p_f).abs()
    rows = [{"image": path, "cosine": cos[i].item(), "top_float32": labels[p_f[i].argmax()],
             "top_int8": labels[p_q[i].argmax()], "max_probability_change": change[i].max().item(),
             "label_most_changed": labels[change[i].argmax()]} for i, path in enumerate(paths)]
    agree = sum(r["top_float32"] == r["top_int8"] for r in rows)
    worst = max(rows, key=lambda r: r["max_probability_change"])
    return {"images": rows, "text_cosine_min": F.cosine_similarity(txt_f, txt_q, dim=-1).min().item(),
            "image_cosine_min": min(r["cosine"] for r in rows), "image_cosine_median": statistics.median(
                r["cosine"] for r in rows), "top_label_agreement": agree / len(rows), "agree": agree,
            "max_probability_change": worst["max_probability_change"], "worst": worst}


def report(res: dict, labels) -> str:
    lines = [f"{'cosine':>8}  {'max Δp':>7}  {'top (float32 → int8)':<40}  image"]
    for r in res["images"]:
        top = r["top_float32"] if r["top_float32"] == r["top_int8"] else f"{r['top_float32']} → {r['top_int8']} (!)"
        lines.append(f"{r['cosine']:8.5f}  {r['max_probability_change']:7.4f}  {top:<40}  {r['image']}")
    n, w = len(res["images"]), res["worst"]
    lines += ["",
              f"images: {n}; cosine int8 to float32: min {res['image_cosine_min']:.5f}, median "
              f"{res['image_cosine_median']:.5f}",
              f"labels: {len(labels)}; text embeddings' cosine int8 to float32: min {res['text_cosine_min']:.5f}",
              f"top label agrees on {res['agree']}/{n} images ({100 * res['top_label_agreement']:.1f}%)",
              f"largest probability change: {w['max_probability_change']:.4f} ({w['label_most_changed']!r} on "
              f"{w['image']})"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="How far --dtype int8 moves AltCLIP's answers from float32, on your "
                                            "own weights, pictures and labels (see the docstring).")
    p.add_argument("folder", metavar="FOLDER", help="an image file, or a folder of them (-r for subfolders)")
    p.add_argument("labels", metavar="LABEL", nargs="+", help="the candidate labels")
    p.add_argument("--model", default="BAAI/AltCLIP", help="checkpoint folder or hub repo id (default %(default)s)")
    p.add_argument("--template", help='a prompt around every label, e.g. "a photo of {}"')
    p.add_argument("-r", "--recursive", action="store_true")
    p.add_argument("--batch-size", type=cli.positive_int, default=8, metavar="N")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write every number to FILE")
    args = p.parse_args(argv)
    if args.template is not None and "{}" not in args.template:
        p.error(f"--template {args.template!r} has no {{}} to put the label in")
    labels = list(dict.fromkeys(args.labels))
    texts = [args.template.replace("{}", label) if args.template else label for label in labels]
    unreadable = []
    paths = cli.find_images(args.folder, args.recursive, unreadable)
    for e in unreadable:
        log(f"error: cannot read folder '{e.filename}': {e.strerror}")
    if not paths:
        log(f"error: '{args.folder}' holds no image files ({' '.join(cli.IMAGE_EXTENSIONS)})")
        return 1
    progress = sys.stderr.isatty()
    results = {}
    try:
        tokenizer = Tokenizer.from_pretrained(args.model)
        for dtype in (torch.float32, "int8"):
            name = "int8" if dtype == "int8" else "float32"
            t0 = time.perf_counter()
            model = load_pretrained(args.model, dtype=dtype)
            log(f"{name}: loaded in {time.perf_counter() - t0:.1f} s" + (f", {model.int8}" if name == "int8" else ""))
            t0 = time.perf_counter()
            good, *embeddings = embed(model, tokenizer, paths, texts, args.batch_size, progress)
            log(f"{name}: {len(good)} image(s) embedded in {time.perf_counter() - t0:.1f} s")
            results[name] = embeddings
            del model
            paths = good  # an unreadable image is named once, by the float32 pass, and skipped after
    except (OSError, CheckpointError, RuntimeError) as e:
        log(f"error: model '{args.model}': {e}")
        return 1
    failed = len(unreadable) + len(cli.find_images(args.folder, args.recursive)) - len(paths)
    if not paths:
        log("error: no image could be read")
        return 1
    res = compare(paths, labels, results["float32"], results["int8"])
    print(report(res, labels))
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "labels": labels, "template": args.template, **res},
                                        ensure_ascii=False, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
