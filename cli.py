"""
The command line: zero-shot classification and search of images with AltCLIP, in any of ~100 languages.

    python altclip.py examples/cat.jpg "a cat" "a dog" "一只猫"     which label fits each image best
    python altclip.py photos/ --search "eine Katze auf dem Sofa"      which images fit a text best
    python altclip.py photos/ --like photos/cat.jpg                   which images look most like this one
    python altclip.py photos/ -r --update                             embed what is new into the index (cron)

`python altclip.py` hands over to main() here; altclip.py is the model and its preprocessing, load_weights.py and
tokenizer.py read a checkpoint, and index.py keeps the image embeddings a search computes, so that the next search of
the same folder embeds only the files that are new or changed.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import itertools
import json
import math
import os
import re
import shlex
import sys
import time
import warnings
from collections import deque
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import index
from altclip import ImageError, load_image, preprocess

HEIF_EXTENSIONS = (".heic", ".heif")  # phones' photos; read through the optional pillow-heif
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp") + HEIF_EXTENSIONS
HEIF_HINT = "HEIC/HEIF photos need pillow-heif: pip install pillow-heif"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "int8": "int8"}  # int8: the blocks' linears in int8 on the CPU, the rest float32 (altclip_kernels/int8.py)
KERNELS = {"auto": None, "on": True, "off": False}
ONEDNN_MIN_IMAGES = 16  # packing costs seconds at load and saves a fraction of a second per image: pays for a folder
# Images are decoded and preprocessed in threads ahead of the model: Pillow releases the GIL while it decodes and
# resizes, so the threads overlap with the model's forward passes. At most `batch size × DECODE_AHEAD` images wait
# decoded, so memory stays flat however large the folder.
DECODE_WORKERS = max(1, min(8, os.cpu_count() or 1))
DECODE_AHEAD = 2

DESCRIPTION = """\
Zero-shot image classification and image search with AltCLIP, in any of ~100
languages. Classification ranks the LABELs by how well they describe each image:
the probabilities are the softmax over the labels of exp(logit_scale) *
cosine(image, text), as in CLIP. Search (--search TEXT, --like IMAGE, --not
TEXT) ranks the images of a folder by the cosine similarity of their embeddings
to the query's. Photos are turned upright by their EXIF orientation first."""

EPILOG = """\
output:  classification: per image, its labels from most to least probable.
         With --json, one array: [{"image": PATH, "scores": {LABEL:
         PROBABILITY, ...}}, ...], labels as given (without the template), most
         probable first. Over all labels the probabilities sum to 1; --top-k
         shows the best K only (still a softmax over all labels), so those sum
         to at most 1.
         search: a line per image, "COSINE  PATH", most similar first; --top-k
         the best K images. With --json: [{"image": PATH, "score": COSINE}, ...];
         with --paths: the paths alone, one per line (for xargs, fzf, scripts).
labels:  positional LABELs first, then those of --labels-file; a repeated
         label counts once, in its first place. One label on a folder gives
         every image 100%: to rank images by one text, use --search.
search:  --search TEXT (in the --template if one is given) and --like IMAGE may
         each be repeated and mixed; --not TEXT (repeatable) subtracts. Any of
         them may start with a weight W: (a number): "2:a golden retriever".
         A text that merely holds a colon stays a text ("note: a cat"); one
         that starts with a number and a colon is read as weighted, so give
         such a text its own weight: "1:12:30 at the station". The query is
         the sum of each term's weight times its unit-length embedding, the
         --not terms subtracted; images are ranked by cosine similarity to it.
         The --like images are left out of the ranking (a copy is not).
index:   Image embeddings are kept in an SQLite index (--index, default
         $XDG_CACHE_HOME/altclip/index.sqlite, i.e. ~/.cache/altclip/...) and
         reused only for the same model (its config.json, weight files' names,
         sizes and modification times) and dtype, and the same file (path,
         size, modification time): a changed file is embedded again, a new one
         is added, a deleted one is dropped. They are committed batch by batch,
         so an interrupted search keeps what it finished, and several searches
         and updates may share one index. A file that is not an SQLite
         database, or is another program's, is refused (exit 1).
update:  FOLDER --update [-r] embeds what is new or changed into the index,
         forgets deleted files, ranks nothing and prints one line: "FOLDER: N
         embedded, N unchanged, N removed, N unreadable". For cron, e.g.
         0 3 * * * python altclip.py ~/Pictures -r --update
folder:  every .jpg .jpeg .png .gif .bmp .tif .tiff .webp .heic .heif file in
         it (any case), in name order; -r/--recursive descends into
         subfolders. Names starting with "." (hidden files and folders) are
         skipped unless --hidden. --exclude PATTERN (repeatable; shell-style,
         matched against the path relative to FOLDER, "*" also matching "/")
         drops matching files, and a matching folder is not entered. HEIC/HEIF
         photos need pillow-heif (pip install pillow-heif). A progress bar shows
         on a terminal. An unreadable file is named on stderr and skipped; all
         the others are answered.
device:  --device auto (the default) runs on a CUDA GPU if torch sees one, else
         on Apple's MPS, else on the CPU; -v says which ran.
exit status: 0 all answered; 1 an image could not be read, or the model or the
         index could not be used; 2 bad usage; 130 interrupted (Ctrl-C).
examples:
  python altclip.py examples/cat.jpg "a cat" "a dog" "a cup of coffee"
  python altclip.py photos/ cat dog bird --template "a photo of a {}" --top-k 1
  python altclip.py photos/ --labels-file labels.txt --json > scores.json
  python altclip.py photos/ -r --search "一只猫在沙发上" --top-k 5
  python altclip.py photos/ --like photos/cat.jpg --top-k 3
  python altclip.py photos/ -r --search "2:a dog on a beach" --like dog.jpg --not "a cat"
  python altclip.py photos/ -r --search "a red car" --top-k 20 --paths | xargs feh
  python altclip.py photos/ -r --exclude "*/thumbnails" --update"""


class Failure(Exception):
    """Something the user must be told in one line (`altclip.py: error: …`), ending the run with status 1."""


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


# -----------------------------------------------------------------------------
# The query terms of a search: --search TEXT, --like IMAGE, --not TEXT, each maybe weighted "W:".

TERM_KINDS = {"--search": "text", "--like": "image", "--not": "not"}
NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
WEIGHTED = re.compile(rf"({NUMBER}):(.*)", re.DOTALL)
# What starts like a number and runs, without a space, into a colon was meant as a weight: "1,5:", "2x:", "1.2.3:".
WEIGHT_LIKE = re.compile(r"([+-]?\.?\d\S*?):(.*)", re.DOTALL)


@dataclass(frozen=True)
class Term:
    kind: str  # "text" (--search), "image" (--like) or "not" (--not, a text subtracted)
    weight: float
    value: str  # the text, or the image's path
    given: str  # as given on the command line, for messages: "--search '2:a cat'"


class AddTerm(argparse.Action):
    """--search, --like and --not each add (option, value) to args.terms, in command-line order."""

    def __call__(self, parser, namespace, value, option_string=None):
        namespace.terms = [*(getattr(namespace, "terms", None) or []), (option_string, value)]


def parse_term(option: str, value: str) -> Term:
    """(option, "W:TEXT" or "TEXT") → Term; a ValueError's message says what is wrong with the value."""
    given = f"{option} {shlex.quote(value)}"
    weight, text = 1.0, value
    if m := WEIGHTED.fullmatch(value):
        weight, text = float(m[1]), m[2]
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{given}: the weight must be a positive number"
                             + (" (to subtract a text, use --not)" if option != "--not" else ""))
        if not text.strip():
            raise ValueError(f"{given}: nothing after the weight {m[1]}:")
    elif m := WEIGHT_LIKE.fullmatch(value):
        raise ValueError(f"{given}: {m[1]!r} is not a weight; W:{'IMAGE' if option == '--like' else 'TEXT'} takes "
                         f"a number, as in 2:… or 0.5:… (to take the whole of it as is, weigh it: "
                         f"{shlex.quote('1:' + value)})")
    if not text.strip():
        raise ValueError(f"{option}: the query is empty")
    return Term(TERM_KINDS[option], weight, text, given)


# -----------------------------------------------------------------------------
# The command line's arguments.


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="altclip.py", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE_OR_FOLDER", help="an image file, or a folder of them")
    p.add_argument("labels", metavar="LABEL", nargs="*", help="the candidate labels (classification)")
    p.add_argument("--search", metavar="[W:]TEXT", action=AddTerm, dest="terms",
                   help="rank the images by cosine similarity to this text instead of classifying them (repeatable)")
    p.add_argument("--like", metavar="[W:]IMAGE", action=AddTerm, dest="terms",
                   help="rank the images by cosine similarity to this image (repeatable)")
    p.add_argument("--not", metavar="[W:]TEXT", action=AddTerm, dest="terms",
                   help="subtract this text from the query of --search/--like (repeatable)")
    p.add_argument("--update", action="store_true",
                   help="embed the folder's new and changed images into the index, forget deleted ones, rank nothing")
    p.add_argument("-r", "--recursive", action="store_true", help="take the images of subfolders too")
    p.add_argument("--hidden", action="store_true", help='take files and folders whose names start with "." too')
    p.add_argument("--exclude", metavar="PATTERN", action="append", default=[],
                   help="leave out files and folders whose path relative to the folder matches this shell pattern "
                        "(repeatable), e.g. '*.png' or '*/thumbnails'")
    p.add_argument("--index", metavar="FILE", help="the embedding index of --search/--like/--update (default: "
                                                   "$XDG_CACHE_HOME/altclip/index.sqlite or ~/.cache/altclip/...)")
    p.add_argument("--model", default="BAAI/AltCLIP",
                   help="checkpoint folder, or Hugging Face hub repo id, downloaded once into the hub cache "
                        "(default: %(default)s)")
    p.add_argument("--template", help='a prompt to put every label (or --search/--not text) in, at "{}", e.g. '
                                      '"a photo of {}" (default: the label alone)')
    p.add_argument("--labels-file", metavar="FILE", help="more labels, one per line; blank lines are ignored")
    p.add_argument("--top-k", type=positive_int, metavar="K", help="show only the K most probable labels per image, "
                                                                   "or the K best images of a search (default: all)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON (see below)")
    output.add_argument("--paths", action="store_true", help="print only the paths of a search, best first")
    p.add_argument("--device", default="auto",
                   help="where to run: auto, cpu, cuda, cuda:1, mps, … (default: %(default)s: CUDA, else MPS, else "
                        "the CPU)")
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
                   help="pack the linear layers for oneDNN on CPU (float32/bfloat16): faster per image on "
                        "AVX-512 CPUs, slower on AVX2-only ones, a few seconds more to load; auto packs for "
                        f"{ONEDNN_MIN_IMAGES} or more images to embed where packing was measured faster for this CPU "
                        "class and dtype (-v says which path ran and why) (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr which model, dtype, device and compute path ran, how long it took, and for a "
                        "search how many images came from the index")
    p.set_defaults(terms=[])
    args = p.parse_intermixed_args(argv)  # labels may come before or after the options

    if args.template is not None and "{}" not in args.template:
        p.error(f"--template {args.template!r} has no {{}} to put the label in (e.g. 'a photo of {{}}')")
    try:
        args.terms = [parse_term(option, value) for option, value in args.terms]
    except ValueError as e:
        p.error(str(e))
    args.searching = bool(args.terms)
    args.mode = "update" if args.update else "search" if args.searching else "classify"
    check_mode(p, args)
    args.device, args.device_why = choose_device(p, args.device, args.dtype)
    return args


def check_mode(p: argparse.ArgumentParser, args):
    """The options that make no sense in the mode asked for are usage errors; classification's labels are read."""
    if args.mode == "update":
        asked = [o for o, on in (("--search/--like/--not", args.terms), ("a LABEL", args.labels),
                                 ("--labels-file", args.labels_file), ("--template", args.template),
                                 ("--top-k", args.top_k), ("--json", args.json), ("--paths", args.paths)) if on]
        if asked:
            p.error(f"--update embeds the folder's images into the index and ranks nothing: drop {asked[0]}")
        if not os.path.isdir(args.image):
            p.error(f"--update takes a folder; '{args.image}' is not one")
    elif args.mode == "search":
        option = next(t.given.split()[0] for t in args.terms)
        if args.labels or args.labels_file:
            p.error(f"{option} ranks images by one query and takes no labels: drop "
                    f"{shlex.quote(args.labels[0]) if args.labels else '--labels-file'}, or {option} to classify")
        if all(t.kind == "not" for t in args.terms):
            p.error("--not subtracts from a query: give --search TEXT or --like IMAGE too")
    else:
        if args.index is not None:
            p.error("--index is the embedding index of --search, --like and --update; classification does not use it")
        if args.paths:
            p.error("--paths prints the images a search ranks; classification prints labels (try --json)")
        args.labels = read_labels(p, args)


def choose_device(p: argparse.ArgumentParser, device: str, dtype: str = "float32") -> tuple[str, str]:
    """--device → (the device to run on, why, for -v); an unknown or unusable device is a usage error now, not after
    loading the model. int8 runs on the CPU only, so --device auto takes the CPU for it."""
    if device == "auto" and dtype == "int8":
        device, why = "cpu", "--device auto: int8 runs on the CPU"
    else:
        device, why = auto_device() if device == "auto" else (device, "")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        p.error(f"--device {device}: {str(e).splitlines()[0]}")
    return device, why


def auto_device() -> tuple[str, str]:
    """--device auto: CUDA if torch sees a GPU, else Apple's MPS, else the CPU; and why, for -v."""
    if torch.cuda.is_available():
        return "cuda", "--device auto: torch sees a CUDA GPU"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps", "--device auto: torch sees Apple's MPS"
    return "cpu", "--device auto: torch sees no CUDA or MPS device"


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
# The images of a folder: hidden names and --exclude patterns left out.


@dataclass
class Listing:
    """What find_images saw: the subfolders it could not read (OSErrors), and how many image files and folders it
    left out for a hidden name or an --exclude pattern."""
    unreadable: list = field(default_factory=list)
    hidden: int = 0
    excluded: int = 0


def find_images(path: str, recursive: bool = False, listing: Listing | None = None, hidden: bool = False,
                exclude: tuple[str, ...] = ()) -> list[str]:
    """The image files of a folder (and its subfolders if `recursive`) in name order, or [path] for anything else (a
    file, or a path that is missing). Names starting with "." are left out unless `hidden`; so is a file or folder
    whose path relative to `path` ("/"-separated) matches an `exclude` pattern, and such a folder is not entered.
    What was left out, and the errors of subfolders that cannot be read, go to `listing`."""
    if not os.path.isdir(path):
        return [path]
    listing = listing if listing is not None else Listing()

    def keep(rel: str) -> bool:
        if not hidden and rel.rsplit("/", 1)[-1].startswith("."):
            listing.hidden += 1
            return False
        if any(fnmatch.fnmatch(rel, pattern) for pattern in exclude):
            listing.excluded += 1
            return False
        return True

    def images(top: str, names) -> list[str]:
        rel = os.path.relpath(top, path).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        return [os.path.join(top, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and keep(prefix + n)
                and os.path.isfile(os.path.join(top, n))]

    if not recursive:
        return images(path, sorted(os.listdir(path)))
    found = []
    # Symlinked folders are not followed (no loops); os.walk reports a folder it cannot list to `onerror`.
    for top, folders, files in os.walk(path, onerror=listing.unreadable.append):
        rel = os.path.relpath(top, path).replace(os.sep, "/")
        folders[:] = [f for f in folders if keep(f if rel == "." else f"{rel}/{f}")]  # the others are not entered
        found += images(top, files)
    # Name order, folder by folder (a/z.jpg before b.jpg), as the paths sort component by component.
    return sorted(found, key=lambda p: os.path.relpath(p, path).split(os.sep))


def list_images(args) -> tuple[list[str], int]:
    """(the images to answer, how many subfolders could not be read); those are named on stderr. A folder with no
    image files is a Failure."""
    entries = []
    if os.path.isdir(args.image):
        try:
            entries = os.listdir(args.image)
        except OSError as e:
            raise Failure(f"cannot read folder '{args.image}': {e.strerror}") from None
    listing = Listing()
    paths = find_images(args.image, args.recursive, listing, args.hidden, tuple(args.exclude))
    for e in listing.unreadable:
        print(f"altclip.py: error: cannot read folder '{e.filename}': {e.strerror}", file=sys.stderr)
    if not paths:
        subfolders = any(os.path.isdir(os.path.join(args.image, n)) for n in entries)
        why = ""
        if listing.excluded:
            why = (f"; --exclude {' '.join(shlex.quote(x) for x in args.exclude)} left out {listing.excluded} "
                   f"file(s) and folder(s) of it")
        elif listing.hidden:
            why = f"; {listing.hidden} hidden file(s) and folder(s) (names starting with \".\"), which --hidden takes"
        elif subfolders and not args.recursive:
            why = "; -r takes those of its subfolders too"
        raise Failure(f"folder '{args.image}' holds no image files ({' '.join(IMAGE_EXTENSIONS)}){why}")
    if not os.path.isdir(args.image):
        check_image(args.image)  # a single image is checked before the (slow) model load
    return paths, len(listing.unreadable)


# -----------------------------------------------------------------------------
# Decoding: HEIC through the optional pillow-heif, and images preprocessed in threads ahead of the model.


def is_heif(path: str) -> bool:
    return str(path).lower().endswith(HEIF_EXTENSIONS)


@functools.cache
def heif_ready() -> bool:
    """Whether Pillow can open HEIC/HEIF files: pillow-heif is installed, and is now registered with Pillow."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def decode(path: str, size: int) -> torch.Tensor:
    """An image file → its (1, 3, size, size) pixel values, exactly as altclip.preprocess makes them. Raises ImageError
    with a one-line message naming the file."""
    if is_heif(path) and not heif_ready():
        raise ImageError(f"cannot open image '{path}': {HEIF_HINT}")
    try:
        return preprocess(path, size)
    except ValueError as e:  # an image Pillow can read but not convert to RGB
        raise ImageError(f"cannot use image '{path}': {e}") from None


def check_image(path: str):
    """A Failure naming the file if it cannot be opened (before the slow model load)."""
    if is_heif(path) and not heif_ready():
        raise Failure(f"cannot open image '{path}': {HEIF_HINT}")
    try:
        load_image(path)
    except ImageError as e:
        raise Failure(str(e)) from None


def decode_ahead(paths: list[str], size: int, workers: int = DECODE_WORKERS, ahead: int = 16, decoder=decode):
    """Yield (path, pixel values or None, error message or None) for each path, in order, while `workers` threads
    decode the next ones. At most `ahead` images are decoded or decoding beyond the one the caller holds: a slow
    model never lets them pile up."""
    def attempt(path):
        try:
            return decoder(path, size), None
        except ImageError as e:
            return None, str(e)

    todo = iter(paths)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    try:
        pending = deque((path, pool.submit(attempt, path)) for path in itertools.islice(todo, ahead))
        while pending:
            path, future = pending.popleft()
            pixels, message = future.result()
            for later in itertools.islice(todo, 1):  # one out, one in
                pending.append((later, pool.submit(attempt, later)))
            yield path, pixels, message
    finally:  # also when the caller stops early (Ctrl-C): the queued decodes are dropped, not run
        pool.shutdown(wait=False, cancel_futures=True)


# -----------------------------------------------------------------------------
# Shared by classification and search: the model, and embedding images batch by batch.


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


def loaded(args, load):
    """(load(), the tokenizer of --model), with warnings shown as one line each and load errors as one Failure."""
    # Imported here: neither is needed for --help or a usage error.
    from load_weights import CheckpointError
    from tokenizer import Tokenizer
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown below as one line each, not as tracebacks
            warnings.simplefilter("always")
            model = load()
        tokenizer = Tokenizer.from_pretrained(args.model)
    except (OSError, CheckpointError) as e:
        raise Failure(f"model '{args.model}': {e}") from None
    except RuntimeError as e:  # --kernels on or --onednn on where they cannot run: name the flag, not the argument
        raise Failure(str(e).replace("kernels=True", "--kernels on").replace("onednn=True", "--onednn on")
                      .replace("dtype='int8'", "--dtype int8")) from None
    for w in caught:
        warn(w.message)
    return model, tokenizer


def load_model(args, n_images: int):
    """(model, tokenizer), with warnings shown as one line each and, with -v, what ran where."""
    from load_weights import load_pretrained
    t0 = time.perf_counter()
    onednn, why_onednn = choose_onednn(args.onednn, n_images, args.device, DTYPES[args.dtype])
    model, tokenizer = loaded(args, lambda: load_pretrained(args.model, dtype=DTYPES[args.dtype], device=args.device,
                                                            kernels=KERNELS[args.kernels], onednn=onednn))
    if args.verbose:
        where = args.device
        if torch.device(args.device).type == "cpu":
            from altclip_kernels import cpu
            where = f"cpu ({cpu.describe()})"
        why = "; ".join(w for w in (args.device_why, why_onednn) if w)
        say(f"{args.model} loaded in {time.perf_counter() - t0:.1f} s: {args.dtype} on {where}, "
            f"compute path: {getattr(model, 'int8', None) or model.path}" + (f" ({why})" if why else ""))
    return model, tokenizer


def load_text_side(args):
    """(model, tokenizer) for the texts of a search with no image to embed: the text tower and text_projection alone,
    read from the full checkpoint (the image tower is never read). --kernels on and --onednn on ask for the whole
    model's paths, so they load it."""
    if args.kernels == "on" or args.onednn == "on" or args.dtype == "int8":  # paths of the whole model's loader
        return load_model(args, 0)
    from altclip import AltCLIPTextModelWithProjection
    t0 = time.perf_counter()
    model, tokenizer = loaded(args, lambda: AltCLIPTextModelWithProjection.from_pretrained(
        args.model, dtype=DTYPES[args.dtype], device=args.device))
    if args.verbose:
        say(f"{args.model}: text tower loaded alone in {time.perf_counter() - t0:.1f} s (every image is indexed): "
            f"{args.dtype} on {args.device}, compute path: {model.path}"
            + (f" ({args.device_why})" if args.device_why else ""))
    return model, tokenizer


def embed_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """(len(texts), P) L2-normalised text embeddings, embedded as one batch."""
    with torch.inference_mode():
        tokens = tokenizer(texts)
        text = model.get_text_features(tokens["input_ids"].to(model.device), tokens["attention_mask"].to(model.device))
        return F.normalize(text, dim=-1)


def embed_images(model, paths: list[str], batch_size: int, progress: bool):
    """Yield (paths, (n, P) float32 features, not normalised) per batch of up to `batch_size` files; an unreadable
    file is named on stderr and left out of its batch, and its path is yielded in the third place (failed). The
    images are decoded in threads ahead of the model (decode_ahead)."""
    bar = tqdm(total=len(paths), unit="image", file=sys.stderr, disable=not progress)
    decoded = decode_ahead(paths, model.config.vision.image_size, ahead=DECODE_AHEAD * batch_size)
    try:
        for start in range(0, len(paths), batch_size):
            batch, pixels, failed = [], [], []
            for path, x, message in (next(decoded) for _ in paths[start:start + batch_size]):
                if x is None:
                    failed.append(path)
                    tqdm.write(f"altclip.py: error: {message}", file=sys.stderr)
                else:
                    batch.append(path)
                    pixels.append(x)
            features = None
            if batch:
                with torch.inference_mode():
                    features = model.get_image_features(torch.cat(pixels).to(model.device)).cpu()
            yield batch, features, failed
            bar.update(len(batch) + len(failed))
    finally:
        decoded.close()
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
        return {"classify": classify, "search": search, "update": update}[args.mode](args)
    except Failure as e:
        return error(str(e))
    except KeyboardInterrupt:  # Ctrl-C: a search keeps the embeddings of the batches it finished (see index_images)
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
# Search and update: `python altclip.py FOLDER --search TEXT …` / `--update`, through the embedding index.


@contextmanager
def opened_index(args):
    """(the index, the model's projection width), for the model --model names by its checkpoint's files (nothing is
    loaded yet); an index error while it is open is a Failure naming the file."""
    from load_weights import CheckpointError, load_config, resolve
    try:
        folder, weights = resolve(args.model)
        dim = load_config(folder).projection_dim
        key = index.model_key(folder, weights, args.dtype)
    except (OSError, CheckpointError) as e:
        raise Failure(f"model '{args.model}': {e}") from None
    path = args.index or index.default_path()
    try:
        db = index.EmbeddingIndex(path, key)
    except index.IndexFileError as e:
        raise Failure(str(e)) from None
    if db.rebuilt_from is not None:
        warn(f"index '{path}' was written by another version of altclip.py (schema {db.rebuilt_from}, this one "
             f"reads {index.SCHEMA_VERSION}): rebuilt, every image is embedded again")
    try:
        yield db, dim
    except index.IndexFileError as e:
        raise Failure(str(e)) from None
    finally:
        db.close()


@dataclass
class Indexed:
    """What index_images did: every readable file's vector, and how it got there."""
    vectors: dict  # absolute path → (P,) float32 image features, not normalised
    stored: int = 0  # taken from the index
    embedded: int = 0  # embedded now, and added to the index
    failed: int = 0  # could not be read (each named on stderr)
    model: tuple | None = None  # (model, tokenizer), if anything had to be embedded


def index_images(args, db, files: list[str], dim: int) -> Indexed:
    """Embed the files (absolute paths) that the index lacks or holds for an older version of the file, committing
    batch by batch (a run stopped half-way keeps what it finished); the model is loaded only if there is any."""
    signatures = {p: index.file_signature(p) for p in files}
    done = Indexed(db.lookup(signatures, dim))
    done.stored = len(done.vectors)
    todo = [p for p in files if p not in done.vectors]
    if not todo:
        return done
    done.model = load_model(args, len(todo))
    progress = sys.stderr.isatty() and len(todo) > 1
    for batch, features, bad in embed_images(done.model[0], todo, args.batch_size, progress):
        done.failed += len(bad)
        done.embedded += len(batch)
        if batch:
            db.add([(p, signatures[p], f.numpy()) for p, f in zip(batch, features) if signatures[p] is not None])
            done.vectors.update(zip(batch, features.numpy()))
    return done


def text_model(args, loaded: tuple | None):
    """(model, tokenizer) to embed the query's texts: the one that embedded the images, or else the text side alone,
    loaded now."""
    return loaded if loaded is not None else load_text_side(args)


def compose_query(args, indexed: Indexed, dim: int) -> torch.Tensor:
    """The query: Σ weight · unit-length embedding over the --search and --like terms, minus the same over the --not
    terms, as a (P,) float32 vector. The texts are embedded as one batch, in the --template if there is one."""
    texts = [t for t in args.terms if t.kind != "image"]
    units = {}
    if texts:
        model, tokenizer = text_model(args, indexed.model)
        prompts = [args.template.replace("{}", t.value) if args.template else t.value for t in texts]
        units = dict(zip(texts, embed_texts(model, tokenizer, prompts).float().cpu()))
    query = torch.zeros(dim)
    for t in args.terms:
        unit = units[t] if t.kind != "image" else \
            F.normalize(torch.from_numpy(np.array(indexed.vectors[os.path.abspath(t.value)])), dim=-1)
        query += (-t.weight if t.kind == "not" else t.weight) * unit
    # Terms that cancel (--search cat --not cat) leave no direction to rank by: cosine to a zero vector is undefined.
    if query.norm() <= 1e-4 * sum(t.weight for t in args.terms):
        raise Failure(f"the query has no direction left: {' '.join(t.given for t in args.terms)} cancel out")
    return query


def search(args) -> int:
    paths, failed = list_images(args)
    likes = [t.value for t in args.terms if t.kind == "image"]
    for path in likes:
        check_image(path)
    t0 = time.perf_counter()
    # Every file is known to the index by its absolute path; the query images of --like are embedded like the others.
    where = {p: os.path.abspath(p) for p in paths}
    likes = [os.path.abspath(p) for p in likes]
    with opened_index(args) as (db, dim):
        indexed = index_images(args, db, list(dict.fromkeys([*where.values(), *likes])), dim)
        failed += indexed.failed
        if os.path.isdir(args.image):
            db.forget_missing(os.path.abspath(args.image), args.recursive, set(where.values()))
        if any(p not in indexed.vectors for p in likes):
            return 1  # a query image could not be read after all; embed_images named it
        query = compose_query(args, indexed, dim)
        results = rank(args, query, [(p, where[p]) for p in paths if where[p] in indexed.vectors
                                     and not any(same_file(where[p], q) for q in likes)], indexed.vectors)
        if args.verbose:
            say(f"{indexed.stored} image(s) from the index, {indexed.embedded} embedded, {len(results)} ranked in "
                f"{time.perf_counter() - t0:.1f} s (index: {db.path})")
    print_results(args, results[:args.top_k])
    return 1 if failed else 0


def rank(args, query: torch.Tensor, images: list[tuple[str, str]], vectors: dict) -> list[dict]:
    """(path as given, absolute path) pairs → [{"image": path, "score": cosine}], most similar first, ties in name
    order."""
    if not images:
        return []
    features = F.normalize(torch.from_numpy(np.stack([vectors[a] for _, a in images])), dim=-1)  # (images, P)
    scores = (features @ F.normalize(query, dim=-1)).tolist()  # cosine similarities
    order = sorted(range(len(images)), key=lambda i: -scores[i])  # stable: ties in name order
    return [{"image": images[i][0], "score": scores[i]} for i in order]


def print_results(args, results: list[dict]):
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    elif args.paths:
        print("\n".join(r["image"] for r in results), end="\n" if results else "")
    else:
        print("\n".join(f"{r['score']:7.4f}  {r['image']}" for r in results), end="\n" if results else "")


def update(args) -> int:
    """Embed the folder's new and changed images into the index, forget its deleted ones, and say so in one line."""
    try:
        paths, failed = list_images(args)
    except Failure as e:  # an unmounted drive looks like an empty folder: its embeddings are kept
        raise Failure(f"{e}; --update changed nothing in the index") from None
    t0 = time.perf_counter()
    files = [os.path.abspath(p) for p in paths]
    with opened_index(args) as (db, dim):
        indexed = index_images(args, db, files, dim)
        removed = db.forget_missing(os.path.abspath(args.image), args.recursive, set(files))
        if args.verbose:
            say(f"updated in {time.perf_counter() - t0:.1f} s (index: {db.path})")
    print(f"{args.image}: {indexed.embedded} embedded, {indexed.stored} unchanged, {len(removed)} removed, "
          f"{indexed.failed} unreadable")
    return 1 if failed or indexed.failed else 0


def same_file(path: str, other: str | None) -> bool:
    if other is None:
        return False
    try:
        return path == other or os.path.samefile(path, other)
    except OSError:
        return False
