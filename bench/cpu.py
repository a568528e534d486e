"""CPU benchmark: our AltCLIP against the reference (transformers' AltCLIPModel, SDPA attention), same run.

    python bench/cpu.py            # the whole benchmark (~10 min on 2 cores, plus ~1 min to build the model once)
    python bench/cpu.py --quick    # fewer repeats: checks that everything runs
    python bench/cpu.py --threads 1 --skip-job

Steps, all in one process except the main-job runs:
1. a full-size random AltCLIP (ViT-L/14 + XLM-R large) is built through the reference once and cached in
   bench/out/altclip-random/ (see common.py);
2. for float32, then bfloat16, both implementations are loaded in that dtype; embeddings are computed once
   (parity, and a warm-up), then images/s (batch 4, 224×224) and texts/s (batch 16, 5-40 tokens, right-padded)
   are timed interleaved (reference, ours, reference, ours, …) and the median of the repeats is kept. The GEMM
   peak of the machine is timed in the same rounds as the image tower (torch.mm at its fc1 shape, 1028×1024 @
   1024×4096), so that both see the same machine: the image tower's GFLOP/s (FLOPs counted analytically) is
   reported as a fraction of it;
   then int8 (`--dtypes … int8`): the reference in float32 against ours with `load_pretrained(..., dtype="int8")`
   (altclip_kernels/int8.py), interleaved the same way, and in the same rounds ours on the other int8 kernels that
   run here and torch.ao's dynamic int8 of ours (unless --int8-chosen-only); the int8 embeddings' cosine to the
   reference's float32 ones;
   the seconds of load_pretrained and the peak RSS of it plus one image and two texts, float32 against int8, each in
   a fresh process;
3. the main job as a whole process, `python altclip.py IMAGE "a cat" "a dog" --model DIR` against
   bench/reference_job.py, alternating, after one unmeasured run of each (warm file cache): wall time and peak RSS;
4. the folder job: `python altclip.py FOLDER ...` on 17 images, float32 with the defaults (--onednn auto, which
   packs or not by CPU class) against --onednn off, alternating; then bfloat16 once (answered? warnings?);
5. one markdown table with the machine, torch and thread settings, printed and written to bench/out/cpu.md
   (the raw numbers, with every repeat, go to bench/out/cpu.json).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import common  # noqa: E402
from altclip_kernels import onednn  # noqa: E402
from common import IMPLS, OUT, ROOT, THROUGHPUT_IMPLS, run_measured  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TEXTS = ["a cat", "a dog"]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# -----------------------------------------------------------------------------
# Measurements.


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating between them (ref, ours, ref, ours, …) after warm-up calls."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return times


GEMM_CALLS = 5  # torch.mm calls per GEMM measurement, timed together


def gemm_bursts(dtype: torch.dtype):
    """Functions running GEMM_CALLS matrix products at the image tower's fc1 shape, (B·N, C) @ (C, 4C), and the
    FLOPs of one burst: torch.mm (MKL for float32, oneDNN for bfloat16) and, where it exists, oneDNN with the weight
    packed in advance. The machine's GEMM peak is the faster of the two: on this CPU oneDNN beats MKL in float32."""
    m, k, n = common.gemm_shape()
    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
    b = w.t().contiguous()
    bursts = {"gemm_mm": lambda: [torch.mm(a, b) for _ in range(GEMM_CALLS)]}
    if onednn.available(dtype)[0]:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
        bursts["gemm_onednn"] = lambda: [torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
                                         for _ in range(GEMM_CALLS)]
    return bursts, 2 * m * k * n * GEMM_CALLS


def min_cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    return F.cosine_similarity(x.float(), y.float(), dim=-1).min().item()


def max_abs_normalised(x: torch.Tensor, y: torch.Tensor) -> float:
    return (F.normalize(x, dim=-1) - F.normalize(y, dim=-1)).abs().max().item()


def throughput(folder: Path, repeats: int, warmup: int, dtypes: list[str]) -> dict:
    """Per dtype: GEMM peak, embeddings, and the interleaved image/text timings of every implementation."""
    pixels = common.image_batch()
    ids, mask = common.text_batch()
    res = {"image_batch": len(pixels), "text_batch": len(ids), "text_lengths": mask.sum(1).tolist()}
    embeddings = {}
    for dname, dtype in DTYPES.items():
        if dname not in dtypes:
            continue
        log(f"[{dname}] loading every implementation ...")
        models = {}
        for impl in THROUGHPUT_IMPLS:
            if impl == "ours+onednn" and not onednn.available(dtype)[0]:
                res.setdefault("unavailable", {})[f"{dname} {impl}"] = onednn.available(dtype)[1]
                log(f"  {impl}: not on this CPU class ({onednn.available(dtype)[1]})")
                continue
            t0 = time.perf_counter()
            models[impl] = common.load(impl, folder, dtype)
            log(f"  {impl}: {time.perf_counter() - t0:.1f} s")
        r = res[dname] = {}
        gemms, gemm_flops = gemm_bursts(dtype)
        with torch.inference_mode():
            log(f"[{dname}] embeddings (also the first warm-up) ...")
            for impl, model in models.items():
                embeddings[dname, impl] = (common.image_features(impl, model, pixels),
                                           common.text_features(impl, model, ids, mask))
            log(f"[{dname}] images/s and the GEMM peak, {repeats} interleaved repeats ...")
            fns = {impl: (lambda i=impl: common.image_features(i, models[i], pixels)) for impl in models}
            r["image_s"] = interleaved({**fns, **gemms}, repeats, warmup - 1)
            for name in gemms:
                r[name + "_gflops"] = [gemm_flops / t / 1e9 for t in r["image_s"].pop(name)]
            r["gemm_gflops"] = max((r[name + "_gflops"] for name in gemms), key=statistics.median)
            log(f"[{dname}] texts/s, {repeats} interleaved repeats ...")
            r["text_s"] = interleaved({impl: (lambda i=impl: common.text_features(i, models[i], ids, mask))
                                       for impl in models}, repeats, warmup - 1)
        models.clear()
        gc.collect()
        for what in ("image_s", "text_s"):
            log("  " + what + ": " + ", ".join(f"{impl} {statistics.median(t):.3f} s" for impl, t in r[what].items()))
        log("  GEMM: " + ", ".join(f"{name} {statistics.median(r[name + '_gflops']):.0f} GFLOP/s" for name in gemms))

    for k, (kind, batch) in enumerate((("image", len(pixels)), ("text", len(ids)))):
        if ("float32", "ours") not in embeddings:
            break
        res[f"{kind}_max_abs_diff_fp32"] = max_abs_normalised(embeddings["float32", "ours"][k],
                                                              embeddings["float32", "reference"][k])
        res[f"{kind}_max_abs_diff_fp32_onednn"] = max_abs_normalised(embeddings["float32", "ours+onednn"][k],
                                                                     embeddings["float32", "reference"][k])
        res[f"{kind}_max_abs_diff_fp32_raw"] = (embeddings["float32", "ours"][k]
                                                - embeddings["float32", "reference"][k]).abs().max().item()
        for impl in THROUGHPUT_IMPLS:
            if ("bfloat16", impl) in embeddings and ("float32", impl) in embeddings:
                res[f"{kind}_bf16_cosine_{impl}"] = min_cosine(embeddings["bfloat16", impl][k],
                                                               embeddings["float32", impl][k])
    return res


# load_pretrained, then one image and two texts embedded: weights are memory-mapped and read on first use, so the
# peak RSS of a load alone would count only what loading touches (all of it for int8, which calibrates).
LOAD_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[1])
import torch
from load_weights import load_pretrained
t0 = time.perf_counter()
model = load_pretrained(sys.argv[2], dtype=sys.argv[3] if sys.argv[3] == "int8" else getattr(torch, sys.argv[3]))
print(time.perf_counter() - t0)
with torch.inference_mode():
    model.get_image_features(torch.randn(1, 3, 224, 224))
    ids = torch.tensor([[0, 100, 200, 2], [0, 300, 2, 1]])
    model.get_text_features(ids, (ids != 1).long())
"""


def ao_dynamic_int8(module: torch.nn.Module) -> torch.nn.Module:
    """torch.ao's dynamic int8 quantization of every nn.Linear in `module` (one activation scale per tensor)."""
    import warnings
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def int8_kernels(repeats: int) -> dict:
    """Seconds per call of one linear at the image tower's fc1 shape, per candidate, interleaved: float32 F.linear,
    altclip_kernels/int8.py's Int8Linear on each kernel that runs here (per-token activations, smoothing on the input),
    and torch.ao's dynamic int8 linear (one activation scale per tensor: faster, but not accurate enough)."""
    from altclip_kernels import int8
    m, k, n = common.gemm_shape()
    g = torch.Generator().manual_seed(0)
    x, linear = torch.randn(m, k, generator=g), torch.nn.Linear(k, n)
    smooth = int8.smoothing(x.abs().amax(0), linear.weight)
    fns = {"float32 F.linear": lambda: F.linear(x, linear.weight, linear.bias)}
    for kernel in int8.KERNELS:
        if int8._CHECKS[kernel]() is None:
            q = int8.Int8Linear(linear.weight, linear.bias, kernel, smooth)
            fns[f"int8 {kernel}"] = lambda q=q: q(x)
    dynamic = ao_dynamic_int8(torch.nn.Sequential(linear))
    fns["torch.ao dynamic (per tensor)"] = lambda: dynamic(x)
    with torch.inference_mode():
        times = interleaved(fns, repeats, 2)
    log("[int8] one linear at the fc1 shape: " + ", ".join(f"{name} {statistics.median(t) * 1e3:.0f} ms"
                                                           for name, t in times.items()))
    return {"shape": [m, k, n], "engine": torch.backends.quantized.engine, "s": times}


def int8_throughput(folder: Path, repeats: int, warmup: int, env: dict, others: bool) -> dict:
    """The reference in float32 against ours in int8: images/s and texts/s interleaved, the int8 embeddings' cosine
    to the reference's float32 ones, and load_pretrained's seconds and peak RSS, float32 against int8.

    others: in the same rounds, ours in int8 on each other kernel that runs here (what int8.kernel_order's choice
    rests on), and torch.ao's dynamic quantization of our float32 model (every linear, one activation scale per
    tensor: the probe issue 22 started from, the speed to match at a better accuracy)."""
    from altclip_kernels import int8
    from load_weights import load_pretrained

    pixels = common.image_batch()
    ids, mask = common.text_batch()
    res = {"image_batch": len(pixels), "text_batch": len(ids), "kernels": int8_kernels(repeats)}
    log("[int8] loading the reference (float32) and ours (int8) ...")
    models = {"reference": common.load("reference", folder, torch.float32)}
    t0 = time.perf_counter()
    models["ours+int8"] = load_pretrained(folder, dtype="int8")
    res["load_int8_in_process_s"] = time.perf_counter() - t0
    res["path"] = models["ours+int8"].int8
    log(f"  ours int8: {res['load_int8_in_process_s']:.1f} s, {res['path']}")
    if others:
        chosen = int8.choose_kernel()[0]  # what load_pretrained(..., dtype="int8") used
        for kernel in int8.KERNELS:
            if kernel != chosen and int8._CHECKS[kernel]() is None:
                log(f"  ours int8 on {kernel} (not chosen here) ...")
                models[f"ours+int8 {kernel}"] = int8.quantize(load_pretrained(folder), kernel=kernel)
        log("  torch.ao dynamic int8 (per tensor) of ours ...")
        models["ours+torch.ao"] = ao_dynamic_int8(load_pretrained(folder))
    with torch.inference_mode():
        emb = {impl: (common.image_features(impl, m, pixels), common.text_features(impl, m, ids, mask))
               for impl, m in models.items()}
        for impl in models:
            if impl != "reference":
                key = "" if impl == "ours+int8" else f"_{impl}"
                for k, kind in enumerate(("image", "text")):
                    res[f"{kind}_cosine{key}"] = F.cosine_similarity(emb[impl][k], emb["reference"][k]).tolist()
                log(f"  {impl}: cosine to float32: image {min(res['image_cosine' + key]):.5f}, "
                    f"text {min(res['text_cosine' + key]):.5f}")
        log(f"[int8] images/s, {repeats} interleaved repeats ...")
        res["image_s"] = interleaved({i: (lambda i=i: common.image_features(i, models[i], pixels)) for i in models},
                                     repeats, warmup - 1)
        log(f"[int8] texts/s, {repeats} interleaved repeats ...")
        res["text_s"] = interleaved({i: (lambda i=i: common.text_features(i, models[i], ids, mask)) for i in models},
                                    repeats, warmup - 1)
    for what in ("image_s", "text_s"):
        log("  " + what + ": " + ", ".join(f"{i} {statistics.median(t):.3f} s" for i, t in res[what].items()))
    models.clear()
    gc.collect()
    log("[int8] load_pretrained, then one image and two texts, float32 and int8 alternating, each in a fresh "
        "process ...")
    res["load"] = {"float32": [], "int8": []}
    for _ in range(2):
        for dtype in res["load"]:
            r = run_measured([sys.executable, "-c", LOAD_SCRIPT, str(ROOT), str(folder), dtype], env)
            if r["rc"] != 0:
                raise RuntimeError(f"load_pretrained({dtype}) failed: {r['stderr'][-2000:]}")
            res["load"][dtype].append({"wall_s": r["wall_s"], "load_s": float(r["stdout"].split()[-1]),
                                       "rss_mib": r["rss_mib"]})
            log(f"  {dtype}: {r['wall_s']:.1f} s, {r['rss_mib']:.0f} MiB")
    return res


def has_cli() -> bool:
    return (ROOT / "cli.py").exists() and "def main" in (ROOT / "cli.py").read_text()


def main_job(folder: Path, repeats: int, warmup: bool, dtype: str, env: dict) -> dict:
    image = rel(common.example_image())
    model = rel(folder)
    cmds = {"reference": ["bench/reference_job.py", image, *TEXTS, "--model", model],
            "ours": ["altclip.py", image, *TEXTS, "--model", model]}
    if dtype != "float32":
        cmds = {impl: [*cmd, "--dtype", dtype] for impl, cmd in cmds.items()}
    res = {"dtype": dtype, "commands": {impl: "python " + " ".join(f'"{a}"' if " " in a else a for a in c)
                                        for impl, c in cmds.items()},
           "runs": {impl: [] for impl in IMPLS}}
    log(f"[main job] {'one unmeasured run each, then ' if warmup else ''}{repeats} alternating ...")
    for k in range(repeats + warmup):
        for impl, cmd in cmds.items():
            r = run_measured([sys.executable, *cmd], env)
            if r["rc"] != 0:
                raise RuntimeError(f"the {impl} job failed (exit {r['rc']}): {' '.join(cmd)}\n{r['stderr'][-2000:]}")
            if k == 0:
                log(f"  {impl} prints:\n" + "".join(f"    {line}\n" for line in r["stdout"].splitlines()[:6]))
            if k >= warmup:
                res["runs"][impl].append({"wall_s": r["wall_s"], "rss_mib": r["rss_mib"]})
            log(f"  {impl}: {r['wall_s']:.1f} s, {r['rss_mib']:.0f} MiB{' (unmeasured)' if k < warmup else ''}")
    return res


def folder_job(folder: Path, repeats: int, n_images: int, dtypes: list[str], env: dict) -> dict:
    """`python altclip.py FOLDER ...` on a folder of n_images copies of the example photo: float32 with the defaults
    (--onednn auto) against --onednn off, alternating, and each other dtype once with the defaults: wall time, images
    answered, warning lines on stderr. This is the job whose automatic CPU path must never lose (issue 9)."""
    import shutil
    import tempfile

    photos = Path(tempfile.mkdtemp(prefix="altclip-folder-"))
    for k in range(n_images):
        shutil.copy(common.example_image(), photos / f"photo{k:02d}.jpg")
    base = ["altclip.py", str(photos), *TEXTS, "--model", rel(folder), "--json", "-v"]
    plan = [("float32", "auto"), ("float32", "off")] * repeats + [(d, "auto") for d in dtypes if d != "float32"]
    log(f"[folder job] {n_images} images: {len(plan)} runs ...")
    res = {"images": n_images, "command": "python " + " ".join(base[:1] + ["FOLDER"] + base[2:]), "runs": []}
    try:
        for dtype, mode in plan:
            cmd = [*base, "--dtype", dtype, "--onednn", mode]
            r = run_measured([sys.executable, *cmd], env)
            answered = len(json.loads(r["stdout"])) if r["rc"] == 0 else 0
            lines = r["stderr"].strip().splitlines()
            res["runs"].append({"dtype": dtype, "onednn": mode, "rc": r["rc"], "wall_s": r["wall_s"],
                                "answered": answered, "warnings": [x for x in lines if ": warning: " in x],
                                "path": next((x for x in lines if "compute path" in x), "")})
            log(f"  {dtype} --onednn {mode}: {r['wall_s']:.1f} s, exit {r['rc']}, {answered}/{n_images} answered")
    finally:
        shutil.rmtree(photos)
    return res


def rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -----------------------------------------------------------------------------
# The table.


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    import transformers
    from altclip_kernels import cpu as cpu_class
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": isa, "torch": torch.__version__,
            "cpu_class": cpu_class.describe(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "commit": commit,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}


def med(xs):
    return statistics.median(xs)


def table(info: dict, res: dict, args) -> str:
    rows = []  # (measure, reference, ours, ratio, goal, met)

    def row(measure, ref, ours, fmt, goal="", met=None, ratio=True):
        r = f"{ours / ref:.2f}×" if ratio and ref not in (None, 0) and ours is not None else ""
        cell = lambda v: "—" if v is None else format(v, fmt)  # noqa: E731
        rows.append((measure, cell(ref), cell(ours), r, goal, "" if met is None else ("yes" if met else "**no**")))

    tp = res.get("throughput")
    if tp:
        flops = common.image_tower_flops(tp["image_batch"])
        for dname, speed_goal in (("float32", 1.0), ("bfloat16", 1.3)):
            if dname not in tp:
                continue
            d = tp[dname]
            peak = med(d["gemm_gflops"])
            # The machine's figure, not an implementation's: in the "ours" column for lack of a better place.
            rows.append((f"GEMM peak, {dname}: GFLOP/s at 1028×1024 @ 1024×4096 (best of torch.mm, oneDNN packed)",
                         "", f"{peak:.0f}",
                         "", "", ""))
            img = {i: tp["image_batch"] / med(t) for i, t in d["image_s"].items()}
            txt = {i: tp["text_batch"] / med(t) for i, t in d["text_s"].items()}
            gf = {i: flops / med(t) / 1e9 for i, t in d["image_s"].items()}
            for impl, label in (("ours", ""), ("ours+onednn", ", ours with oneDNN-packed linears")):
                if impl not in img:  # cannot run on this CPU class: said in its own row below
                    continue
                row(f"images/s, {dname} (batch {tp['image_batch']}){label}", img["reference"], img[impl], ".2f",
                    f"≥ {speed_goal}×", img[impl] / img["reference"] >= speed_goal)
                row(f"texts/s, {dname} (batch {tp['text_batch']}, 5-40 tokens){label}", txt["reference"], txt[impl],
                    ".1f", f"≥ {speed_goal}×", txt[impl] / txt["reference"] >= speed_goal)
                row(f"image tower, {dname}: fraction of GEMM peak{label}", gf["reference"] / peak, gf[impl] / peak,
                    ".0%", "≥ 80%", gf[impl] / peak >= 0.8, ratio=False)
        for kind in ("image", "text"):
            for key, label in (("", ""), ("_onednn", ", oneDNN-packed")):
                diff = tp.get(f"{kind}_max_abs_diff_fp32{key}")
                if diff is None:
                    continue
                row(f"{kind} embeddings, float32{label}: max abs diff to reference (L2-normalised)", None, diff,
                    ".1e", "≤ 1e-4", diff <= 1e-4, ratio=False)
        for kind in ("image", "text"):
            for impl, label in (("ours", ""), ("ours+onednn", ", oneDNN-packed")):
                if f"{kind}_bf16_cosine_{impl}" not in tp:
                    continue
                cos = tp[f"{kind}_bf16_cosine_{impl}"]
                row(f"{kind} embeddings{label}: bfloat16 cosine to own float32 (min over batch)",
                    tp[f"{kind}_bf16_cosine_reference"], cos, ".5f", "≥ 0.999", cos >= 0.999, ratio=False)
    q = res.get("int8")
    if q:
        img = {i: q["image_batch"] / med(t) for i, t in q["image_s"].items()}
        txt = {i: q["text_batch"] / med(t) for i, t in q["text_s"].items()}
        avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
        goal = 2.5 if avx512 else 1.5  # issue 22: AVX-512 with VNNI / AVX2
        rows.append((f"int8: {q['path']}", "", "", "", "", ""))
        kern = q.get("kernels")
        if kern:
            base = med(kern["s"]["float32 F.linear"])
            for name, t in kern["s"].items():
                if name != "float32 F.linear":
                    row(f"one linear {'×'.join(map(str, kern['shape']))}, ms: {name} against float32 F.linear",
                        base * 1e3, med(t) * 1e3, ".1f")
        row(f"images/s, int8 (batch {q['image_batch']}), reference in float32", img["reference"], img["ours+int8"],
            ".2f", f"≥ {goal}×", img["ours+int8"] / img["reference"] >= goal)
        row(f"texts/s, int8 (batch {q['text_batch']}, 5-40 tokens), reference in float32", txt["reference"],
            txt["ours+int8"], ".1f", "≥ 2×", txt["ours+int8"] / txt["reference"] >= 2)
        for kind in ("image", "text"):
            cos = min(q[f"{kind}_cosine"])
            row(f"{kind} embeddings, int8: cosine to the reference's float32 (min over batch)", None, cos, ".5f",
                "≥ 0.999", cos >= 0.999, ratio=False)
        for impl in img:
            if impl not in ("reference", "ours+int8"):
                what = ("torch.ao dynamic int8 of ours (per tensor, every linear)" if impl == "ours+torch.ao" else
                        f"int8 on {impl.split()[-1]} (not chosen here)")
                row(f"images/s, {what}", img["reference"], img[impl], ".2f")
                row(f"texts/s, {what}", txt["reference"], txt[impl], ".1f")
                row(f"cosine image / text, {what}", None,
                    f"{min(q['image_cosine_' + impl]):.5f} / {min(q['text_cosine_' + impl]):.5f}", "", ratio=False)
        load = {d: (med([r["load_s"] for r in rs]), med([r["rss_mib"] for r in rs])) for d, rs in q["load"].items()}
        row("load_pretrained: seconds, int8 against float32 (in the float32 column)", load["float32"][0],
            load["int8"][0], ".1f")
        row("load_pretrained + 1 image + 2 texts: peak RSS (MiB), int8 against float32 (in the float32 column)",
            load["float32"][1], load["int8"][1], ".0f", "< 1×", load["int8"][1] < load["float32"][1])
    if tp:
        for what, why in tp.get("unavailable", {}).items():
            rows.append((f"{what}: not on this CPU class ({why})", "", "", "", "", ""))
    fj = res.get("folder_job")
    if fj:
        wall = {m: med([r["wall_s"] for r in fj["runs"] if r["dtype"] == "float32" and r["onednn"] == m])
                for m in ("auto", "off")}
        row(f"folder job, {fj['images']} images, float32: wall s, default (--onednn auto) vs --onednn off",
            wall["off"], wall["auto"], ".1f", "≤ 1.05×", wall["auto"] / wall["off"] <= 1.05)
        for r in fj["runs"]:
            if r["dtype"] != "float32":
                ok = r["rc"] == 0 and r["answered"] == fj["images"]
                row(f"folder job, {fj['images']} images, {r['dtype']}: images answered, {len(r['warnings'])} warning "
                    f"line(s), {r['wall_s']:.0f} s", None, r["answered"], "d", f"{fj['images']}, ≤ 1 warning",
                    ok and len(r["warnings"]) <= 1, ratio=False)
    job = res.get("main_job")
    if isinstance(job, dict):
        wall = {i: med([r["wall_s"] for r in job["runs"][i]]) for i in IMPLS}
        rss = {i: med([r["rss_mib"] for r in job["runs"][i]]) for i in IMPLS}
        row(f"main job, whole process, {job['dtype']}: wall time (s)", wall["reference"], wall["ours"], ".2f",
            "≤ 0.7×", wall["ours"] / wall["reference"] <= 0.7)
        row(f"main job, whole process, {job['dtype']}: peak RSS (MiB)", rss["reference"], rss["ours"], ".0f",
            "≤ 1.0×", rss["ours"] / rss["reference"] <= 1.0)

    lines = [f"CPU benchmark, `python bench/cpu.py{' ' + ' '.join(args.argv) if args.argv else ''}` "
             f"({info['seconds']} s in all)",
             "",
             f"- machine: {info['cpu']}, {info['cores']} cores ({', '.join(info['isa'])}); torch {info['torch']} "
             f"({info['cpu_capability']}), {info['threads']} threads; transformers {info['transformers']} "
             f"(the reference, SDPA attention); Python {info['python']}",
             f"- CPU class: {info['cpu_class']} (altclip_kernels/cpu.py; it decides what --onednn auto packs)",
             f"- date: {info['date']}; checkout {info['commit']}; load average at start "
             f"{' '.join(info['loadavg_start'])}, at end {' '.join(info['loadavg_end'])}",
             f"- weights: random full-size AltCLIP ({rel(args.model)}, seed {common.SEED}), the same file for both"]
    if tp:
        lines.append(f"- throughput: medians of {args.repeats} interleaved repeats under torch.inference_mode(); the "
                     f"GEMM timed in the same rounds as the image tower; image tower FLOPs counted analytically "
                     f"({common.image_tower_flops(tp['image_batch']) / 1e9:.0f} GFLOP per batch of "
                     f"{tp['image_batch']}); text lengths {tp['text_lengths']}")
    if q:
        lines.append(f"- int8: the reference in float32 against ours loaded with dtype=\"int8\", medians of "
                     f"{args.repeats} interleaved repeats; load_pretrained (then 1 image, 2 texts: peak RSS) in fresh "
                     f"processes, float32 and int8 alternating (median of {len(q['load']['int8'])})")
    if fj:
        auto = next((r["path"] for r in fj["runs"] if r["onednn"] == "auto" and r["dtype"] == "float32"), "")
        lines.append(f"- folder job: `{fj['command']} --dtype D --onednn auto|off`, float32 auto and off alternating "
                     f"(median of {sum(r['onednn'] == 'off' for r in fj['runs'])}); -v said: "
                     f"`{auto.removeprefix('altclip.py: ')}`")
        lines += [f"- folder job warning: `{w}`" for r in fj["runs"] for w in r["warnings"]][:2]
    if isinstance(job, dict):
        lines.append(f"- main job: `{job['commands']['ours']}` against `{job['commands']['reference']}`, median of "
                     f"{len(job['runs']['ours'])} alternating runs"
                     + (" after one unmeasured run each" if not args.quick else ""))
    elif job:
        lines.append(f"- main job: skipped ({job})")
    lines.append("")
    lines += ["| measure | reference | ours | ours/ref | goal | met |", "|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description="CPU benchmark of our AltCLIP against the reference (see the docstring).")
    p.add_argument("--quick", action="store_true",
                   help="1 repeat, no extra warm-up, 1 main-job run each: checks that the script works")
    p.add_argument("--repeats", type=int, help="timed repeats per measurement (default 5, --quick 1)")
    p.add_argument("--job-repeats", type=int, help="measured main-job runs per implementation (default 3, --quick 1)")
    p.add_argument("--job-dtype", choices=list(DTYPES), default="float32", help="the main job's --dtype")
    p.add_argument("--threads", type=int, help="torch threads (also OMP_NUM_THREADS for the main-job processes)")
    p.add_argument("--model", type=Path, default=common.DEFAULT_MODEL,
                   help="checkpoint folder; built there if missing (default bench/out/altclip-random)")
    p.add_argument("--rebuild", action="store_true", help="build the random checkpoint again")
    p.add_argument("--dtypes", nargs="+", default=[*DTYPES, "int8"], choices=[*DTYPES, "int8"],
                   help="dtypes of the throughput part (default: all; bfloat16 takes ~30 min where it is emulated; "
                        "int8: ours in int8 against the reference in float32)")
    p.add_argument("--int8-chosen-only", action="store_true",
                   help="int8: time only the kernel int8.choose_kernel picks, not also the others that run here and "
                        "torch.ao's dynamic quantization")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-job", action="store_true")
    p.add_argument("--folder-images", type=int, default=17,
                   help="images in the folder job (default %(default)s: one more than --onednn auto's threshold)")
    p.add_argument("--folder-dtypes", nargs="*", default=["bfloat16"], choices=list(DTYPES),
                   help="dtypes run once each in the folder job besides float32 (default: bfloat16)")
    p.add_argument("--skip-folder-job", action="store_true")
    p.add_argument("--out", type=Path, default=OUT / "cpu.md", help="where the table goes (and .json beside it)")
    args = p.parse_args(argv)
    args.argv = argv
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.job_repeats = args.job_repeats or (1 if args.quick else 3)
    warmup = 1 if args.quick else 2  # forwards before the timed ones, counting the one that computes embeddings

    env = dict(os.environ)
    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = str(args.threads)
    t_start = time.perf_counter()
    if args.rebuild:
        common.build_checkpoint(args.model)
    folder = common.ensure_checkpoint(args.model, log)
    info = machine()
    res = {}
    if not args.skip_throughput:
        if set(args.dtypes) & set(DTYPES):
            res["throughput"] = throughput(folder, args.repeats, warmup, args.dtypes)
        if "int8" in args.dtypes:
            res["int8"] = int8_throughput(folder, args.repeats, warmup, env, not args.int8_chosen_only)
    if args.skip_job:
        res["main_job"] = "--skip-job"
    elif not has_cli():
        res["main_job"] = "no command line yet (no cli.py with `def main`)"
        log(f"[main job] skipped: {res['main_job']}")
    else:
        res["main_job"] = main_job(folder, args.job_repeats, not args.quick, args.job_dtype, env)
    if not args.skip_folder_job and has_cli():
        res["folder_job"] = folder_job(folder, args.job_repeats, args.folder_images, args.folder_dtypes, env)
    info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    info["seconds"] = round(time.perf_counter() - t_start)

    text = table(info, res, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": info, "results": res}, indent=1))
    log(f"wrote {args.out} and {args.out.with_suffix('.json')} ({info['seconds']} s in all)")


if __name__ == "__main__":
    main()
