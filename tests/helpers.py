"""Helpers shared by the tests (and by the benchmarks and notebooks that need the same fixtures): nothing here is
a test. Three kinds:

1. Tiny random AltCLIP checkpoints, made with the reference (transformers, test-only) in the real file formats. The
   geometry is the real one where it matters (224 px images, 14 px patches → 257 tokens; 514 text positions), the
   widths are tiny (64 wide, 4 heads of 16, so the Triton kernels' head sizes apply too).
2. A small XLM-R-like sentencepiece model, trained in a second from an embedded multilingual corpus. XLM-R's
   `sentencepiece.bpe.model` is, despite its name, a *unigram* model with the default `nmt_nfkc` normaliser and
   sentencepiece's default ids `<unk>`=0, `<s>`=1, `</s>`=2; the reference tokenizer rebuilds it as a unigram model,
   so the fixture is trained the same way. `train_sentencepiece(folder)` gives a tokenizer folder without download.
3. Inputs and reference pieces several test files use: ragged id batches, random pixels, the reference's image
   processor with BAAI/AltCLIP's settings.
"""
from __future__ import annotations

from pathlib import Path
import io
import json
import pathlib
import random

import sentencepiece as spm
import torch

# ---------------------------------------------------------------------------------------------------------------------
# 1. Tiny random checkpoints.

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
    """A checkpoint folder as `--model` takes it: a small multilingual tokenizer (section 2), and the tiny
    reference model of `seed` sized to it, saved as config.json + model.safetensors."""
    from tokenizer import Tokenizer

    train_sentencepiece(folder)
    return save_checkpoint(tiny_reference(seed=seed, vocab_size=Tokenizer.from_pretrained(folder).vocab_size), folder)


# ---------------------------------------------------------------------------------------------------------------------
# 2. A small sentencepiece model.

# Words per language; Chinese, Japanese and Thai are written without spaces between words.
WORDS = {
    "en": "a photo of the cat dog bird house car tree city river mountain beautiful small big red blue green "
          "running sleeping eating on in with and is are was people children picture night morning".split(),
    "de": "ein Foto der die das Katze Hund Vogel Haus Auto Baum Stadt Fluss Berg schön klein groß rot blau grün "
          "Straße Mädchen über Größe schläft läuft und mit".split(),
    "fr": "une photo du chat chien oiseau maison voiture arbre ville rivière montagne belle petit grand rouge bleu "
          "vert été à côté très où garçon forêt et avec".split(),
    "es": "una foto del gato perro pájaro casa coche árbol ciudad río montaña bonito pequeño grande niño año "
          "mañana y con".split(),
    "ru": "фотография кошки собаки птицы дом машина дерево город река гора красивый маленький большой красный "
          "синий зелёный и с на ночью".split(),
    "ar": "صورة قطة كلب طائر منزل سيارة شجرة مدينة نهر جبل جميل صغير كبير أحمر أزرق و في مع".split(),
    "hi": "एक बिल्ली की तस्वीर कुत्ता पक्षी घर गाड़ी पेड़ शहर नदी पहाड़ सुंदर छोटा बड़ा लाल नीला और में".split(),
    "ko": "고양이 사진 개 새 집 자동차 나무 도시 강 산 아름다운 작은 큰 빨간 파란 그리고 에서".split(),
    "el": "μια φωτογραφία γάτα σκύλος πουλί σπίτι αυτοκίνητο δέντρο πόλη ποτάμι βουνό όμορφο και".split(),
    "zh": "一张 猫 的 照片 狗 鸟 房子 汽车 树 城市 河 山 美丽 小 大 红色 蓝色 在 和 上 里".split(),
    "ja": "猫 の 写真 犬 鳥 家 車 木 都市 川 山 きれい な 小さい 大きい 赤い カタカナ テレビ カメラ コーヒー "
          "です が を に と".split(),
    "th": "ภาพ แมว สุนัข นก บ้าน รถ ต้นไม้ เมือง แม่น้ำ ภูเขา สวย และ".split(),
}
UNSPACED = {"zh", "ja", "th"}
EXTRA = ["🐱", "🐶", "🚗", "❤️", "👍", "😀", "1", "2", "3", "10", "2024", "100%", ",", ".", "!", "?", "-", "(", ")",
         "'", '"', ":", "€", "$"]


def corpus(lines_per_language=30, seed=0):
    """Sentences of 3-10 random words per language, with digits, punctuation and emoji sprinkled in."""
    rng = random.Random(seed)
    lines = []
    for lang, words in WORDS.items():
        for _ in range(lines_per_language):
            sentence = rng.choices(words, k=rng.randint(3, 10)) + rng.choices(EXTRA, k=rng.randint(0, 2))
            lines.append(("" if lang in UNSPACED else " ").join(sentence))
    rng.shuffle(lines)
    return lines


def train_sentencepiece(out_dir, vocab_size=1000, **special_ids):
    """Train the model into `out_dir/sentencepiece.bpe.model` (plus the reference's small JSON files); return it.

    special_ids: sentencepiece's unk_id, bos_id, eos_id, pad_id (-1 for none), for a layout other than XLM-R's
    (unk 0, bos 1, eos 2, no pad), as some third-party models have."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,     # a small corpus may support fewer pieces than asked for
        character_coverage=1.0,     # every character of the corpus is a piece; others are unknown
        normalization_rule_name="nmt_nfkc",
        num_threads=1,              # deterministic
        seed_sentencepiece_size=100_000,
        minloglevel=2,              # keep the trainer's log out of test output
        **special_ids,
    )
    path = out_dir / "sentencepiece.bpe.model"
    path.write_bytes(model.getvalue())
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512}, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>",
         "cls_token": "<s>", "mask_token": "<mask>"}, indent=2))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# 3. Inputs and reference pieces.

# BAAI/AltCLIP's preprocessor_config.json, copied here: never altclip's own CLIP_MEAN/CLIP_STD, or a wrong constant
# there would be compared with itself. test_preprocess.py checks them against transformers' OpenAI CLIP constants.
BAAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
BAAI_STD = (0.26862954, 0.26130258, 0.27577711)


def reference_processor():
    """The reference CLIPImageProcessor (PIL backend) with BAAI/AltCLIP's preprocessor_config.json, written out."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True, crop_size=224,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(BAAI_MEAN),
        image_std=list(BAAI_STD), do_convert_rgb=True)


def ragged_batch(lengths, total=None, vocab=1000, seed=0):
    """Right-padded ids `<s> … </s> <pad>…` with the given real lengths (specials included), and their mask."""
    g = torch.Generator().manual_seed(seed)
    total = total or max(lengths)
    ids = torch.ones(len(lengths), total, dtype=torch.long)  # 1 = <pad>
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, vocab, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = 0, 2
    return ids, (ids != 1).long()


def images(n, h=224, w=224, seed=0):
    """Random pixel values, (n, 3, h, w), as preprocessing would hand them to the model."""
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
