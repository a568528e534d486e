"""
Load BAAI/AltCLIP checkpoints (and the rest of the family: AltCLIP-m9, AltCLIP-m18) into altclip.AltCLIP.

    model = load_pretrained("BAAI/AltCLIP")               # hub repo id, through the huggingface_hub cache
    model = load_pretrained("/path/to/AltCLIP", dtype=torch.bfloat16)   # a local folder
    python load_weights.py BAAI/AltCLIP --to-safetensors ./altclip-st   # convert the hub's .bin once, load fast after
    save_pretrained(model, "./my-altclip")                # ours → the same layout (train.py saves with it)

altclip.py's classes load through here (AltCLIPModel.from_pretrained is load_pretrained; a tower's from_pretrained
takes read_config and state_dict(..., part="text_model.")): this file imports none of them at its top, so either
side may import the other without a circle.

The checkpoint's tensor names are the reference implementation's module paths. NAME_MAP below is the whole mapping
to our module names, DROPPED lists what is deliberately ignored and FUSED what is transformed on the way in.
Loading is strict: anything missing, unexpected or of the wrong shape is an error that names the tensor.

The model is built on the "meta" device (no memory, no random initialisation), then the checkpoint's tensors are
assigned to it. Safetensors files are memory-mapped, so tensors already in the requested dtype are never copied;
only the fused q/k/v weights are new allocations.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import warnings
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from checkpoint_files import EXTRA_FILES, resolve, shard_names

if TYPE_CHECKING:  # the loader knows no model class at import: altclip.py's from_pretrained imports it
    from altclip import AltCLIP, AltCLIPConfig

# -----------------------------------------------------------------------------
# The mapping: checkpoint name → our name. `{i}` is a block index. Names are those of the BAAI/AltCLIP checkpoint.

NAME_MAP = {
    # image tower (CLIP ViT-L/14)
    "vision_model.embeddings.patch_embedding.weight": "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.class_embedding": "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "vision_model.embeddings.position_embedding",
    "vision_model.pre_layrnorm.{w}": "vision_model.ln_pre.{w}",
    "vision_model.encoder.layers.{i}.layer_norm1.{w}": "vision_model.blocks.{i}.ln_1.{w}",
    "vision_model.encoder.layers.{i}.self_attn.out_proj.{w}": "vision_model.blocks.{i}.attn.proj.{w}",
    "vision_model.encoder.layers.{i}.layer_norm2.{w}": "vision_model.blocks.{i}.ln_2.{w}",
    "vision_model.encoder.layers.{i}.mlp.fc1.{w}": "vision_model.blocks.{i}.mlp.fc1.{w}",
    "vision_model.encoder.layers.{i}.mlp.fc2.{w}": "vision_model.blocks.{i}.mlp.fc2.{w}",
    "vision_model.post_layernorm.{w}": "vision_model.ln_post.{w}",
    # text tower (XLM-RoBERTa large + pre_LN + transformation)
    "text_model.roberta.embeddings.word_embeddings.weight": "text_model.embeddings.word_embeddings.weight",
    "text_model.roberta.embeddings.position_embeddings.weight": "text_model.embeddings.position_embeddings.weight",
    "text_model.roberta.embeddings.token_type_embeddings.weight": "text_model.embeddings.token_type_embeddings.weight",
    "text_model.roberta.embeddings.LayerNorm.{w}": "text_model.embeddings.ln.{w}",
    "text_model.roberta.encoder.layer.{i}.attention.output.dense.{w}": "text_model.blocks.{i}.attn.proj.{w}",
    "text_model.roberta.encoder.layer.{i}.attention.output.LayerNorm.{w}": "text_model.blocks.{i}.ln_1.{w}",
    "text_model.roberta.encoder.layer.{i}.intermediate.dense.{w}": "text_model.blocks.{i}.mlp.fc1.{w}",
    "text_model.roberta.encoder.layer.{i}.output.dense.{w}": "text_model.blocks.{i}.mlp.fc2.{w}",
    "text_model.roberta.encoder.layer.{i}.output.LayerNorm.{w}": "text_model.blocks.{i}.ln_2.{w}",
    "text_model.pre_LN.{w}": "text_model.ln_out.{w}",
    "text_model.transformation.{w}": "text_model.transformation.{w}",
    # heads
    "visual_projection.weight": "visual_projection.weight",
    "text_projection.weight": "text_projection.weight",
    "logit_scale": "logit_scale",
}

# Transformed on the way in: q, k and v projections are concatenated (along the output dimension, in that order)
# into one Linear, so attention does one matmul instead of three.
FUSED = {
    "vision_model.blocks.{i}.attn.qkv.{w}": [f"vision_model.encoder.layers.{{i}}.self_attn.{p}_proj.{{w}}"
                                            for p in "qkv"],
    "text_model.blocks.{i}.attn.qkv.{w}": [f"text_model.roberta.encoder.layer.{{i}}.attention.self.{p}.{{w}}"
                                          for p in ("query", "key", "value")],
}

# In the checkpoint, deliberately not loaded.
DROPPED = {
    r".*\.position_ids": "constant buffer (arange) saved by older transformers; we compute positions on the fly",
    r".*\.token_type_ids": "constant all-zero buffer saved by older transformers; XLM-R has one token type",
    r"text_model\.roberta\.pooler\..*": "RoBERTa's tanh pooler; AltCLIP pools with pre_LN + transformation instead",
}

# Alternative spellings of the same tensor, normalised before the lookup: transformers v5 saves `encoder.layer.N`
# for the image tower too, where the original CLIP/AltCLIP checkpoints say `encoder.layers.N`, and its in-memory
# state_dict says `encoder.layers.N` for the text tower.
ALIASES = [(re.compile(r"^vision_model\.encoder\.layer\.(\d+)\."), r"vision_model.encoder.layers.\1."),
           (re.compile(r"^text_model\.roberta\.encoder\.layers\.(\d+)\."), r"text_model.roberta.encoder.layer.\1.")]



class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable, refused, or not matching its config."""


# -----------------------------------------------------------------------------
# Reading tensors: safetensors (memory-mapped) or PyTorch pickles (weights_only, never executing code).


def read_tensors(weights: Path, keep=None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, by checkpoint name. Sharded checkpoints are read through their index.
    keep: a test on names; only the tensors it passes are mapped."""
    if weights.name.endswith(".index.json"):
        tensors = {}
        for shard in shard_names(weights):
            if not (weights.parent / shard).exists():
                raise CheckpointError(f"{weights} names a shard {shard} that is missing from {weights.parent}")
            tensors.update(read_tensors(weights.parent / shard, keep))
        return tensors
    if weights.suffix == ".safetensors":
        return read_safetensors(weights, keep)
    try:
        tensors = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise CheckpointError(f"cannot read {weights}: {str(e).splitlines()[0]} (truncated or corrupt?)") from None
        tensors = torch.load(weights, map_location="cpu", weights_only=True)  # a legacy (pre-zip) pickle: no mmap
    except Exception as e:
        if "weights_only" in str(e) or "Unsupported" in str(e):
            raise CheckpointError(f"refused to load {weights}: it holds pickled objects other than tensors, which "
                                  f"could run code when unpickled ({str(e).splitlines()[0]})") from None
        raise CheckpointError(f"cannot read {weights}: {e}") from None
    return tensors if keep is None else {name: t for name, t in tensors.items() if keep(name)}


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def read_safetensors(path: Path, keep=None) -> dict[str, torch.Tensor]:
    """A .safetensors file: an 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}},
    then the tensors' bytes.

    Each tensor is memory-mapped on its own (copy-on-write): nothing is read until it is used, and the pages of a
    tensor that is copied on the way in (fused, cast, packed) leave memory as soon as that tensor is dropped. One
    mapping of the whole file would keep them resident for as long as any tensor of the file lives.
    """
    def corrupt(why):
        return CheckpointError(f"cannot read {path}: {why} (the file is truncated or corrupt; delete it and "
                               f"download it again)")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise corrupt(f"header size {n} does not fit a file of {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise corrupt(f"its header is not JSON ({e})") from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or (keep is not None and not keep(name)):
            continue
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"tensor {name} has an unreadable entry {info}") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or 8 + n + end > size:
            raise corrupt(f"tensor {name} needs bytes {begin}..{end} of a data section of {size - 8 - n}")
        if nbytes == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = np.memmap(path, dtype=np.uint8, mode="c", offset=8 + n + begin, shape=(nbytes,))
        tensors[name] = torch.from_numpy(raw).view(dtype).view(shape)
    return tensors


# -----------------------------------------------------------------------------
# Checkpoint names → our state dict.


def _pattern(template: str) -> re.Pattern:
    regex = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{w\}", r"(?P<w>weight|bias)")
    return re.compile(f"^{regex}$")


_RULES = [(_pattern(ckpt), ours) for ckpt, ours in NAME_MAP.items()]
_FUSED_PARTS = [(_pattern(part), ours, k) for ours, parts in FUSED.items() for k, part in enumerate(parts)]
_DROPPED = [re.compile(f"^{r}$") for r in DROPPED]


def convert(tensors: dict[str, torch.Tensor], model: AltCLIP, dtype: torch.dtype, device="cpu",
            fuse_from: dict[str, torch.Tensor] | None = None) -> dict:
    """Map checkpoint tensors onto `model`'s parameter names, checking every name and shape.

    The FUSED parts are taken from `fuse_from` when given: a second mapping of the same file that the caller drops
    afterwards, so the pages read for fusing leave memory instead of staying mapped beside the fused copies.
    """
    fuse_from = tensors if fuse_from is None else fuse_from
    expected = {name: p.shape for name, p in model.named_parameters()}
    ours, sources, fused, unexpected = {}, {}, {}, []
    for name, t in tensors.items():
        canonical = _canonical(name)
        if any(d.match(canonical) for d in _DROPPED):
            continue
        for regex, target in _RULES:
            if m := regex.match(canonical):
                ours_name = target.format(**m.groupdict())
                ours[ours_name], sources[ours_name] = t, name
                break
        else:
            for regex, target, k in _FUSED_PARTS:
                if m := regex.match(canonical):
                    fused.setdefault(target.format(**m.groupdict()), [None] * 3)[k] = (name, fuse_from[name])
                    break
            else:
                unexpected.append(name)

    for target, parts in fused.items():
        if any(p is None for p in parts):
            have = [p[0] for p in parts if p is not None]
            raise CheckpointError(f"{target} needs q, k and v tensors; the checkpoint has only {have}")
        for name, t in parts:
            if target in expected and t.shape[1:] != expected[target][1:]:
                raise CheckpointError(_shape_message(name, t.shape, expected[target][1:], target))
        ours[target] = torch.cat([t.to(dtype) for _, t in parts])
        sources[target] = " + ".join(name for name, _ in parts)

    unexpected += [sources[n] for n in ours if n not in expected]
    if unexpected:
        raise CheckpointError(f"{len(unexpected)} unexpected tensor(s) in the checkpoint, not part of the model "
                              f"its config describes: {_listing(unexpected)}")
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise CheckpointError(f"{len(missing)} tensor(s) missing from the checkpoint, for our "
                              f"{_listing(missing)}")
    for name, t in ours.items():
        if t.shape != expected[name]:
            raise CheckpointError(_shape_message(sources[name], t.shape, expected[name], name))
    keep_fp32 = {"logit_scale"}  # exp(logit_scale) = 100 becomes 98.9 if the scalar is rounded to bfloat16
    return {name: t.to(device=device, dtype=torch.float32 if name in keep_fp32 or not t.is_floating_point() else dtype)
            for name, t in ours.items()}


def _canonical(name: str) -> str:
    for alias, repl in ALIASES:
        name = alias.sub(repl, name)
    return name


def _shape_message(source, got, want, ours):
    part = "text" if ours.startswith("text") else "vision" if ours.startswith("vision") else "top-level"
    return (f"tensor {source} has shape {tuple(got)} in the checkpoint, but the {part} config in config.json "
            f"makes {ours} {tuple(want)}: config.json does not describe these weights")


def _listing(names, limit=8):
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


# -----------------------------------------------------------------------------
# The entry point.


def read_config(folder: Path) -> dict:
    """config.json as a dict; altclip.config_from_dict reads it as the reference does."""
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no config.json")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot use {path}: {e}") from None


def load_config(folder: Path) -> AltCLIPConfig:
    from altclip import config_from_dict

    d = read_config(folder)
    try:
        return config_from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot use {folder / 'config.json'}: {e}") from None


def state_dict(weights: Path, model: torch.nn.Module, dtype: torch.dtype, device="cpu",
               part: str | tuple[str, ...] | None = None):
    """The checkpoint's tensors as `model`'s state dict (names and shapes checked by `convert`), in `dtype` on
    `device`. part: a prefix such as "text_model." (or a tuple of them); only the tensors under it are read, for a
    model that is that tower alone (its parameter names carry the same prefix).

    Memory-mapped: pages are read on first use. Safetensors map each tensor on its own, so tensors copied on the
    way in (fused q/k/v, casts) leave memory afterwards; a zip pickle is one mapping, so its q/k/v are fused from
    a second mapping that is dropped afterwards. (A pre-zip pickle cannot be mapped and is read once.)
    """
    parts = (part,) if isinstance(part, str) else part
    keep = None if parts is None else lambda name: _canonical(name).startswith(parts)
    pickle = weights.name.endswith((".bin", ".bin.index.json"))
    second = pickle and (weights.suffix == ".json" or zipfile.is_zipfile(weights))
    tensors = read_tensors(weights, keep)
    if parts is not None and not tensors:
        raise CheckpointError(f"{weights} has no tensor under {' or '.join(map(repr, parts))}: not a checkpoint of "
                              f"the whole model")
    return convert(tensors, model, dtype, device, fuse_from=read_tensors(weights, keep) if second else None)


def load_pretrained(source: str | Path = "BAAI/AltCLIP", *, dtype: torch.dtype | str = torch.float32,
                    device: str | torch.device = "cpu", kernels: bool | None = None, onednn: bool = False) -> AltCLIP:
    """Build AltCLIP from a checkpoint folder or hub repo id, in eval mode, with weights in `dtype` on `device`.

    kernels: None picks the Triton kernels when the model is on a CUDA device and Triton is installed, torch
    otherwise; True insists on them (RuntimeError saying why when they cannot run; Triton's CPU interpreter,
    TRITON_INTERPRET=1, counts as able to run); False never uses them. `model.kernels` tells which path is on.
    onednn: on CPU, pack the blocks' linear layers for oneDNN with the MLP activations fused (altclip_kernels/onednn.py):
    faster on AVX-512 CPUs, for a few seconds more at load, but slower on AVX2-only ones
    (`altclip_kernels.onednn.faster_here()` says which). RuntimeError saying why when it cannot be done here.
    A bfloat16/float16 model on a CPU without native instructions for it works, emulated and several times slower
    than float32: an altclip_kernels.cpu.EmulatedDtypeWarning says so.
    dtype="int8" (CPU only): the blocks' linears in int8, calibrated at load time; the rest float32
    (altclip_kernels/int8.py); `model.int8` says which kernel runs.
    """
    int8 = dtype == "int8"  # int8 linears on the CPU, the rest float32 (altclip_kernels/int8.py)
    if int8:
        _check_int8(torch.device(device), kernels, onednn)
        dtype = torch.float32
    use_kernels = _want_kernels(kernels, torch.device(device))  # before any download: kernels=True fails fast
    warn_if_emulated(dtype, device)
    if onednn:
        _check_onednn(dtype, torch.device(device))
    from altclip import AltCLIP

    folder, weights = resolve(source)
    config = load_config(folder)
    use_kernels = use_kernels and _want_kernels(kernels, torch.device(device), config)  # and the model's shapes
    with torch.device("meta"):  # shapes only: no memory and no random initialisation
        model = AltCLIP(config)
    state = state_dict(weights, model, dtype, device)
    model.load_state_dict(state, strict=True, assign=True)
    del state  # the model holds the only references now, so packing can drop each original as it goes
    if onednn:
        from altclip_kernels import onednn as onednn_kernels
        onednn_kernels.pack(model)
    if int8:
        from altclip_kernels import int8 as int8_kernels
        int8_kernels.quantize(model.eval())
    return model.use_kernels(use_kernels).eval()


def warn_if_emulated(dtype: torch.dtype, device, stacklevel: int = 3):
    """An EmulatedDtypeWarning for a bfloat16/float16 model on a CPU without native instructions for that dtype."""
    if torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        from altclip_kernels import cpu
        if (message := cpu.emulation_warning(dtype)) is not None:
            warnings.warn(message, cpu.EmulatedDtypeWarning, stacklevel=stacklevel)


def _check_int8(device: torch.device, kernels: bool | None, onednn: bool):
    from altclip_kernels import int8 as int8_kernels

    ok, why = int8_kernels.available()
    if device.type != "cpu":
        ok, why = False, f"int8 is for CPU models, not {device}"
    elif kernels or onednn:
        ok, why = False, f"int8 has its own linears: it does not combine with {'kernels' if kernels else 'onednn'}=True"
    if not ok:
        raise RuntimeError(f"dtype='int8', but {why}")


def _check_onednn(dtype: torch.dtype, device: torch.device):
    from altclip_kernels import onednn as onednn_kernels

    ok, why = onednn_kernels.available(dtype)
    if device.type != "cpu":
        ok, why = False, f"oneDNN packing is for CPU models, not {device}"
    if not ok:
        raise RuntimeError(f"onednn=True, but {why}")


def _want_kernels(kernels: bool | None, device: torch.device, config: AltCLIPConfig | None = None) -> bool:
    """Whether to run the Triton kernels: whether they can run here and, given the model's `config`, whether its
    shapes fit them. kernels=True raises where the answer is no."""
    if kernels is False or (kernels is None and device.type != "cuda"):
        return False  # decided without importing Triton, which takes a while
    import altclip_kernels as triton_kernels

    why = triton_kernels.refusal(config)
    interpreted = triton_kernels.interpreted()
    if kernels is None:
        return why is None and not interpreted
    if why is not None:
        raise RuntimeError(f"kernels=True, but {why}")
    if device.type != "cuda" and not interpreted:
        raise RuntimeError(f"kernels=True needs the model on a CUDA device (got {device}), or TRITON_INTERPRET=1 "
                           f"to run the kernels in Triton's CPU interpreter")
    return True


def to_safetensors(source: str | Path, out: str | Path) -> Path:
    """Copy a checkpoint into `out` as one memory-mappable model.safetensors, with its config and tokenizer files.

    Tensor names and dtypes stay as they were (the result also loads in the reference); legacy buffers are dropped.
    The tensors are checked against the config first, so a checkpoint that would not load is not converted.
    """
    from safetensors.torch import save_file

    from altclip import AltCLIP

    folder, weights = resolve(source, optional=EXTRA_FILES)
    config = load_config(folder)
    tensors = read_tensors(weights)
    with torch.device("meta"):
        convert(tensors, AltCLIP(config), torch.float32, "meta")  # validation only
    kept = {n: t.contiguous() for n, t in tensors.items() if not any(d.match(n) for d in _DROPPED)}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(kept, out / "model.safetensors", metadata={"format": "pt"})
    for name in ["config.json", *EXTRA_FILES]:
        if (folder / name).exists():
            shutil.copyfile(folder / name, out / name)
    return out


# -----------------------------------------------------------------------------
# Saving: our model → a folder in BAAI/AltCLIP's layout, the exact inverse of NAME_MAP and FUSED, so that
# load_pretrained, the command line and the reference (transformers.AltCLIPModel) all load it.

_INVERSE = [(_pattern(ours), ckpt) for ckpt, ours in NAME_MAP.items()]
_INVERSE_FUSED = [(_pattern(ours), parts) for ours, parts in FUSED.items()]

# CLIP's image preprocessing, in the reference's CLIPImageProcessor terms (resample 3 = PIL bicubic); the crop is
# the model's image_size, the mean and std altclip.py's (save_pretrained adds them).
PREPROCESSOR = dict(image_processor_type="CLIPImageProcessor", do_convert_rgb=True, do_resize=True, resample=3,
                    do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True)


def checkpoint_tensors(model: AltCLIP) -> dict[str, torch.Tensor]:
    """Our parameters under the checkpoint's names: NAME_MAP read backwards, fused q/k/v split into q, k and v.
    A parameter that no rule maps is an error naming it: a checkpoint missing it would not load."""
    tensors, unmapped = {}, []
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        for regex, ckpt in _INVERSE:
            if m := regex.match(name):
                tensors[ckpt.format(**m.groupdict())] = t.clone()
                break
        else:
            for regex, parts in _INVERSE_FUSED:
                if m := regex.match(name):
                    for part, piece in zip(parts, t.chunk(3)):  # (3C, …) → q, k, v, each (C, …)
                        tensors[part.format(**m.groupdict())] = piece.clone()  # own storage: safetensors refuses views
                    break
            else:
                unmapped.append(name)
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} parameter(s) of the model have no checkpoint name in NAME_MAP or "
                              f"FUSED: {_listing(unmapped)}")
    return tensors


def config_dict(model: AltCLIP) -> dict:
    """config.json in the reference's AltCLIPConfig layout, every field we read written out."""
    cfg = model.config
    text = {f.name: getattr(cfg.text, f.name) for f in fields(cfg.text)}
    vision = {f.name: getattr(cfg.vision, f.name) for f in fields(cfg.vision)}
    return {"architectures": ["AltCLIPModel"], "model_type": "altclip", "dtype": str(model.dtype).split(".")[-1],
            "projection_dim": cfg.projection_dim, "logit_scale_init_value": cfg.logit_scale_init_value,
            "text_config": {"model_type": "altclip_text_model", **text, "bos_token_id": 0, "eos_token_id": 2},
            "vision_config": {"model_type": "altclip_vision_model", **vision}}


def save_pretrained(model: AltCLIP, folder: str | Path) -> Path:
    """Write `model` into `folder`: config.json, model.safetensors (the checkpoint's names, the model's dtype) and
    preprocessor_config.json. The tokenizer files are the caller's (a sentencepiece.bpe.model and its JSON files)."""
    from safetensors.torch import save_file

    if model.onednn:
        raise ValueError("save_pretrained needs the plain model: its linears were packed for oneDNN at load time")
    tensors = checkpoint_tensors(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config_dict(model), indent=2) + "\n")
    from altclip import CLIP_MEAN, CLIP_STD

    size = model.config.vision.image_size
    preprocessor = {**PREPROCESSOR, "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size},
                    "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder


def main(argv=None):
    p = argparse.ArgumentParser(description="Check or convert an AltCLIP checkpoint (folder or hub repo id).")
    p.add_argument("source", help="local folder or hub repo id, e.g. BAAI/AltCLIP")
    p.add_argument("--to-safetensors", metavar="DIR", help="write a memory-mappable safetensors copy into DIR")
    args = p.parse_args(argv)
    try:
        if args.to_safetensors:
            out = to_safetensors(args.source, args.to_safetensors)
            print(f"wrote {out / 'model.safetensors'} and the config/tokenizer files; load it with "
                  f"load_pretrained({str(out)!r}) or --model {out}")
        else:
            model = load_pretrained(args.source)
            n = sum(p.numel() for p in model.parameters())
            print(f"{args.source}: {n / 1e6:.1f}M parameters load cleanly")
    except (OSError, CheckpointError) as e:
        print(f"load_weights.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
