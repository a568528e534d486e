"""Tiny random AltCLIP checkpoints, made with the reference (transformers, test-only) in the real file formats.

The geometry is the real one where it matters (224 px images, 14 px patches → 257 tokens; 514 text positions),
the widths are tiny (64 wide, 4 heads of 16, so the Triton kernels' head sizes apply too).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = dict(
    text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=514, project_dim=48),
    vision_config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       image_size=224, patch_size=14),
    projection_dim=32,
)
# BAAI/AltCLIP's trained logit_scale, ln(100) (scale 100); the config default is ln(1/0.07) = 2.6592, so code that
# ignored the loaded value would still agree with a fixture left at the default.
LOGIT_SCALE = 4.6052


def tiny_reference(seed: int = 0, vocab_size: int | None = None, projection_dim: int | None = None):
    """A randomly initialised reference AltCLIPModel in eval mode (eager attention, so it can return attentions)."""
    from transformers import AltCLIPConfig, AltCLIPModel

    spec = json.loads(json.dumps(TINY))
    if vocab_size:
        spec["text_config"]["vocab_size"] = vocab_size
    if projection_dim:
        spec["projection_dim"] = projection_dim
    torch.manual_seed(seed)
    model = AltCLIPModel(AltCLIPConfig(**spec), ).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():  # default init has LayerNorm = identity, zero biases, logit_scale ln(1/0.07): change all
        for p in model.parameters():
            if p.ndim:
                p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():  # LayerNorm far from identity, so a norm that ignored its weight or bias would show
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
        model.logit_scale.fill_(LOGIT_SCALE)
    return model


def reference_state_dict(model, legacy_buffers=False):
    """The state dict under the BAAI/AltCLIP checkpoint's names: text `encoder.layer.N`, vision `encoder.layers.N`."""
    sd = {}
    for name, t in model.state_dict().items():
        name = name.replace("vision_model.encoder.layer.", "vision_model.encoder.layers.")
        sd[name.replace("text_model.roberta.encoder.layers.", "text_model.roberta.encoder.layer.")] = t.clone()
    if legacy_buffers:  # what older transformers versions saved next to the weights
        n_text = model.config.text_config.max_position_embeddings
        sd["text_model.roberta.embeddings.position_ids"] = torch.arange(n_text)[None]
        sd["text_model.roberta.embeddings.token_type_ids"] = torch.zeros(1, n_text, dtype=torch.long)
        n_vis = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2 + 1
        sd["vision_model.embeddings.position_ids"] = torch.arange(n_vis)[None]
    return sd


def legacy_config(model) -> dict:
    """config.json in BAAI/AltCLIP's layout: `*_config_dict` holds the truth, `*_config` holds stale values."""
    d = model.config.to_dict()
    d["text_config_dict"] = {k: d["text_config"][k] for k in TINY["text_config"]}
    d["vision_config_dict"] = {k: d["vision_config"][k] for k in TINY["vision_config"]}
    d["text_config"] = {**d["text_config"], "hidden_size": 1024, "num_hidden_layers": 24}  # stale, overridden
    d["vision_config"] = {**d["vision_config"], "hidden_size": 768, "patch_size": 32}  # stale, overridden
    return d


def save_checkpoint(model, folder: Path, fmt: str = "safetensors", legacy: bool = False,
                    dtype: torch.dtype | None = None) -> Path:
    """Write `model` into `folder` as fmt ∈ {safetensors, sharded-safetensors, bin, sharded-bin}.

    legacy=True writes BAAI/AltCLIP's config layout and the legacy int64 buffers; dtype casts the float tensors.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = reference_state_dict(model, legacy_buffers=legacy)
    if dtype is not None:
        sd = {n: t.to(dtype) if t.is_floating_point() else t for n, t in sd.items()}
    names = sorted(sd)
    shards = [names] if not fmt.startswith("sharded") else [names[: len(names) // 2], names[len(names) // 2:]]
    ext = "safetensors" if fmt.endswith("safetensors") else "bin"
    stem = "model" if ext == "safetensors" else "pytorch_model"
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = f"{stem}.{ext}" if len(shards) == 1 else f"{stem}-{k + 1:05d}-of-{len(shards):05d}.{ext}"
        part = {n: sd[n].contiguous() for n in shard}
        if ext == "safetensors":
            from safetensors.torch import save_file
            save_file(part, folder / fname, metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname)
        weight_map.update({n: fname for n in shard})
    if len(shards) > 1:
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = legacy_config(model) if legacy else model.config.to_dict()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def tiny_model_folder(folder: Path, seed: int = 0) -> Path:
    """A checkpoint folder as `--model` takes it: a small multilingual tokenizer (tests/spm_fixture.py), and the tiny
    reference model of `seed` sized to it, saved as config.json + model.safetensors."""
    from spm_fixture import train_sentencepiece
    from tokenizer import Tokenizer

    train_sentencepiece(folder)
    return save_checkpoint(tiny_reference(seed=seed, vocab_size=Tokenizer.from_pretrained(folder).vocab_size), folder)
