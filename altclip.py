"""
AltCLIP, written out in one file.

AltCLIP is CLIP with its text tower swapped for a multilingual one: the image tower is CLIP's ViT-L/14, the text
tower is XLM-RoBERTa-large followed by a small linear "transformation" into CLIP's text space. Both towers end in
a projection to a shared 768-d space where cosine similarity, scaled by exp(logit_scale), scores image–text pairs.

References:
1) Chen et al., "AltCLIP: Altering the Language Encoder in CLIP for Extended Language Capabilities", 2022,
   https://arxiv.org/abs/2211.06679 (weights: https://huggingface.co/BAAI/AltCLIP)
2) the reference implementation, transformers' AltCLIPModel (src/transformers/models/altclip/modeling_altclip.py)
3) Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), 2021
4) Conneau et al., "Unsupervised Cross-lingual Representation Learning at Scale" (XLM-R), 2019

The modules below follow the data: configs → shared layers (LayerNorm, attention, MLP) → the image tower
(patches → pre-LN blocks) → the text tower (RoBERTa embeddings → post-LN blocks) → the two-tower model with its
projections and contrastive loss → each tower alone. Weights are mapped onto these modules by name in
load_weights.py. Then comes the image preprocessing (CLIP's recipe, as the reference applies it) and the processor
that puts it beside the tokenizer (tokenizer.py). The classes have the documentation page's names, so its example
runs with one line changed:

    from altclip import AltCLIPModel, AltCLIPProcessor
    model = AltCLIPModel.from_pretrained("BAAI/AltCLIP")
    processor = AltCLIPProcessor.from_pretrained("BAAI/AltCLIP")
    inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=image, return_tensors="pt", padding=True)
    probs = model(**inputs).logits_per_image.softmax(dim=1)

The command line (zero-shot classification and image search) is cli.py, run from here:

    python altclip.py examples/cat.jpg "a cat" "a dog" "a cup of coffee"     (python altclip.py --help for more)
"""
from __future__ import annotations

if __name__ == "__main__":  # `python altclip.py …` is the command line, cli.py, which imports this file as `altclip`:
    import sys              # hand over before anything is defined here, so the file does not run twice

    import cli

    sys.exit(cli.main())

import math
import os
import sys
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

# -----------------------------------------------------------------------------
# Configuration. Defaults are BAAI/AltCLIP's real values.


@dataclass
class AltCLIPVisionConfig:
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 768  # kept for the reference's keyword; the model's projection width is AltCLIPConfig's


@dataclass
class AltCLIPTextConfig:
    vocab_size: int = 250002
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    max_position_embeddings: int = 514  # 512 usable: positions 0 and 1 are taken by the padding offset
    type_vocab_size: int = 1
    pad_token_id: int = 1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    project_dim: int = 768  # width of the "transformation" output (CLIP's text width)


VisionConfig, TextConfig = AltCLIPVisionConfig, AltCLIPTextConfig  # the names this project used first


@dataclass(init=False)
class AltCLIPConfig:
    """Both towers' configs and the shared projection. Takes the reference's keywords (`text_config=`,
    `vision_config=`: a dict of the sub-config's fields or the sub-config itself) or ours (`text=`, `vision=`)."""
    text: AltCLIPTextConfig
    vision: AltCLIPVisionConfig
    projection_dim: int = 768
    logit_scale_init_value: float = 2.6592  # ln(1/0.07)

    def __init__(self, *, text_config=None, vision_config=None, projection_dim: int = 768,
                 logit_scale_init_value: float = 2.6592, text=None, vision=None):
        if (text is not None and text_config is not None) or (vision is not None and vision_config is not None):
            raise TypeError("AltCLIPConfig takes text_config= or text=, vision_config= or vision=, not both")
        self.text = _as_config(AltCLIPTextConfig, text if text is not None else text_config)
        self.vision = _as_config(AltCLIPVisionConfig, vision if vision is not None else vision_config)
        self.projection_dim, self.logit_scale_init_value = projection_dim, logit_scale_init_value

    @classmethod
    def from_text_vision_configs(cls, text_config, vision_config, **kwargs):
        """The documentation page's constructor: AltCLIPConfig from a text and a vision config (or their dicts)."""
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)

    @property
    def text_config(self) -> AltCLIPTextConfig:  # the reference's attribute names
        return self.text

    @property
    def vision_config(self) -> AltCLIPVisionConfig:
        return self.vision


def _as_config(cls, value):
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)  # an unknown field is a TypeError that names it
    if not isinstance(value, cls):
        raise TypeError(f"expected a {cls.__name__} or a dict of its fields, got {type(value).__name__}")
    return value


# When config.json leaves a field out, the reference fills it from its own class defaults. Its text defaults are
# XLM-R large (ours too); its vision defaults are ViT-B/32, so a missing vision field means a ViT-B/32 value.
_REFERENCE_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, patch_size=32, projection_dim=512)


def _sub_config(cls, values: dict, reference_defaults: dict):
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in {**reference_defaults, **values}.items() if k in names}
    if isinstance(kwargs.get("image_size"), (list, tuple)):  # [224, 224] → 224; only square images are supported
        h, w = kwargs["image_size"]
        if h != w:
            raise ValueError(f"image_size {kwargs['image_size']} is not square")
        kwargs["image_size"] = h
    return cls(**kwargs)


def config_from_dict(d: dict) -> AltCLIPConfig:
    """Build the config from a checkpoint's config.json, as the reference reads it.

    Older checkpoints (BAAI/AltCLIP itself) carry both `text_config` and `text_config_dict` (same for vision). The
    reference then builds the sub-config from its class defaults plus `*_config_dict`, and that overrides every
    field of `*_config`; `*_config` counts only when no `*_config_dict` is present.
    """
    def pick(name):
        legacy = d.get(f"{name}_config_dict")
        return legacy if legacy is not None else (d.get(f"{name}_config") or {})

    text = _sub_config(TextConfig, pick("text"), {})
    vision = _sub_config(VisionConfig, pick("vision"), _REFERENCE_VISION_DEFAULTS)
    for part, cfg in (("text", text), ("vision", vision)):
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"{part}: hidden_size {cfg.hidden_size} is not a multiple of "
                             f"num_attention_heads {cfg.num_attention_heads}")
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{part}: unsupported hidden_act {cfg.hidden_act!r} (known: {sorted(ACTIVATIONS)})")
    return AltCLIPConfig(text=text, vision=vision,
                         projection_dim=d.get("projection_dim", 768),
                         logit_scale_init_value=d.get("logit_scale_init_value", 2.6592))


# -----------------------------------------------------------------------------
# Layers shared by both towers.


def random_init(*shape, std):
    """Random weights with standard deviation `std`, drawn uniformly from ±√3·std. (Not normal_: on the meta device,
    where load_weights builds the model, normal_ first imports PyTorch's decompositions, ~2 s.)"""
    return torch.empty(*shape).uniform_(-std * 3**0.5, std * 3**0.5)


def quick_gelu(x):
    # CLIP's cheap GELU approximation: x·σ(1.702x)
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}  # "gelu" is the exact erf form, as in XLM-R


class LayerNorm(nn.LayerNorm):
    """LayerNorm, optionally of a sum: `ln(x)` is LN(x); `ln(x, residual=r)` is (LN(x + r), x + r).

    The second form is what residual blocks need, and lets the Triton kernel fuse the add into the normalisation.
    torch's layer_norm kernels (CPU and CUDA) already compute mean and variance in float32 for bfloat16/float16
    inputs, so statistics stay in float32 without an explicit upcast (which would cost three times as much).
    """
    fast = None  # the `kernels` module when the Triton fast path is on (see AltCLIP.use_kernels)

    def forward(self, x, residual=None):
        if self.fast is not None:
            return self.fast.layer_norm(x, self.weight, self.bias, self.eps, residual=residual)
        if residual is None:
            return super().forward(x)
        x = x + residual
        return super().forward(x), x


class Packing:
    """Right-padded texts ⇄ their real tokens alone, so that token-wise layers (linears, LayerNorm, MLP) skip padding.

    pack: (B, L, ·) → (T, ·), the T real tokens in order; unpack: (T, ·) → (B, L, ·), zeros where padding was.
    """

    def __init__(self, mask):  # (B, L) bool, True = real token
        self.shape = mask.shape
        self.index = mask.flatten().nonzero().squeeze(1)  # (T,): where the real tokens sit in the B·L grid

    def pack(self, x):
        return x.flatten(0, 1).index_select(0, self.index)

    def unpack(self, x):
        B, L = self.shape
        return x.new_zeros(B * L, x.shape[-1]).index_copy_(0, self.index, x).view(B, L, -1)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention: softmax(QKᵀ/√d + mask)·V, per head."""
    fast = None  # the `kernels` module when the Triton fast path is on (see AltCLIP.use_kernels)

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)  # q, k, v projections as one matmul (load_weights.py concatenates them)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None, output_attentions=False, packing=None):
        # x: (B, N, C), or (T, C) real tokens with `packing`; mask: (B, N) bool, True = a real token, or None
        qkv = self.qkv(x)  # (B, N, 3C)
        if packing is not None:
            qkv = packing.unpack(qkv)  # (T, 3C) → (B, N, 3C): each text's tokens side by side, for attention
        B, N, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        nh, hs = self.n_heads, C // self.n_heads
        q, k, v = qkv.view(B, N, 3, nh, hs).permute(2, 0, 3, 1, 4)  # 3 × (B, nh, N, hs)
        key_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, N): hide padded keys from every query
        if output_attentions:
            # The readable definition, also the only path that materialises the attention probabilities.
            scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(hs)  # (B, nh, N, N)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
            att = scores.softmax(dim=-1)  # in float32, whatever the model's dtype
            y = att.to(v.dtype) @ v  # (B, nh, N, hs)
        elif self.fast is not None:
            # Triton flash attention (altclip_kernels/attention.py): online softmax, padded key blocks skipped.
            att = None
            y = self.fast.attention(q, k, v, mask)
        else:
            # The same computation, fused by PyTorch (flash/memory-efficient kernels, no N×N matrix kept).
            att = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        y = y.transpose(1, 2).reshape(B, N, C)  # (B, N, nh·hs): heads side by side again
        if packing is not None:
            y = packing.pack(y)  # (T, C)
        return self.proj(y), att


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@dataclass
class TowerOutput:
    last_hidden_state: torch.Tensor  # (B, N, C); for the text tower: the 768-wide projection state
    pooler_output: torch.Tensor  # (B, C): the pooled first token
    hidden_states: tuple | None = None  # encoder input, then the output of every block
    attentions: tuple | None = None  # per block: (B, heads, N, N) attention probabilities


def _run_blocks(blocks, x, mask, output_hidden_states, output_attentions, packing=None):
    hidden_states, attentions = [x], []  # kept only when asked for: 25 activations of the batch otherwise held
    for block in blocks:
        x, att = block(x, mask, output_attentions, packing)
        if output_hidden_states:
            hidden_states.append(x)
        attentions.append(att)
    return (x, tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None)


# -----------------------------------------------------------------------------
# The image tower: CLIP's ViT-L/14.


class VisionEmbeddings(nn.Module):
    """Image → sequence: 14×14 patches as tokens, a learned class token in front, learned positions added."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_size, self.image_size = cfg.patch_size, cfg.image_size
        self.grid = cfg.image_size // cfg.patch_size  # 16 patches per side at 224 px
        # A conv whose kernel equals its stride is a linear map applied to each non-overlapping patch.
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(random_init(cfg.hidden_size, std=cfg.hidden_size**-0.5))
        self.position_embedding = nn.Parameter(random_init(self.grid * self.grid + 1, cfg.hidden_size, std=0.02))

    def positions(self, h: int, w: int):
        """Position table for an h×w patch grid: the trained 16×16 grid, resized bicubically when it differs."""
        pos = self.position_embedding  # (1 + grid², C)
        if h == w == self.grid:
            return pos
        C = pos.shape[-1]
        grid = pos[1:].reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2)  # (1, C, grid, grid)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(pos.dtype)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, C)])  # (1 + h·w, C)

    def forward(self, pixel_values, interpolate_pos_encoding=False):
        B, _, H, W = pixel_values.shape
        if not interpolate_pos_encoding and (H, W) != (self.image_size, self.image_size):
            raise ValueError(f"input image size {H}x{W} does not match the model's {self.image_size}x"
                             f"{self.image_size}; resize it, or pass interpolate_pos_encoding=True")
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, C, H/14, W/14)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h·w, C): one token per patch, row by row
        cls = self.class_embedding.expand(B, 1, -1)  # (B, 1, C)
        return torch.cat([cls, x], dim=1) + self.positions(h, w)  # (B, 1 + h·w, C)


class VisionBlock(nn.Module):
    """Pre-LN transformer block: normalise, then attend / transform, then add back to the residual stream."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.ln_2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x, mask=None, output_attentions=False, packing=None):
        a, att = self.attn(self.ln_1(x), mask, output_attentions, packing)
        h, x = self.ln_2(a, residual=x)  # x ← x + a (the residual stream), h = LN(x)
        x = x + self.mlp(h)
        return x, att


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.ln_pre = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_post = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, pixel_values, interpolate_pos_encoding=False, output_hidden_states=False,
                output_attentions=False) -> TowerOutput:
        x = self.ln_pre(self.embeddings(pixel_values, interpolate_pos_encoding))  # (B, 257, 1024)
        x, hidden_states, attentions = _run_blocks(self.blocks, x, None, output_hidden_states, output_attentions)
        # The class token's final state, normalised, stands for the image. The sequence itself is left unnormalised.
        return TowerOutput(x, self.ln_post(x[:, 0]), hidden_states, attentions)


# -----------------------------------------------------------------------------
# The text tower: XLM-RoBERTa large, then pre_LN + transformation into CLIP's 768-d text space.


class TextEmbeddings(nn.Module):
    """Token ids → vectors: word + position + token type embeddings, then LayerNorm."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.pad_id = cfg.pad_token_id
        C = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, C, _weight=random_init(cfg.vocab_size, C, std=0.02))
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, C,
                                                _weight=random_init(cfg.max_position_embeddings, C, std=0.02))
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, C,
                                                  _weight=random_init(cfg.type_vocab_size, C, std=0.02))
        self.ln = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        if position_ids is None:
            # fairseq's make_positions: real tokens count up from pad_id + 1 (2, 3, 4, …), padding stays at pad_id.
            real = (input_ids != self.pad_id).long()  # (B, L)
            position_ids = torch.cumsum(real, dim=1) * real + self.pad_id
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # XLM-R has a single token type
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))  # (B, L, C)
        return self.ln(x)


class TextBlock(nn.Module):
    """Post-LN transformer block (BERT/RoBERTa): attend / transform, add to the residual, then normalise."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attn = Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.ln_1 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act)
        self.ln_2 = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, mask=None, output_attentions=False, packing=None):
        a, att = self.attn(x, mask, output_attentions, packing)
        x, _ = self.ln_1(a, residual=x)  # LN(x + a)
        x, _ = self.ln_2(self.mlp(x), residual=x)  # LN(x + MLP(x))
        return x, att


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(cfg)
        self.blocks = nn.ModuleList(TextBlock(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_out = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # the reference's `pre_LN`
        self.transformation = nn.Linear(cfg.hidden_size, cfg.project_dim)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states=False, output_attentions=False, skip_padding=False) -> TowerOutput:
        """skip_padding: run the blocks on the real tokens only (same result at real tokens, zeros at padding);
        get_text_features uses it. By default every position is computed, padding too, as in the reference."""
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, L, 1024)
        mask = None if attention_mask is None else attention_mask.bool()  # (B, L), True = real token
        packing = None
        if skip_padding and mask is not None and not (output_hidden_states or output_attentions):
            packing = Packing(mask)
            x = packing.pack(x)  # (T, 1024): T real tokens, no padding
        x, hidden_states, attentions = _run_blocks(self.blocks, x, mask, output_hidden_states, output_attentions,
                                                   packing)
        if packing is not None:
            x = packing.unpack(x)  # (B, L, 1024)
        state = self.transformation(self.ln_out(x))  # (B, L, 768): the "projection state"
        return TowerOutput(state, state[:, 0], hidden_states, attentions)  # pooled: the <s> token


# -----------------------------------------------------------------------------
# The two-tower model.


@dataclass
class AltCLIPOutput:
    loss: torch.Tensor | None = None  # symmetric contrastive loss, when return_loss=True
    logits_per_image: torch.Tensor | None = None  # (images, texts) = exp(logit_scale) · cosine similarity
    logits_per_text: torch.Tensor | None = None  # (texts, images), the transpose
    text_embeds: torch.Tensor | None = None  # (texts, 768), L2-normalised
    image_embeds: torch.Tensor | None = None  # (images, 768), L2-normalised
    text_model_output: TowerOutput | None = None
    vision_model_output: TowerOutput | None = None


def contrastive_loss(logits_per_text):
    """CLIP's loss: text i belongs with image i; cross-entropy both ways round, averaged."""
    target = torch.arange(len(logits_per_text), device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, target) + F.cross_entropy(logits_per_text.t(), target)) / 2


class AltCLIP(nn.Module):
    def __init__(self, config: AltCLIPConfig | None = None):
        super().__init__()
        self.config = config = config or AltCLIPConfig()
        self.text_model = TextTower(config.text)
        self.vision_model = VisionTower(config.vision)
        self.text_projection = nn.Linear(config.text.project_dim, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    @classmethod
    def from_pretrained(cls, source="BAAI/AltCLIP", **kwargs) -> "AltCLIP":
        """A checkpoint folder or hub repo id → the model, in eval mode. Keywords (dtype, device, kernels, onednn) as
        load_weights.load_pretrained takes them."""
        import load_weights  # the loader reads files and builds from this file's classes: imported when used

        return load_weights.load_pretrained(source, **kwargs)

    def use_kernels(self, on: bool = True):
        """Run attention and LayerNorm with the Triton kernels of altclip_kernels/ (on=True) or with torch (on=False).

        Raises RuntimeError, with the reason, when the kernels cannot run here. Attention probabilities
        (output_attentions=True) always come from the readable path. Returns the model.
        """
        fast = None
        if on:
            import altclip_kernels  # imported only when asked for: the model itself needs no Triton

            if (why := altclip_kernels.refusal(self.config)) is not None:
                raise RuntimeError(why)
            fast = altclip_kernels
        for m in self.modules():
            if isinstance(m, (Attention, LayerNorm)):
                m.fast = fast
        return self

    @property
    def kernels(self) -> bool:
        """Whether attention and LayerNorm run on the Triton kernels."""
        return self.text_model.blocks[0].attn.fast is not None if len(self.text_model.blocks) else False

    @property
    def onednn(self) -> bool:
        """Whether the blocks' linears were packed for oneDNN (altclip_kernels/onednn.py, at load time)."""
        return len(self.text_model.blocks) > 0 and not isinstance(self.text_model.blocks[0].mlp.fc1, nn.Linear)

    @property
    def path(self) -> str:
        """Which compute path is on, in words."""
        return ("Triton kernels" if self.kernels else "torch") + (" + oneDNN packed linears" if self.onednn else "")

    def extra_repr(self):
        return f"path={self.path}"

    @property
    def dtype(self):
        return self.visual_projection.weight.dtype

    @property
    def device(self):
        return self.visual_projection.weight.device

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        """(B, L) token ids → (B, projection_dim) text embeddings, float32, not normalised."""
        out = self.text_model(input_ids, attention_mask, token_type_ids, position_ids, skip_padding=True)
        return self.text_projection(out.pooler_output).float()

    def get_image_features(self, pixel_values, interpolate_pos_encoding=False):
        """(B, 3, H, W) pixels → (B, projection_dim) image embeddings, float32, not normalised."""
        out = self.vision_model(pixel_values, interpolate_pos_encoding)
        return self.visual_projection(out.pooler_output).float()

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, return_loss=False, interpolate_pos_encoding=False, output_hidden_states=False,
                output_attentions=False) -> AltCLIPOutput:
        if input_ids is None or pixel_values is None:
            raise ValueError("AltCLIP.forward needs both input_ids and pixel_values; for one side alone use "
                             "get_text_features or get_image_features")
        vision = self.vision_model(pixel_values, interpolate_pos_encoding, output_hidden_states,
                                   output_attentions)
        text = self.text_model(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                               output_attentions)
        image_embeds = F.normalize(self.visual_projection(vision.pooler_output).float(), dim=-1)
        text_embeds = F.normalize(self.text_projection(text.pooler_output).float(), dim=-1)
        logits_per_text = self.logit_scale.float().exp() * text_embeds @ image_embeds.t()  # (texts, images)
        return AltCLIPOutput(
            loss=contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
            text_embeds=text_embeds, image_embeds=image_embeds,
            text_model_output=text, vision_model_output=vision)


AltCLIPModel = AltCLIP  # the documentation page's name


# -----------------------------------------------------------------------------
# Each tower on its own, as the documentation page has them (AltDiffusion-style models condition on the text tower's
# projected sequence). Their parameter names are the two-tower model's, so a full checkpoint loads into either.


class _Tower(nn.Module):
    parts = ()  # the two-tower model's attributes this model has: its parameters' prefixes in a full checkpoint

    @classmethod
    def from_pretrained(cls, source="BAAI/AltCLIP", *, dtype: torch.dtype = torch.float32, device="cpu"):
        """This tower of a full AltCLIP checkpoint (folder or hub repo id), in eval mode. Only its own tensors are
        read; the other tower's are never mapped. A tensor of the tower missing from the checkpoint is an error."""
        import load_weights  # the loader reads files and knows no model class: imported when used

        load_weights.warn_if_emulated(dtype, device)
        folder, weights = load_weights.resolve(source)
        config = cls.sub_config(load_weights.load_config(folder))
        with torch.device("meta"):  # shapes only: no memory and no random initialisation
            model = cls(config)
        model.load_state_dict(load_weights.state_dict(weights, model, dtype, device,
                                                      part=tuple(p + "." for p in cls.parts)),
                              strict=True, assign=True)
        return model.eval()

    @property
    def path(self) -> str:
        return "torch"  # a tower alone runs the readable path (no Triton kernels, no oneDNN packing)

    @property
    def dtype(self):
        return next(self.parameters()).dtype

    @property
    def device(self):
        return next(self.parameters()).device


class AltCLIPTextModel(_Tower):
    """The text tower alone: XLM-R, then pre_LN + transformation. `last_hidden_state` is the projected sequence,
    (B, L, project_dim); `pooler_output` its <s> row (what AltCLIPModel feeds to text_projection)."""
    parts = ("text_model",)
    sub_config = staticmethod(lambda config: config.text)

    def __init__(self, config: AltCLIPTextConfig | None = None):
        super().__init__()
        self.config = config = config or AltCLIPTextConfig()
        self.text_model = TextTower(config)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                output_hidden_states=False, output_attentions=False) -> TowerOutput:
        return self.text_model(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                               output_attentions)


class AltCLIPVisionModel(_Tower):
    """The image tower alone: CLIP's ViT. `last_hidden_state` is (B, 1 + patches, hidden), not normalised;
    `pooler_output` the class token after post-LayerNorm (what AltCLIPModel feeds to visual_projection)."""
    parts = ("vision_model",)
    sub_config = staticmethod(lambda config: config.vision)

    def __init__(self, config: AltCLIPVisionConfig | None = None):
        super().__init__()
        self.config = config = config or AltCLIPVisionConfig()
        self.vision_model = VisionTower(config)

    def forward(self, pixel_values, interpolate_pos_encoding=False, output_hidden_states=False,
                output_attentions=False) -> TowerOutput:
        return self.vision_model(pixel_values, interpolate_pos_encoding, output_hidden_states, output_attentions)


class AltCLIPTextModelWithProjection(AltCLIPTextModel):
    """The text tower and text_projection, without the image tower: `get_text_features` as AltCLIPModel has it, for
    work that needs text embeddings only (a search whose images are all indexed). Not on the page; CLIP has one."""
    parts = ("text_model", "text_projection")
    sub_config = staticmethod(lambda config: config)

    def __init__(self, config: AltCLIPConfig | None = None):
        config = config or AltCLIPConfig()
        super().__init__(config.text)
        self.config = config
        self.text_projection = nn.Linear(config.text.project_dim, config.projection_dim, bias=False)

    get_text_features = AltCLIP.get_text_features


# -----------------------------------------------------------------------------
# Image preprocessing: CLIP's recipe, which BAAI/AltCLIP's preprocessor_config.json asks for.

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # per-channel statistics of CLIP's training images
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(OSError):
    """An image file that cannot be opened or decoded. The message names the file and the reason."""


def load_image(path) -> Image.Image:
    """Open and decode an image file, turned upright by its EXIF orientation tag (as a photo viewer shows it)."""
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image)  # decodes the pixels into a new image, so the file can be closed
    except Image.UnidentifiedImageError:
        reason = "not an image file, or in a format Pillow cannot read"
    except Exception as e:  # missing file, permissions, truncated or corrupt data: Pillow raises many error types
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    raise ImageError(f"cannot open image '{path}': {reason}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB. Transparency (an alpha band, or a transparent palette entry or colour) is composited onto
    white, as the reference does; PIL's plain convert("RGB") would drop alpha and show whatever colour hides there."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def preprocess(images, size: int = 224) -> torch.Tensor:
    """PIL images or image paths → (B, 3, size, size) float32 pixel values, as the reference CLIPImageProcessor
    (PIL backend) makes them for BAAI/AltCLIP.

    `images` is a PIL image, a path, or a list of them. A path is opened with load_image, so a photo's EXIF
    orientation is applied; an image already in memory is used as it is (pass it through ImageOps.exif_transpose
    first if it should be turned upright).

    1. RGB, with transparency composited onto white;
    2. resize with PIL's bicubic filter so that the shorter side is `size`;
    3. crop the central size × size square;
    4. scale to [0, 1], then subtract CLIP's mean and divide by its std, per channel.
    """
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("preprocess needs at least one image")
    crops = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess takes PIL images or paths, not {type(image).__name__}")
        image = to_rgb(image)
        w, h = image.size
        # The longer side is rounded down, as the reference does: 500×60 becomes 1866×224, not 1867×224.
        long = int(size * max(w, h) / min(w, h))
        image = image.resize((size, long) if w <= h else (long, size), Image.BICUBIC)
        # The shorter side is now exactly `size`, so the crop never needs padding. Offsets are rounded down: an odd
        # surplus leaves one more row (column) below (right of) the crop than above (left of) it.
        x = np.array(image)  # (H, W, 3) uint8
        top, left = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
        crops.append(torch.from_numpy(x[top:top + size, left:left + size]).permute(2, 0, 1))  # (3, size, size)
    x = torch.stack(crops).float() / 255  # (B, 3, size, size) in [0, 1]
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


# -----------------------------------------------------------------------------
# The processor: tokenizer (tokenizer.py) and image preprocessing (above) behind the reference's one call.


class BatchFeature(dict):
    """What the processor returns: a dict, so `model(**inputs)` takes it, whose keys also read as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no {name!r} here; the keys are {list(self)}") from None

    def to(self, device=None, dtype=None):
        """Every tensor to `device`; floating-point ones (pixel_values) also to `dtype`, never the token ids."""
        return BatchFeature({k: v.to(device, dtype if v.is_floating_point() else None) if torch.is_tensor(v) else v
                             for k, v in self.items()})


class CLIPImageProcessor:
    """The image side of AltCLIPProcessor: `preprocess` with the size a checkpoint's preprocessor_config.json names.
    Only CLIP's recipe is supported (shortest edge resized to the crop size, bicubic, CLIP's mean and std): a
    config asking for anything else is refused by name rather than silently processed another way."""

    def __init__(self, size: int = 224):
        self.size = size

    @classmethod
    def from_config(cls, d: dict) -> "CLIPImageProcessor":
        def side(value, key):  # {"shortest_edge": 224} or {"height": 224, "width": 224} or 224
            if isinstance(value, dict):
                sides = {value[k] for k in key if k in value}
                return sides.pop() if len(sides) == 1 else None
            return value
        size = side(d.get("size", 224), ["shortest_edge", "height", "width"])
        crop = side(d.get("crop_size", size), ["height", "width"])
        recipe = {"resample": 3, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
        odd = {k: d[k] for k, v in recipe.items() if k in d and d[k] != v}
        if size is None or size != crop or odd or not d.get("do_center_crop", True):
            raise ValueError(f"preprocessor_config.json asks for size {d.get('size')}, crop_size "
                             f"{d.get('crop_size')}{', ' + str(odd) if odd else ''}: only CLIP's recipe (resize the "
                             f"shortest edge to the crop size, bicubic, CLIP's mean and std) is supported")
        return cls(int(size))

    def __call__(self, images, return_tensors=None) -> BatchFeature:
        return BatchFeature(pixel_values=_as_tensors(preprocess(_as_images(images), self.size), return_tensors))

    def __repr__(self):
        return f"CLIPImageProcessor(size={self.size})"


class AltCLIPProcessor:
    """XLM-R's tokenizer and CLIP's image preprocessing in one call, as the reference's AltCLIPProcessor:

        processor = AltCLIPProcessor.from_pretrained("BAAI/AltCLIP")
        inputs = processor(text=["a photo of a cat"], images=image, return_tensors="pt", padding=True)
        model(**inputs)        # input_ids, attention_mask, pixel_values
    """

    def __init__(self, image_processor: CLIPImageProcessor, tokenizer):
        self.image_processor, self.tokenizer = image_processor, tokenizer

    @classmethod
    def from_pretrained(cls, source="BAAI/AltCLIP") -> "AltCLIPProcessor":
        """From a checkpoint folder or hub repo id: sentencepiece.bpe.model (tokenizer.json is not needed) and, if
        there is one, preprocessor_config.json (CLIP's 224 px otherwise)."""
        import json
        from pathlib import Path

        from tokenizer import Tokenizer, download  # tokenizer.py stands beside this file; imported when used

        folder = Path(source)
        if folder.is_dir():
            config = folder / "preprocessor_config.json"
            config = config if config.is_file() else None
        else:
            try:
                config = download(str(source), "preprocessor_config.json")
            except FileNotFoundError:
                config = None
        image_processor = CLIPImageProcessor.from_config(json.loads(config.read_text()) if config else {})
        return cls(image_processor, Tokenizer.from_pretrained(source))

    def __call__(self, images=None, text=None, *, return_tensors=None, padding=False, truncation=None,
                 max_length=None) -> BatchFeature:
        """Token ids and attention mask of `text` (a string or a list of them) and pixel values of `images` (a PIL
        image, a path, an (H, W, 3) uint8 array, or a list of them), either or both.

        padding: False (each text its own length), True / "longest", or "max_length". truncation: True or False,
        as the reference; when not given, texts are cut at max_length, or at the model's 512 tokens (where the
        reference would let a longer text through to crash the model). return_tensors: "pt", "np" or None (lists).
        """
        if text is None and images is None:
            raise ValueError("AltCLIPProcessor needs text=, images= or both; got neither")
        out = BatchFeature()
        if text is not None:
            out.update(self._tokenize(text, return_tensors, padding, truncation, max_length))
        if images is not None:
            out.update(self.image_processor(images, return_tensors))
        return out

    def _tokenize(self, text, return_tensors, padding, truncation, max_length):
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a string or a list of strings, got {_what(text)}")
        if not texts:
            raise ValueError("text is an empty list")
        limit = max_length or self.tokenizer.model_max_length
        if truncation in (False, "do_not_truncate"):
            limit = sys.maxsize
        elif truncation not in (None, True, "longest_first", "only_first"):
            raise ValueError(f"truncation must be True, False, 'longest_first' or 'do_not_truncate', got {truncation!r}")
        rows = self.tokenizer.encode_batch(texts, limit)
        if padding in (True, "longest"):
            width = max(map(len, rows))
        elif padding == "max_length":
            width = max([max_length or self.tokenizer.model_max_length, *map(len, rows)])
        elif padding in (False, None, "do_not_pad"):
            width = None
        else:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if width is not None:
            pad = self.tokenizer.pad_token_id
            rows, masks = [r + [pad] * (width - len(r)) for r in rows], [[1] * len(r) + [0] * (width - len(r))
                                                                          for r in rows]
        else:
            masks = [[1] * len(r) for r in rows]
        if return_tensors is not None and len(set(map(len, rows))) > 1:
            raise ValueError(f"the texts have different lengths ({sorted(set(map(len, rows)))} tokens) and cannot "
                             f"form one tensor: pass padding=True")
        if return_tensors is None and isinstance(text, str):
            return {"input_ids": rows[0], "attention_mask": masks[0]}  # one text, no batch: flat lists, as the reference
        return {"input_ids": _as_tensors(rows, return_tensors), "attention_mask": _as_tensors(masks, return_tensors)}

    def decode(self, ids, skip_special_tokens=False) -> str:
        """The text of one sequence of ids, special tokens shown unless skip_special_tokens (the reference's)."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens=False) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in sequences]

    def __repr__(self):
        return f"AltCLIPProcessor({self.image_processor}, tokenizer of {self.tokenizer.vocab_size} ids)"


def _what(x) -> str:
    """A short description of a wrong input, for error messages: its type, and its value when short."""
    shown = repr(x)
    return type(x).__name__ + (f" {shown}" if len(shown) <= 40 else "")


def _as_images(images) -> list:
    """PIL images, paths and (H, W, 3) uint8 arrays, alone or in a list → PIL images. A wrong one is a one-line
    TypeError or ValueError naming it."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("images is an empty list")
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            try:
                item = load_image(item)
            except ImageError as e:
                raise ValueError(str(e)) from None
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3 and item.shape[-1] == 3:
            item = Image.fromarray(item)
        if not isinstance(item, Image.Image):
            raise TypeError(f"images must be PIL images, image paths or (H, W, 3) uint8 arrays, got {_what(item)}"
                            + (f" of shape {item.shape}, {item.dtype}" if isinstance(item, np.ndarray) else ""))
        out.append(item)
    return out


def _as_tensors(x, return_tensors):
    """Lists of ids, or a (B, ...) float tensor → what return_tensors asks for: "pt", "np", or None (lists; the
    reference gives images as a list of arrays)."""
    if return_tensors == "pt":
        return x if torch.is_tensor(x) else torch.tensor(x, dtype=torch.int64)
    if return_tensors == "np":
        return x.numpy() if torch.is_tensor(x) else np.array(x, dtype=np.int64)
    if return_tensors is None:
        return list(x.numpy()) if torch.is_tensor(x) else x
    raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")

