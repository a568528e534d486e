"""
The command line: zero-shot classification and search of images with AltCLIP, in any of ~100 languages.

    python altclip.py examples/cat.jpg "a cat" "a dog" "一只猫"     which label fits each image best
    python altclip.py photos/ --search "eine Katze auf dem Sofa"      which images fit a text best
    python altclip.py photos/ --like photos/cat.jpg                   which images look most like this one

`python altclip.py` hands over to main() here; altclip.py is the model and its preprocessing, load_weights.py and
tokenizer.py read a checkpoint, and index.py keeps the image embeddings a search computes, so that the next search of
the same folder embeds only the files that are new or changed.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import index
from altclip import ImageError, load_image, preprocess

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "int8": "int8"}  # int8: the blocks' linears in int8 on the CPU, the rest float32 (altclip_kernels/int8.py)
KERNELS = {"auto": None, "on": True, "off": False}
ONEDNN_MIN_IMAGES = 16  # packing costs ~1-3 s at load and saves ~0.15-0.3 s per image (2-core AVX-512 CPU)

DESCRIPTION = """\
Zero-shot image classification and image search with AltCLIP, in any of ~100
languages. Classification ranks the LABELs by how well they describe each image:
the probabilities are the softmax over the labels of exp(logit_scale) *
cosine(image, text), as in CLIP. Search (--search QUERY, --like IMAGE) ranks
the images of a folder by the cosine similarity of their embeddings to the
query's. Photos are turned upright by their EXIF orientation first."""

EPILOG = """\
output:  classification: per image, its labels from most to least probable.
         With --json, one array: [{"image": PATH, "scores": {LABEL:
         PROBABILITY, ...}}, ...], labels as given (without the template), most
         probable first. Over all labels the probabilities sum to 1; --top-k
         shows the best K only (still a softmax over all labels), so those sum
         to at most 1.
         search: a line per image, "COSINE  PATH", most similar first; --top-k
         the best K images. With --json: [{"image": PATH, "score": COSINE}, ...].
labels:  positional LABELs first, then those of --labels-file; a repeated
         label counts once, in its first place. One label on a folder gives
         every image 100%: to rank images by one text, use --search.
search:  --search ranks by a text (in a --template if one is given); --like
         by an image, which is itself left out of the ranking (a copy of it is
         not). Image embeddings are kept in an SQLite index (--index, default
         $XDG_CACHE_HOME/altclip/index.sqlite, i.e. ~/.cache/altclip/...) and
         reused only for the same model (its config.json, weight files' names,
         sizes and modification times) and dtype, and the same file (path,
         size, modification time): a changed file is embedded again, a new one
         is added, a deleted one is dropped. They are committed batch by batch,
         so an interrupted search keeps what it finished. A file that is not
         an SQLite database, or is another program's, is refused (exit 1).
folder:  every .jpg .jpeg .png .gif .bmp .tif .tiff .webp file in it (any
         case), in name order; -r/--recursive descends into subfolders. A
         progress bar shows on a terminal. An unreadable file is named on
         stderr and skipped; all the others are answered.
exit status: 0 all answered; 1 an image could not be read, or the model or the
         index could not be used; 2 bad usage; 130 interrupted (Ctrl-C).
examples:
  python altclip.py examples/cat.jpg "a cat" "a dog" "a cup of coffee"
  python altclip.py photos/ cat dog bird --template "a photo of a {}" --top-k 1
  python altclip.py photos/ --labels-file labels.txt --json > scores.json
  python altclip.py photos/ -r --search "一只猫在沙发上" --top-k 5
  python altclip.py photos/ --like photos/cat.jpg --top-k 3"""


class Failure(Exception):
    """Something the user must be told in one line (`altclip.py: error: …`), ending the run with status 1."""


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="altclip.py", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE_OR_FOLDER", help="an image file, or a folder of them")
    p.add_argument("labels", metavar="LABEL", nargs="*", help="the candidate labels (classification)")
    query = p.add_mutually_exclusive_group()
    query.add_argument("--search", metavar="QUERY", help="rank the images by cosine similarity to this text "
                                                         "instead of classifying them")
    query.add_argument("--like", metavar="IMAGE", help="rank the images by cosine similarity to this image")
    p.add_argument("-r", "--recursive", action="store_true", help="take the images of subfolders too")
    p.add_argument("--index", metavar="FILE", help="the embedding index of --search/--like (default: "
                                                   "$XDG_CACHE_HOME/altclip/index.sqlite or ~/.cache/altclip/...)")
    p.add_argument("--model", default="BAAI/AltCLIP",
                   help="checkpoint folder, or Hugging Face hub repo id, downloaded once into the hub cache "
                        "(default: %(default)s)")
    p.add_argument("--template", help='a prompt to put every label (or the --search query) in, at "{}", e.g. '
                                      '"a photo of {}" (default: the label alone)')
    p.add_argument("--labels-file", metavar="FILE", help="more labels, one per line; blank lines are ignored")
    p.add_argument("--top-k", type=positive_int, metavar="K", help="show only the K most probable labels per image, "
                                                                   "or the K best images of a search (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON (see below)")
    p.add_argument("--device", default="cpu", help="where to run: cpu, cuda, cuda:1, mps, … (default: %(default)s)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights and activations; int8 (CPU): the linear layers in int8, calibrated at load (a few "
                        "seconds), the rest float32: several times faster for folders on CPUs with VNNI, embeddings "
                        "within ~0.999 cosine of float32 (bench/README.md) (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("--kernels", choices=KERNELS, default="auto",
                   help="Triton attention/LayerNorm kernels: auto uses them on a CUDA device with Triton installed, "
                        "on insists (an error says why they cannot run), off never (default: %(default)s)")
    p.add_argument("--onednn", choices=("auto", "on", "off"), default="auto",
                   help="pack the linear layers for oneDNN on CPU (float32/bfloat16): ~1.3x faster per image on "
                        "AVX-512 CPUs, slower on AVX2-only ones, a few seconds more to load; auto packs for "
                        f"{ONEDNN_MIN_IMAGES} or more images to embed where packing was measured faster for this CPU "
                        "class and dtype (-v says which path ran and why) (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr which model, dtype, device and compute path ran, how long it took, and for a "
                        "search how many images came from the index")
    args = p.parse_intermixed_args(argv)  # labels may come before or after the options

    args.searching = args.search is not None or args.like is not None
    if args.template is not None and "{}" not in args.template:
        p.error(f"--template {args.template!r} has no {{}} to put the label in (e.g. 'a photo of {{}}')")
    if args.searching:
        option = "--search" if args.search is not None else "--like"
        if args.labels or args.labels_file:
            p.error(f"{option} ranks images by one query and takes no labels: drop "
                    f"{shlex.quote(args.labels[0]) if args.labels else '--labels-file'}, or {option} to classify")
        if args.search is not None and not args.search.strip():
            p.error("--search: the query is empty")
    else:
        if args.index is not None:
            p.error("--index is the embedding index of --search and --like; classification does not use it")
        args.labels = read_labels(p, args)
    try:
        torch.empty(0, device=args.device)  # an unknown or unusable device fails now, not after loading the model
    except (RuntimeError, AssertionError) as e:
        p.error(f"--device {args.device}: {str(e).splitlines()[0]}")
    return args


def read_labels(p: argparse.ArgumentParser, args) -> list[str]:
    labels = list(args.labels)
    if args.labels_file:
        try:
            with open(args.labels_file, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not a label
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            p.error(f"cannot read --labels-file '{args.labels_file}': {getattr(e, 'strerror', None) or e}")
        labels += [line.strip() for line in text.splitlines() if line.strip()]
    labels = list(dict.fromkeys(labels))  # duplicates dropped, order kept: a label's probability is not split
    if not labels:
        p.error("no labels: give them after the image, or one per line in a file with --labels-file "
                "(or rank the images by a text with --search QUERY)")
    return labels


# -----------------------------------------------------------------------------
# Shared by classification and search: the images, the model, and embedding images batch by batch.


def find_images(path: str, recursive: bool = False, unreadable: list | None = None) -> list[str]:
    """The image files of a folder (and its subfolders if `recursive`) in name order, or [path] for anything else (a
    file, or a path that is missing). The errors of subfolders that cannot be read are appended to `unreadable`."""
    if not os.path.isdir(path):
        return [path]
    if not recursive:
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        return [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
    found = []
    # Symlinked folders are not followed (no loops); os.walk reports a folder it cannot list to `onerror`.
    for top, _, files in os.walk(path, onerror=(unreadable if unreadable is not None else []).append):
        found += [os.path.join(top, n) for n in files if n.lower().endswith(IMAGE_EXTENSIONS)]
    # Name order, folder by folder (a/z.jpg before b.jpg), as the paths sort component by component.
    return sorted((p for p in found if os.path.isfile(p)), key=lambda p: os.path.relpath(p, path).split(os.sep))


def list_images(args) -> tuple[list[str], int]:
    """(the images to answer, how many subfolders could not be read); those are named on stderr."""
    entries = []
    if os.path.isdir(args.image):
        try:
            entries = os.listdir(args.image)
        except OSError as e:
            raise Failure(f"cannot read folder '{args.image}': {e.strerror}") from None
    unreadable = []
    paths = find_images(args.image, args.recursive, unreadable)
    for e in unreadable:
        print(f"altclip.py: error: cannot read folder '{e.filename}': {e.strerror}", file=sys.stderr)
    if not paths:
        subfolders = any(os.path.isdir(os.path.join(args.image, n)) for n in entries)
        raise Failure(f"folder '{args.image}' holds no image files ({' '.join(IMAGE_EXTENSIONS)})"
                      + ("; -r takes those of its subfolders too" if subfolders and not args.recursive else ""))
    if not os.path.isdir(args.image):
        check_image(args.image)  # a single image is checked before the (slow) model load
    return paths, len(unreadable)


def check_image(path: str):
    try:
        load_image(path)
    except ImageError as e:
        raise Failure(str(e)) from None


def choose_onednn(mode: str, n_images: int, device: str, dtype: torch.dtype) -> tuple[bool, str]:
    """--onednn auto|on|off → (pack the linears?, why, for -v). auto packs only for ONEDNN_MIN_IMAGES or more images
    to embed on a CPU class where packing was measured faster for this dtype (altclip_kernels/onednn.faster_here); "on" lets
    load_pretrained raise if it cannot be done here."""
    if mode != "auto":
        return mode == "on", ""
    if torch.device(device).type != "cpu" or n_images < ONEDNN_MIN_IMAGES or dtype == "int8":
        return False, ""
    from altclip_kernels import onednn
    return onednn.faster_here(dtype)


def load_model(args, n_images: int):
    """(model, tokenizer), with warnings shown as one line each and, with -v, what ran where."""
    # Imported here: neither is needed for --help or a usage error.
    from load_weights import CheckpointError, load_pretrained
    from tokenizer import Tokenizer
    t0 = time.perf_counter()
    onednn, why_onednn = choose_onednn(args.onednn, n_images, args.device, DTYPES[args.dtype])
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown below as one line each, not as tracebacks
            warnings.simplefilter("always")
            model = load_pretrained(args.model, dtype=DTYPES[args.dtype], device=args.device,
                                    kernels=KERNELS[args.kernels], onednn=onednn)
        tokenizer = Tokenizer.from_pretrained(args.model)
    except (OSError, CheckpointError) as e:
        raise Failure(f"model '{args.model}': {e}") from None
    except RuntimeError as e:  # --kernels on or --onednn on where they cannot run: name the flag, not the argument
        raise Failure(str(e).replace("kernels=True", "--kernels on").replace("onednn=True", "--onednn on")
                      .replace("dtype='int8'", "--dtype int8")) from None
    for w in caught:
        warn(w.message)
    if args.verbose:
        where = args.device
        if torch.device(args.device).type == "cpu":
            from altclip_kernels import cpu
            where = f"cpu ({cpu.describe()})"
        say(f"{args.model} loaded in {time.perf_counter() - t0:.1f} s: {args.dtype} on {where}, "
            f"compute path: {getattr(model, 'int8', None) or model.path}" + (f" ({why_onednn})" if why_onednn else ""))
    return model, tokenizer


def embed_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """(len(texts), P) L2-normalised text embeddings, embedded as one batch."""
    with torch.inference_mode():
        tokens = tokenizer(texts)
        text = model.get_text_features(tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device))
        return F.normalize(text, dim=-1)


def embed_images(model, paths: list[str], batch_size: int, progress: bool):
    """Yield (paths, (n, P) float32 features, not normalised) per batch of `batch_size` files; an unreadable file is
    named on stderr and left out of its batch, and its path is yielded in the third place (failed)."""
    bar = tqdm(total=len(paths), unit="image", file=sys.stderr, disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch, pixels, failed = [], [], []
        for path in paths[start:start + batch_size]:
            try:
                pixels.append(preprocess(path, model.config.vision.image_size))
                batch.append(path)
            except ImageError as e:
                failed.append(path)
                tqdm.write(f"altclip.py: error: {e}", file=sys.stderr)
            except ValueError as e:  # an image Pillow can read but not convert to RGB
                failed.append(path)
                tqdm.write(f"altclip.py: error: cannot use image '{path}': {e}", file=sys.stderr)
        features = None
        if batch:
            with torch.inference_mode():
                features = model.get_image_features(torch.cat(pixels).to(model.device)).cpu()
        yield batch, features, failed
        bar.update(len(paths[start:start + batch_size]))
    bar.close()


def say(message: str):
    print(f"altclip.py: {message}", file=sys.stderr)


def warn(message):
    print(f"altclip.py: warning: {message}", file=sys.stderr)


def error(message: str) -> int:
    print(f"altclip.py: error: {message}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    """Run the command line; return the exit status (0 all answered, 1 an error or an unreadable image, 130
    interrupted)."""
    args = parse_args(argv)
    try:
        return search(args) if args.searching else classify(args)
    except Failure as e:
        return error(str(e))
    except KeyboardInterrupt:  # Ctrl-C: a search keeps the embeddings of the batches it finished (see rank)
        print("altclip.py: interrupted", file=sys.stderr)
        return 130


# -----------------------------------------------------------------------------
# Classification: `python altclip.py IMAGE_OR_FOLDER LABEL [LABEL ...]`.


def format_scores(image: str, scores: dict[str, float]) -> str:
    """An image's ranking, readable at a glance: percentage, a bar of up to ten blocks, label."""
    lines = [f"  {100 * p:5.1f}%  {'█' * round(10 * p):<10}  {label}" for label, p in scores.items()]
    return "\n".join([image] + lines)


def classify(args) -> int:
    paths, failed = list_images(args)
    folder = os.path.isdir(args.image)
    if folder and len(args.labels) == 1:  # a softmax over one label is 1 whatever the image
        warn(f"with one label every image gets 100%; to rank the images by how well they match it, use "
             f"--search {shlex.quote(args.labels[0])}")
    t0 = time.perf_counter()
    model, tokenizer = load_model(args, len(paths))

    # The labels are embedded once, as one batch; each image is then scored against all of them.
    text = embed_texts(model, tokenizer,
                       [args.template.replace("{}", label) if args.template else label for label in args.labels])
    with torch.inference_mode():
        scale = model.logit_scale.float().exp().cpu()
    results = []
    for batch, features, bad in embed_images(model, paths, args.batch_size, folder and sys.stderr.isatty()):
        failed += len(bad)
        if not batch:
            continue
        with torch.inference_mode():
            probs = (scale * F.normalize(features, dim=-1) @ text.cpu().t()).softmax(dim=-1)  # (images, labels)
        for path, p in zip(batch, probs):
            order = p.argsort(descending=True, stable=True)[:args.top_k]  # top_k None: all labels
            scores = {args.labels[i]: p[i].item() for i in order}
            results.append({"image": path, "scores": scores})
            if not args.json:  # printed as they come, so a long folder shows results early
                tqdm.write(("\n" if len(results) > 1 else "") + format_scores(path, scores), file=sys.stdout)
    if args.verbose:
        say(f"{len(results)} image(s) scored against {len(args.labels)} label(s) in "
            f"{time.perf_counter() - t0:.1f} s")
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    return 1 if failed else 0


# -----------------------------------------------------------------------------
# Search: `python altclip.py FOLDER --search QUERY` or `--like IMAGE`, through the embedding index.


def open_index(args, folder, weights):
    path = args.index or index.default_path()
    try:
        db = index.EmbeddingIndex(path, index.model_key(folder, weights, args.dtype))
    except index.IndexFileError as e:
        raise Failure(str(e)) from None
    except OSError as e:  # the checkpoint's files, read for the model key
        raise Failure(f"model '{args.model}': {e}") from None
    if db.rebuilt_from is not None:
        warn(f"index '{path}' was written by another version of altclip.py (schema {db.rebuilt_from}, this one "
             f"reads {index.SCHEMA_VERSION}): rebuilt, every image is embedded again")
    return db


def search(args) -> int:
    from load_weights import CheckpointError, load_config, resolve
    paths, failed = list_images(args)
    if args.like is not None:
        check_image(args.like)
    t0 = time.perf_counter()
    try:  # the checkpoint's files name the model in the index; nothing is loaded yet
        model_folder, weights = resolve(args.model)
        dim = load_config(model_folder).projection_dim
    except (OSError, CheckpointError) as e:
        raise Failure(f"model '{args.model}': {e}") from None
    db = open_index(args, model_folder, weights)
    try:
        return rank(args, db, paths, failed, dim, t0)
    except index.IndexFileError as e:
        raise Failure(str(e)) from None
    finally:
        db.close()


def rank(args, db, paths: list[str], failed: int, dim: int, t0: float) -> int:
    """Embed what the index lacks, rank, print; return the exit status."""
    # Every file is known to the index by its absolute path; the query image of --like is embedded like the others.
    where = {p: os.path.abspath(p) for p in paths}
    like = os.path.abspath(args.like) if args.like is not None else None
    wanted = list(dict.fromkeys(list(where.values()) + ([like] if like else [])))
    signatures = {p: index.file_signature(p) for p in wanted}
    vectors = db.lookup(signatures, dim)
    todo = [p for p in wanted if p not in vectors]

    model, tokenizer = load_model(args, len(todo))
    progress = sys.stderr.isatty() and len(todo) > 1
    embedded = 0
    for batch, features, bad in embed_images(model, todo, args.batch_size, progress):
        failed += len(bad)
        embedded += len(batch)
        if batch:  # committed now: a search stopped half-way keeps what it has done
            db.add([(p, signatures[p], f.numpy()) for p, f in zip(batch, features) if signatures[p] is not None])
            vectors.update(zip(batch, features.numpy()))
    if os.path.isdir(args.image):
        db.forget_missing(os.path.abspath(args.image), args.recursive, set(where.values()))

    if args.search is not None:
        query = embed_texts(model, tokenizer, [args.template.replace("{}", args.search) if args.template
                                               else args.search])[0].cpu()
    elif like in vectors:
        query = F.normalize(torch.from_numpy(np.array(vectors[like])), dim=-1)
    else:
        return 1  # the query image could not be read after all; embed_images named it
    ranked = [(p, where[p]) for p in paths if where[p] in vectors and not same_file(where[p], like)]
    results = []
    if ranked:
        images = F.normalize(torch.from_numpy(np.stack([vectors[a] for _, a in ranked])), dim=-1)  # (images, P)
        scores = (images @ query).tolist()  # cosine similarities
        order = sorted(range(len(ranked)), key=lambda i: -scores[i])[:args.top_k]  # stable: ties in name order
        results = [{"image": ranked[i][0], "score": scores[i]} for i in order]
    if args.verbose:
        say(f"{len(wanted) - len(todo)} image(s) from the index, {embedded} embedded, {len(ranked)} ranked in "
            f"{time.perf_counter() - t0:.1f} s (index: {db.path})")
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        print("\n".join(f"{r['score']:7.4f}  {r['image']}" for r in results), end="\n" if results else "")
    return 1 if failed else 0


def same_file(path: str, other: str | None) -> bool:
    if other is None:
        return False
    try:
        return path == other or os.path.samefile(path, other)
    except OSError:
        return False
