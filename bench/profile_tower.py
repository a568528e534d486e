"""Where the time goes: torch.profiler on one tower forward, top operators by self CPU time.

    python bench/profile_tower.py --tower image --dtype bfloat16 --impl ours
    python bench/profile_tower.py --tower text --dtype float32 --impl reference --rows 30

Uses the random full-size checkpoint of bench/cpu.py (built on first use) and its inputs (images: batch 4 at
224×224; texts: batch 16, 5-40 tokens). One unprofiled forward warms up, then `--steps` forwards are profiled.
Besides the operator table it prints the self time grouped into a few kinds (GEMM, attention, elementwise, …),
with the image tower's GEMM throughput, so that a slow run can be explained in one line.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

import common

# Operator name → kind, first match wins. aten::linear/matmul themselves are thin wrappers: their self time is small.
KINDS = [
    ("GEMM", r"addmm|::mm$|bmm|baddbmm|mkldnn_linear|_mkl_linear|linear_pointwise|mkldnn_matmul|onednn"),
    ("attention", r"scaled_dot_product|flash_attention|_efficient_attention|softmax"),
    ("conv", r"convolution|conv2d|_convolution"),
    ("norm", r"layer_norm|native_layer_norm"),
    ("activation", r"gelu|sigmoid|silu|tanh|erf"),
    ("copy / layout", r"copy_|contiguous|clone|_to_copy|::to$|cat|stack|transpose|permute|view|reshape|expand|"
                      r"slice|select|unsqueeze|as_strided|empty|t$"),
    ("elementwise", r"::add|::mul|::div|::sub|masked_fill|where|cumsum|ne$|eq$|embedding|index"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--tower", choices=["image", "text"], default="image")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--impl", choices=list(common.THROUGHPUT_IMPLS), default="ours")
    p.add_argument("--model", type=Path, default=common.DEFAULT_MODEL)
    p.add_argument("--steps", type=int, default=1, help="profiled forwards (default 1)")
    p.add_argument("--rows", type=int, default=20, help="operators to list (default 20)")
    p.add_argument("--threads", type=int)
    p.add_argument("--trace", type=Path, help="also write a Chrome trace (open in chrome://tracing or Perfetto)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = common.ensure_checkpoint(args.model)
    dtype = getattr(torch, args.dtype)
    model = common.load(args.impl, folder, dtype)
    if args.tower == "image":
        pixels = common.image_batch()
        forward = lambda: common.image_features(args.impl, model, pixels)  # noqa: E731
    else:
        ids, mask = common.text_batch()
        forward = lambda: common.text_features(args.impl, model, ids, mask)  # noqa: E731

    with torch.inference_mode():
        forward()  # warm-up: first-touch of the weights, oneDNN primitive creation
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                forward()
            wall = (time.perf_counter() - t0) / args.steps

    events = prof.key_averages()
    print(f"{args.impl}, {args.tower} tower, {args.dtype}, {torch.get_num_threads()} threads: "
          f"{wall:.3f} s per forward (profiled; the profiler adds a little)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))

    # Grouped per call rather than per operator, so that copies made inside a GEMM op (addmm first copies the bias
    # into its output) are told apart from the model's own copies.
    by_kind = {}
    for e in prof.events():
        kind = kind_of(e.name)
        if kind == "copy / layout" and e.cpu_parent is not None and kind_of(e.cpu_parent.name) == "GEMM":
            kind = "GEMM's copies"
        by_kind[kind] = by_kind.get(kind, 0) + e.self_cpu_time_total
    total = sum(by_kind.values())
    print("self CPU time by kind:")
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<14} {us / 1e3 / args.steps:9.1f} ms  {us / total:6.1%}")
    if args.tower == "image":
        gemm_s = by_kind.get("GEMM", 0) / 1e6 / args.steps
        parts = common.image_tower_flop_parts(len(pixels))
        linear_flops = parts["linears"] + parts["projection"]
        if gemm_s:
            print(f"GEMM ops: {linear_flops / gemm_s / 1e9:.0f} GFLOP/s on the linear layers' "
                  f"{linear_flops / 1e9:.0f} GFLOP")
        print(f"whole forward: {common.image_tower_flops(len(pixels)) / wall / 1e9:.0f} GFLOP/s")
    if args.trace:
        prof.export_chrome_trace(str(args.trace))
        print(f"wrote {args.trace}")


if __name__ == "__main__":
    main()
