"""Benchmark the Triton kernels against PyTorch on a CUDA GPU; without one, check them on CPU and say so.

    python bench/gpu_kernels.py

Every kernel is first checked against its plain-torch reference (as llm.c's dev/cuda does before timing), then
timed with triton.testing.do_bench (median of repeated runs, L2 flushed between them):

- attention vs torch.nn.functional.scaled_dot_product_attention, float16 and bfloat16, q/k/v as strided views of a
  fused (B, N, 3·H·D) projection exactly as the model makes them:
    image tower   B=64,  H=16, N=257, D=64, no mask;
    ragged text   B=256, H=16, D=64, lengths 5–77 (uniform, seed 0) right-padded to 77, with the padding mask;
                  SDPA is timed with the boolean mask, and once without it (dense, as if padding were text) for scale.
  TFLOP/s count useful work only: QKᵀ and PV are 2·L²·D flops each per (sequence, head), so 4·L²·D·H per
  sequence summed over the real lengths L. The same count divides every time, so ratios are time ratios.
- LayerNorm over 65536×1024, with and without the fused residual add, vs torch.nn.functional.layer_norm (and
  `h = x + r; layer_norm(h)`, unfused): GB/s counting each tensor read or written once (x, y; plus r and h with
  the residual), against the device's peak memory bandwidth and a measured device-to-device copy.

On a machine without a CUDA device the script sets TRITON_INTERPRET=1 (before `altclip_kernels` is imported: the
@triton.jit decorators read it), runs the correctness checks at small shapes in Triton's CPU interpreter, says that
timings need a GPU, and exits 0 (1 if a check fails). The tile sizes in altclip_kernels/ are untuned defaults; this script
is where to tune them.
"""
import os
import platform
import subprocess
import sys

ATTENTION_TOL = {"float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)}
LAYER_NORM_TOL = {"float32": (1e-5, 1e-5), "float16": (1e-3, 1e-3), "bfloat16": (1e-2, 1e-2)}


# ---------------------------------------------------------------------------------------------- inputs


def fused_qkv(B, H, N, D, dtype, device, seed=0):
    """q, k, v as (B, H, N, D) strided views of one (B, N, 3·H·D) projection output, no copies."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(B, N, 3 * H * D, generator=g, device=device, dtype=dtype)
    q, k, v = qkv.view(B, N, 3, H, D).unbind(2)  # each (B, N, H, D)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # each (B, H, N, D)


def ragged_lengths(B, lo, hi, seed=0):
    import torch

    return torch.randint(lo, hi + 1, (B,), generator=torch.Generator().manual_seed(seed))


def padding_mask(lengths, N, device):
    import torch

    return (torch.arange(N)[None, :] < lengths[:, None]).to(device)  # (B, N) bool, True = real token


def attention_flops(lengths, H, D):
    """Useful flops: per (sequence, head) QKᵀ and PV are L·L·D multiply-adds each, 2 flops per multiply-add."""
    return sum(4 * int(L) ** 2 * D * H for L in lengths)


# ---------------------------------------------------------------------------------------------- checks


def check_attention(altclip_kernels, B, H, N, D, dtype, lengths=None, *, device):
    """Max abs error of altclip_kernels.attention vs the fp32 reference, and whether it is within the dtype's tolerance."""
    import torch

    q, k, v = fused_qkv(B, H, N, D, dtype, device)
    mask = None if lengths is None else padding_mask(lengths, N, device)
    out = altclip_kernels.attention(q, k, v, mask).float()
    ref = altclip_kernels.attention_reference(q.float(), k.float(), v.float(), mask)
    atol, rtol = ATTENTION_TOL[str(dtype).removeprefix("torch.")]
    ok = bool(torch.isclose(out, ref, atol=atol, rtol=rtol).all())
    return (out - ref).abs().max().item(), ok


def check_layer_norm(altclip_kernels, M, W, dtype, device, residual):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    x, r = (torch.randn(M, W, generator=g, device=device).to(dtype) for _ in range(2))
    w, b = (torch.randn(W, generator=g, device=device).to(dtype) for _ in range(2))
    atol, rtol = LAYER_NORM_TOL[str(dtype).removeprefix("torch.")]
    if residual:
        y, h = altclip_kernels.layer_norm(x, w, b, residual=r)
        ref = altclip_kernels.layer_norm_reference(h.float(), w, b)  # y must be LN of exactly the h returned
        ok_h = bool(torch.isclose(h.float(), x.float() + r.float(), atol=atol, rtol=rtol).all())
    else:
        y, ok_h = altclip_kernels.layer_norm(x, w, b), True
        ref = altclip_kernels.layer_norm_reference(x.float(), w, b)
    ok = ok_h and bool(torch.isclose(y.float(), ref, atol=atol, rtol=rtol).all())
    return (y.float() - ref).abs().max().item(), ok


def run_checks(altclip_kernels, device, cases_attention, cases_layer_norm):
    print(f"{'correctness vs fp32 reference':<58} {'max |err|':>10}  result")
    all_ok = True
    for name, args in cases_attention:
        err, ok = check_attention(altclip_kernels, *args, device=device)
        all_ok &= ok
        print(f"  {name:<56} {err:>10.2e}  {'ok' if ok else 'FAIL'}")
    for name, (M, W, dtype, residual) in cases_layer_norm:
        err, ok = check_layer_norm(altclip_kernels, M, W, dtype, device, residual)
        all_ok &= ok
        print(f"  {name:<56} {err:>10.2e}  {'ok' if ok else 'FAIL'}")
    return all_ok


# ---------------------------------------------------------------------------------------------- GPU facts


def nvidia_smi(fields):
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.splitlines()[0]
        return [s.strip() for s in out.split(",")]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def peak_bandwidth_gbs(props):
    """Peak DRAM bandwidth from the memory clock and bus width (double data rate), where torch reports them."""
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
    return None


# ---------------------------------------------------------------------------------------------- timing


def gpu_main(altclip_kernels, device="cuda"):
    import torch
    import torch.nn.functional as F
    import triton
    from triton.testing import do_bench

    props = torch.cuda.get_device_properties(0)
    smi = nvidia_smi("clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,driver_version")
    peak_bw = peak_bandwidth_gbs(props)
    print(f"GPU      {torch.cuda.get_device_name(0)}  ({props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.0f} GiB)")
    if smi:
        print(f"clocks   SM {smi[0]} (max {smi[1]}), memory {smi[2]} (max {smi[3]}); power limit {smi[4]}; "
              f"driver {smi[5]}")
    print(f"versions torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
          f"python {platform.python_version()}")
    print(f"kernels  {altclip_kernels.available()[1]}")
    print()

    text_lengths = ragged_lengths(256, 5, 77)
    ok = run_checks(altclip_kernels, device, [
        (f"attention image 8x16x257x64 {dt}", (8, 16, 257, 64, getattr(torch, dt))) for dt in ("float16", "bfloat16")
    ] + [
        (f"attention ragged text 32x16x77x64 {dt}", (32, 16, 77, 64, getattr(torch, dt), text_lengths[:32]))
        for dt in ("float16", "bfloat16", "float32")
    ], [
        (f"layer_norm 4096x1024 {dt}{' +residual' if res else ''}", (4096, 1024, getattr(torch, dt), res))
        for dt in ("float16", "bfloat16", "float32") for res in (False, True)
    ])
    if not ok:
        print("\ncorrectness check FAILED: not timing")
        return 1
    print()

    def bench(fn):
        return do_bench(fn, warmup=25, rep=200, return_mode="median")  # milliseconds

    from altclip_kernels.attention import _block_config

    print("attention: TFLOP/s of useful work (real tokens only); ratio = SDPA time / this time")
    print(f"  {'':<44} {'ms':>8} {'TFLOP/s':>8} {'vs SDPA':>8}")
    for dt in ("float16", "bfloat16"):
        dtype = getattr(torch, dt)
        cases = [("image 64x16x257x64, no mask", 64, 257, torch.full((64,), 257), False),
                 ("text 256x16x77x64, lengths 5-77, mask", 256, 77, text_lengths, True)]
        for name, B, N, lengths, masked in cases:
            H, D = 16, 64
            q, k, v = fused_qkv(B, H, N, D, dtype, device)
            mask = padding_mask(lengths, N, device) if masked else None
            sdpa_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, N): broadcast over heads, rows
            flops = attention_flops(lengths, H, D)
            tiles = "BLOCK_M={}, BLOCK_N={}, {} warps, {} stages".format(*_block_config(N, D, dtype, False))
            t_sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask))
            rows = [("triton", bench(lambda: altclip_kernels.attention(q, k, v, mask))),
                    ("SDPA" + (" with the mask" if masked else ""), t_sdpa)]
            if masked:
                t_dense = bench(lambda: F.scaled_dot_product_attention(q, k, v))
                rows.append(("SDPA without mask (pads as tokens)", t_dense))
            print(f"  {dt} {name}   [triton tiles: {tiles}]")
            for label, t in rows:
                print(f"    {label:<42} {t:>8.3f} {flops / t / 1e9:>8.1f} {t_sdpa / t:>7.2f}x")
    print()

    M, W = 65536, 1024
    src = torch.empty(M, W, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() * src.element_size() / bench(lambda: dst.copy_(src)) / 1e6
    del src, dst
    print(f"layer_norm {M}x{W}: GB/s counting x, y (and residual, h) once each; "
          f"peak {f'{peak_bw:.0f} GB/s' if peak_bw else 'unknown (torch does not report it)'}, "
          f"measured device copy {copy_bw:.0f} GB/s")
    print(f"  {'':<40} {'ms':>8} {'GB/s':>8} {'% peak':>8} {'% copy':>8} {'vs torch':>8}")
    for dt in ("float16", "bfloat16", "float32"):
        dtype = getattr(torch, dt)
        x, r = torch.randn(M, W, device=device, dtype=dtype), torch.randn(M, W, device=device, dtype=dtype)
        w, b = torch.randn(W, device=device, dtype=dtype), torch.randn(W, device=device, dtype=dtype)
        for residual in (False, True):
            if residual:
                def ours():
                    return altclip_kernels.layer_norm(x, w, b, residual=r)

                def unfused():
                    h = x + r
                    return F.layer_norm(h, (W,), w, b), h
            else:
                def ours():
                    return altclip_kernels.layer_norm(x, w, b)

                def unfused():
                    return F.layer_norm(x, (W,), w, b)
            nbytes = (4 if residual else 2) * M * W * x.element_size()
            t_ours, t_torch = bench(ours), bench(unfused)
            what = f"{dt}{' + residual' if residual else ''}"
            for label, t in ((f"{what}: triton", t_ours), (f"{what}: torch", t_torch)):
                gbs = nbytes / t / 1e6
                pct = f"{100 * gbs / peak_bw:.0f}%" if peak_bw else "n/a"
                print(f"  {label:<40} {t:>8.3f} {gbs:>8.0f} {pct:>8} {100 * gbs / copy_bw:>7.0f}% {t_torch / t:>7.2f}x")
    return 0


def cpu_main(altclip_kernels):
    import torch

    print(f"no CUDA device: checking the kernels in Triton's CPU interpreter at small shapes "
          f"(torch {torch.__version__}, triton {__import__('triton').__version__})")
    print(f"kernels: {altclip_kernels.available()[1]}")
    print()
    lengths = torch.tensor([77, 1, 40, 5])  # ragged, including a sequence of length 1
    ok = run_checks(altclip_kernels, "cpu", [
        (f"attention 4x2x77x64 ragged {dt}", (4, 2, 77, 64, getattr(torch, dt), lengths))
        for dt in ("float32", "float16", "bfloat16")
    ] + [
        ("attention 1x2x257x64 image-like float16", (1, 2, 257, 64, torch.float16)),
    ], [
        (f"layer_norm 16x1000 {dt}{' +residual' if res else ''}", (16, 1000, getattr(torch, dt), res))
        for dt in ("float32", "float16", "bfloat16") for res in (False, True)
    ])
    print()
    print("timings need a CUDA GPU: none was found, so nothing was timed.")
    return 0 if ok else 1


def main():
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede `import altclip_kernels` (the @triton.jit decorators)
    import common  # noqa: F401  (puts the repository on sys.path)
    import altclip_kernels

    ok, why = altclip_kernels.available()
    if not ok:
        print(f"the Triton kernels cannot run here: {why}")
        return 1
    return gpu_main(altclip_kernels) if torch.cuda.is_available() else cpu_main(altclip_kernels)


if __name__ == "__main__":
    sys.exit(main())
