"""Two benchmarks of the search.

The embedding index at work: the first search of a 16-image folder (empty index) against the second (unchanged
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

Decoding while the model works (--decode): 24 camera-size JPEGs (4000×3000) against the same 24 pictures at 224 px,
embedded by the full-size model in float32 the way the command line embeds a folder (cli.embed_images: decoded in
threads ahead of the model), and the same the way it did before (each batch decoded in the model's thread). The goal:
camera JPEGs take ≤ 1.1× the time of the 224 px ones. The runs alternate; the model is loaded once.

    python bench/search.py --decode    # builds the full-size random model once in $TMPDIR (3.5 GB), then measures
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

import numpy as np

from common import ROOT, ensure_checkpoint, example_image, run_measured

GOAL = 0.6
TEXT_SIDE_GOAL = 0.85
# `python altclip.py ARGS` through cli.main; WHOLE also makes an indexed search load the whole model, as it did before
# the text side could be loaded alone.
CLI = "import sys; sys.path.insert(0, {root!r}); import cli; {patch}sys.exit(cli.main(sys.argv[1:]))"
WHOLE = "cli.load_text_side = lambda args: cli.load_model(args, 0); "
N_IMAGES = 16
FULL_MODEL = Path(tempfile.gettempdir()) / "altclip-full-random"  # 3.5 GB: never inside the repository
N_CAMERA = 24
CAMERA_SIZE = (4000, 3000)  # 12 megapixels, a phone's or camera's photo
DECODE_GOAL = 1.1


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
    p.add_argument("--decode", action="store_true", help="measure decoding ahead of the model instead (see above)")
    p.add_argument("--images", type=int, default=N_CAMERA, help=f"--decode: how many images (default {N_CAMERA})")
    p.add_argument("--batch-size", type=int, default=8, help="--decode: images per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="--decode: where the model runs (default cpu)")
    p.add_argument("--flat", type=int, default=10_000, help="--decode: paths for the memory check (default 10000)")
    args = p.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average at start: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.decode:
        return decode_main(args)

    import torch

    from altclip_kernels import cpu
    model = args.model or ensure_checkpoint()
    with open(model / "model.safetensors", "rb") as f:  # into the page cache, so that neither search reads the disk
        while f.read(1 << 26):
            pass
    print(f"CPU class {cpu.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")

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


# -----------------------------------------------------------------------------
# --decode: camera-size JPEGs, decoded in threads while the model works.

def ensure_full_model(folder: Path = FULL_MODEL) -> Path:
    """BAAI/AltCLIP's geometry with random weights, written by our own save_pretrained (AltCLIP() defaults are the real
    model's sizes), plus the benchmarks' small tokenizer; built once, in the temporary folder."""
    import torch

    import altclip
    import load_weights
    from common import train_tokenizer

    if (folder / "done").exists():
        return folder
    torch.manual_seed(0)
    load_weights.save_pretrained(altclip.AltCLIP(), folder)
    train_tokenizer(folder, 8000)
    (folder / "done").write_text("written last: a half-written folder is built again\n")
    return folder


def make_camera_folders(root: Path, n: int = N_CAMERA) -> tuple[Path, Path]:
    """n different 4000×3000 JPEGs (the example photos enlarged, with sensor-like noise so that they compress like
    photos, every fourth one stored on its side with an EXIF rotation, as cameras do), and the same n pictures at
    224 px (shorter side), upright."""
    from PIL import Image, ImageOps

    photos = [Image.open(p).convert("RGB") for p in (example_image(), ROOT / "examples" / "coffee.jpg") if p.exists()]
    big, small = root / "camera", root / "224px"
    big.mkdir(parents=True)
    small.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        photo = ImageOps.mirror(photos[k % len(photos)]) if k % 3 == 0 else photos[k % len(photos)]
        w, h = photo.size
        zoom = 1 + 0.05 * k
        crop = photo.crop((0, 0, int(w / zoom), int(h / zoom))).resize(CAMERA_SIZE, Image.BICUBIC)
        noise = rng.normal(0, 6, (CAMERA_SIZE[1], CAMERA_SIZE[0], 3))
        picture = Image.fromarray(np.clip(np.asarray(crop) + noise, 0, 255).astype(np.uint8))
        if k % 4 == 3:  # stored on its side, with the EXIF tag that turns it upright
            exif = Image.Exif()
            exif[0x0112] = 6
            picture.transpose(Image.Transpose.ROTATE_90).save(big / f"IMG_{k:04d}.jpg", quality=92,
                                                              exif=exif.tobytes())
        else:
            picture.save(big / f"IMG_{k:04d}.jpg", quality=92)
        scale = 224 / min(picture.size)
        picture.resize((round(picture.width * scale), 224), Image.BICUBIC).save(small / f"IMG_{k:04d}.jpg",
                                                                                quality=92)
    return big, small


def embed_serially(model, paths: list[str], batch_size: int):
    """The way before decode_ahead: each batch decoded in the model's thread, then embedded."""
    import torch

    import altclip
    for start in range(0, len(paths), batch_size):
        pixels = altclip.preprocess(paths[start:start + batch_size], model.config.vision.image_size)
        with torch.inference_mode():
            model.get_image_features(pixels.to(model.device))


class PeakRSS:
    """The process's peak resident memory while inside the `with`, sampled every 10 ms by a thread."""

    def __enter__(self):
        import psutil
        import threading
        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.start = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()

    @property
    def mib(self) -> float:
        return max(0, self.peak - self.start) / 2**20


def decode_main(args):
    import time

    import cli

    model_dir = args.model or ensure_full_model()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="altclip-decode-") as tmp:
        big, small = make_camera_folders(Path(tmp), args.images)
        listing = {name: sorted(str(p) for p in folder.iterdir()) for name, folder in (("camera", big), ("224", small))}
        mb = sum(os.path.getsize(p) for p in listing["camera"]) / len(listing["camera"]) / 1e6
        print(f"{args.images} JPEGs of {CAMERA_SIZE[0]}×{CAMERA_SIZE[1]} ({mb:.1f} MB each) and the same at 224 px, "
              f"made in {time.perf_counter() - t0:.0f} s")
        # The command line's own model loading (dtype, device, oneDNN packing as `--update` would choose them).
        cli_args = cli.parse_args([str(big), "--update", "--model", str(model_dir), "--dtype", "float32",
                                   "--device", args.device, "--batch-size", str(args.batch_size)])
        model, _ = cli.load_model(cli_args, args.images)
        print(f"model: {model_dir}, float32 on {cli_args.device}, compute path {model.path}; batch {args.batch_size}; "
              f"{cli.DECODE_WORKERS} decoding thread(s), {cli.DECODE_AHEAD * args.batch_size} images ahead at most")
        one = time.perf_counter()
        cli.decode(listing["camera"][0], 224)
        print(f"decoding one camera JPEG in this thread: {time.perf_counter() - one:.2f} s")
        for _ in cli.embed_images(model, listing["224"][:2], 2, False):  # warm-up
            pass

        def pipelined(paths):
            for _ in cli.embed_images(model, paths, args.batch_size, False):
                pass

        hows = {"decode ahead": pipelined, "same thread": lambda paths: embed_serially(model, paths, args.batch_size)}
        wall = {(how, name): [] for how in hows for name in listing}
        cpu = {key: [] for key in wall}
        ratios = {how: [] for how in hows}  # camera / 224 px, the two runs of one pair next to each other in time
        peaks = []
        for r in range(args.repeats):
            # Each pair back to back, in alternating order: the machine's other load changes slowly, so it falls on
            # both runs of a pair alike.
            for how, embed in hows.items():
                for name in (("camera", "224") if r % 2 == 0 else ("224", "camera")):
                    with PeakRSS() as rss:
                        start, start_cpu = time.perf_counter(), time.process_time()  # process: every thread
                        embed(listing[name])
                        wall[how, name].append(time.perf_counter() - start)
                        cpu[how, name].append(time.process_time() - start_cpu)
                    if (how, name) == ("decode ahead", "camera"):
                        peaks.append(rss.mib)
                ratios[how].append(wall[how, "camera"][-1] / wall[how, "224"][-1])
            print(f"repeat {r + 1}: " + ", ".join(f"{how} {name} {wall[how, name][-1]:.1f} s" for how, name in wall)
                  + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
        flat = []
        with PeakRSS() as rss:  # memory stays flat however many images: the queue is bounded
            paths = [listing["224"][k % len(listing["224"])] for k in range(args.flat)]
            for k, _ in enumerate(cli.decode_ahead(paths, 224, ahead=cli.DECODE_AHEAD * args.batch_size)):
                if k + 1 in (1000, args.flat):
                    flat.append(rss.mib)
    med = {key: statistics.median(v) for key, v in wall.items()}
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"| {args.images} images, embedded (batch {args.batch_size}), median of {args.repeats} | camera JPEGs s | "
          f"224 px s | camera / 224 px (median of pairs) | CPU s per image, camera / 224 px |")
    print("|---|---:|---:|---:|---:|")
    for how in hows:
        ratio = statistics.median(ratios[how])
        goal = f" (goal ≤ {DECODE_GOAL}×: {'met' if ratio <= DECODE_GOAL else 'NOT met'})" if how == "decode ahead" else ""
        per_image = [statistics.median(cpu[how, name]) / args.images for name in ("camera", "224")]
        print(f"| {how} | {med[how, 'camera']:.1f} | {med[how, '224']:.1f} | {ratio:.2f}×{goal} | "
              f"{per_image[0]:.2f} / {per_image[1]:.2f} |")
    print(f"\npeak memory above the loaded model while embedding the camera JPEGs: {max(peaks):.0f} MiB")
    print(f"decoding ahead over {args.flat} paths (the 224 px files, cycled; no model): peak memory above the start "
          f"after 1,000 {flat[0]:.0f} MiB, after {args.flat} {flat[1]:.0f} MiB")


if __name__ == "__main__":
    main()
