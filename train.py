"""
Train a mini AltCLIP on generated coloured shapes with the paper's recipe, in minutes on a CPU.

Chen et al., "AltCLIP: Altering the Language Encoder in CLIP for Extended Language Capabilities", 2022
(https://arxiv.org/abs/2211.06679), Methodology: CLIP's image tower is kept, its text tower is the *teacher* of a
multilingual XLM-R student, in two stages. Here everything is `altclip.AltCLIP` at a small width, and the world is
shapes.py's (one coloured shape per image, captions in ten languages):

  stage 0  a CLIP stand-in, since there is no OpenAI CLIP of this world: image tower + text tower trained from
           scratch with CLIP's contrastive loss on English captions only. It is the teacher.
  stage 1  teacher learning (text only, not one image): a fresh text tower (XLM-R architecture, a sentencepiece
           unigram tokenizer trained on the captions of all ten languages) learns to put every caption where the
           teacher puts its English version: MSE on the <s> output through pre_LN + transformation. The image
           tower, text_projection and logit_scale are the teacher's, unchanged.
  stage 2  contrastive learning on (image, caption in any language) pairs, the image tower frozen.

After each stage the model is tested on a freshly generated test set (all 36 classes, 8 of them never seen in
training): zero-shot top-1 per language, the same on the held-out classes alone, and text↔image recall@1. The
result is saved in BAAI/AltCLIP's layout, so load_weights.load_pretrained, `python altclip.py --model DIR` and
transformers' AltCLIPModel all load it.

    python train.py --out examples/mini-altclip                   # the whole recipe
    python train.py --eval examples/mini-altclip --seed 7 --json scores.json   # a fresh test set from seed 7

The same two stages, pointed at any AltCLIP checkpoint (a folder or a hub id) and your own data ("make it yours"):

    python train.py teach --model BAAI/AltCLIP --pairs PAIRS.tsv --out my-altclip     # known<TAB>translation
    python train.py tune --model BAAI/AltCLIP --data CAPTIONS.tsv --out my-altclip    # image<TAB>caption
    torchrun --nproc_per_node 4 train.py teach …                                     # data-parallel
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

# Threads that wait for work sleep instead of spinning: on a CPU shared with other processes, a spinning OpenMP
# thread holds a core that its descheduled partner needs, and every small op waits for it. Read when torch loads
# OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

import shapes  # noqa: E402
from altclip import AltCLIP, AltCLIPConfig, TextConfig, VisionConfig, contrastive_loss, normalize_pixels  # noqa: E402
from load_weights import CheckpointError, load_pretrained, resolve, save_pretrained  # noqa: E402
from tokenizer import MODEL_FILE, TOKENIZER_FILES, Tokenizer, write_config  # noqa: E402

# -----------------------------------------------------------------------------
# The recipe's sizes and schedule. The defaults made examples/mini-altclip.


@dataclass(frozen=True)
class Towers:
    """The CLIP stand-in's towers and its tokenizer: what stage 0 builds."""
    # the image tower reads 224 px images in 14 px patches (16 × 16 + 1 tokens), as CLIP ViT-L/14
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 64
    vision_layers: int = 2
    text_width: int = 96  # the teacher's text tower, and the width of its text representation (project_dim)
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    vocab_size: int = 1000  # asked of sentencepiece; a small corpus may give fewer pieces
    max_positions: int = 66  # 64 tokens per text (positions 0 and 1 are taken by the padding offset)
    tokenizer_scenes: int = 4000  # scenes whose captions, in every language, train the tokenizer


@dataclass(frozen=True)
class Stage:
    """One stage's data and schedule: AdamW, linear warm-up, cosine decay to zero."""
    steps: int
    batch: int
    lr: float
    images: int = 0  # training pictures drawn for this stage (each stage its own; stage 1 sees none)
    warmup: float = 0.05  # fraction of the steps
    weight_decay: float = 0.05


@dataclass(frozen=True)
class Recipe:
    """The recipe's sizes and schedule. The defaults made examples/mini-altclip."""
    towers: Towers = Towers()
    student_width: int = 96  # the student's own width; its transformation maps it to the teacher's text_width
    student_layers: int = 3
    test_per_class: int = 20  # 36 classes × 20 = 720 test images
    stage0: Stage = Stage(steps=400, batch=128, lr=2e-3, images=8000)
    stage1: Stage = Stage(steps=700, batch=32, lr=1e-3)  # scenes per step, each in all ten languages: 320 captions
    stage2: Stage = Stage(steps=300, batch=256, lr=3e-4, images=4000)

    def stage0_key(self) -> dict:
        """Everything stage 0 reads (the towers, the tokenizer's corpus, its own stage): a cached teacher is reused
        only when this is the same."""
        return {"towers": asdict(self.towers), "stage0": asdict(self.stage0)}

    def with_steps(self, s0: int, s1: int, s2: int) -> "Recipe":
        return replace(self, stage0=replace(self.stage0, steps=s0), stage1=replace(self.stage1, steps=s1),
                       stage2=replace(self.stage2, steps=s2))

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """The inverse of asdict; also reads the flat layout that results.json of earlier runs holds (`steps0`,
        `batch0`, `lr0`, … and one warm-up and weight decay for all stages)."""
        if "towers" in d:
            return cls(Towers(**d["towers"]), **{k: Stage(**v) if k.startswith("stage") else v
                                                 for k, v in d.items() if k != "towers"})
        towers = Towers(**{f.name: d[f.name] for f in fields(Towers)})
        schedule = {"warmup": d["warmup"], "weight_decay": d["weight_decay"]}
        return cls(towers, d["student_width"], d["student_layers"], d["test_per_class"],
                   *(Stage(d[f"steps{k}"], d[f"batch{k}"], d[f"lr{k}"], d.get(f"images{k}", 0), **schedule)
                     for k in range(3)))


SMOKE = Recipe(Towers(image_size=56, patch_size=14, vision_width=16, vision_layers=1, text_width=16, text_layers=1,
                      heads=2, projection_dim=8, vocab_size=300, tokenizer_scenes=200),
               student_width=24, student_layers=1, test_per_class=2, stage0=Stage(3, 16, 2e-3, images=48),
               stage1=Stage(3, 4, 1e-3), stage2=Stage(3, 16, 3e-4, images=32))

TRAIN_SEED, TEST_SEED = 0, 1  # the test set is generated from its own seed, never the training one
STAGES = {"stage0": "0: teacher (CLIP stand-in)", "stage1": "1: teacher learning", "stage2": "2: contrastive"}


# -----------------------------------------------------------------------------
# The two losses, as the paper writes them.


def clip_loss(text_embeds, image_embeds, logit_scale):
    """CLIP's symmetric InfoNCE (Radford et al. 2021, Figure 3), which AltCLIP's contrastive learning stage uses:
    logits = exp(t) · T̂ Îᵀ with T̂, Î the L2-normalised embeddings of B matching pairs, and
    L = ½ [CE(logits, diag) + CE(logitsᵀ, diag)] (altclip.contrastive_loss): each text picks its image among B,
    and each image its text."""
    t, i = F.normalize(text_embeds.float(), dim=-1), F.normalize(image_embeds.float(), dim=-1)
    return contrastive_loss(logit_scale.float().exp() * t @ i.t())  # logits (B texts, B images)


def teacher_learning_loss(student, teacher):
    """AltCLIP's teacher learning stage: L = mean over the batch and the d dimensions of (s − t)², where s is the
    student's <s> output (through pre_LN + transformation) for a caption in any language and t the teacher's text
    representation, before projection, of the English caption it translates."""
    return ((student - teacher) ** 2).mean()


# -----------------------------------------------------------------------------
# Data: scenes, their images and captions (shapes.py), tokens.


def render(scenes, size: int):
    """Scenes → uint8 (N, 3, size, size): drawn at 224 px by shapes.py, then resized the way altclip.preprocess
    resizes a 224 px image file for a model of `size` px (PIL bicubic), so that training sees what
    `python altclip.py image.png …` shows the model."""
    if size == shapes.IMAGE_SIZE:
        return shapes.make_images(scenes)
    out = torch.empty(len(scenes), 3, size, size, dtype=torch.uint8)
    for k, scene in enumerate(scenes):
        out[k] = torch.from_numpy(np.array(shapes.render(scene).resize((size, size), Image.BICUBIC))).permute(2, 0, 1)
    return out


def pixel_values(images):
    """uint8 (B, 3, S, S) → what altclip.preprocess makes of the same S × S image (its resize and crop are then the
    identity): scaled to [0, 1], normalised with CLIP's mean and std."""
    return normalize_pixels(images.float() / 255)


class Captions:
    """Captions → padded token ids. The captions of this world repeat a lot, so each distinct one is tokenized once."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids = tokenizer, {}

    def __call__(self, texts):
        rows = [self.ids.get(t) or self.ids.setdefault(t, self.tokenizer.encode(t)) for t in texts]
        input_ids = torch.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)
        mask = torch.zeros_like(input_ids)
        for k, row in enumerate(rows):
            input_ids[k, :len(row)], mask[k, :len(row)] = torch.tensor(row), 1
        return input_ids, mask


# Chinese and Japanese script (CJK ideographs, hiragana, katakana): written without spaces between words.
UNSPACED = re.compile("([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def train_tokenizer(texts, folder: Path, vocab_size: int, max_length: int) -> Tokenizer:
    """A sentencepiece unigram model like XLM-R's (nmt_nfkc normalisation, every character a piece), trained on
    `texts` and saved as sentencepiece.bpe.model with the reference's tokenizer files beside it.

    Chinese and Japanese characters are learned one by one: in so small and repetitive a corpus the trainer would
    otherwise take whole phrases ("赤い丸", red circle) as single pieces, and a colour-shape pair never seen in
    training would share no piece with the seen ones. (XLM-R, trained on 2.5 TB, splits these scripts mostly into
    characters and short words.) The texts are tokenized as they are; only the trainer sees the spaces."""
    import sentencepiece as spm

    texts = [" ".join(UNSPACED.sub(r" \1 ", text).split()) for text in texts]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, model_type="unigram",
                                   vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
                                   normalization_rule_name="nmt_nfkc", num_threads=1,  # one thread: deterministic
                                   minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_FILE).write_bytes(model.getvalue())
    write_config(folder, max_length)
    return Tokenizer(folder / MODEL_FILE, model_max_length=max_length)


@dataclass
class TestSet:
    scenes: list  # per_class rounds of the 36 classes in CLASSES order: scene k belongs to class k % 36
    images: torch.Tensor  # (N, 3, S, S) uint8, S the model's image size
    captions: list  # per scene, {lang: caption}
    seed: int


def make_test_set(seed: int, per_class: int, image_size: int) -> TestSet:
    """All 36 classes, held-out ones included, `per_class` images each, generated afresh from `seed`, with captions
    in shapes.LANGUAGES and shapes.NEW_LANGUAGES."""
    rng = random.Random(seed)
    scenes, caps = [], []
    for _ in range(per_class):
        for cls in shapes.CLASSES:
            scenes.append(shapes.sample_scene(rng, [cls]))
            caps.append(shapes.captions(scenes[-1], rng))
    new = random.Random(f"{seed} new languages")  # a stream of their own: the others' captions stay as they were
    for scene, drawn in zip(scenes, caps):
        drawn.update(shapes.captions(scene, new, shapes.NEW_LANGUAGES))
    return TestSet(scenes, render(scenes, image_size), caps, seed)


# -----------------------------------------------------------------------------
# Evaluation: zero-shot classification per language, and retrieval.


@torch.no_grad()
def image_features(model: AltCLIP, images, batch=128):
    """uint8 images → L2-normalised image embeddings (N, projection_dim)."""
    out = [model.get_image_features(pixel_values(images[k:k + batch])) for k in range(0, len(images), batch)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def text_features(model: AltCLIP, captions: Captions, texts, batch=512):
    out = [model.get_text_features(*captions(texts[k:k + batch])) for k in range(0, len(texts), batch)]
    return F.normalize(torch.cat(out), dim=-1)


def evaluate(model: AltCLIP, tokenizer: Tokenizer, test: TestSet, captions: Captions | None = None,
             languages=shapes.LANGUAGES) -> dict:
    """Zero-shot top-1 per language among the 36 class labels (all images, and the held-out classes' images alone),
    and recall@1 both ways within rounds of 36 image-caption pairs, one per class (chance 1/36 for each)."""
    model.eval()
    captions = captions or Captions(tokenizer)
    n_classes = len(shapes.CLASSES)
    images = image_features(model, test.images)  # (N, P)
    truth = torch.arange(len(images)) % n_classes
    unseen = torch.tensor([tuple(c) in shapes.HELD_OUT for c in shapes.CLASSES])[truth]
    labels = {lang: [shapes.label(c, s, lang) for c, s in shapes.CLASSES] for lang in languages}
    top1, top1_unseen, t2i, i2t = {}, {}, {}, {}
    for lang in languages:
        guess = (images @ text_features(model, captions, labels[lang]).t()).argmax(dim=1)  # (N,)
        top1[lang] = (guess == truth).float().mean().item()
        top1_unseen[lang] = (guess == truth)[unseen].float().mean().item()
        texts = text_features(model, captions, [c[lang] for c in test.captions])  # (N, P)
        sim = torch.einsum("rip,rjp->rij", texts.view(-1, n_classes, texts.shape[-1]),
                           images.view(-1, n_classes, images.shape[-1]))  # (rounds, 36 texts, 36 images)
        target = torch.arange(n_classes)
        t2i[lang] = (sim.argmax(dim=2) == target).float().mean().item()
        i2t[lang] = (sim.argmax(dim=1) == target).float().mean().item()
    return {"classes": n_classes, "chance": 1 / n_classes, "languages": list(languages), "labels": labels,
            "zero_shot_top1": top1, "zero_shot_top1_unseen": top1_unseen,
            "recall_at_1": {"text_to_image": t2i, "image_to_text": i2t},
            "test_set": {"seed": test.seed, "images": len(images), "unseen_images": int(unseen.sum())}}


def format_table(stages: dict) -> str:
    """The paper's kind of table: one row per stage, one column per language, for each measure."""
    first = next(iter(stages.values()))
    langs = first["languages"]
    lines = []
    for title, get in [(f"zero-shot top-1, {first['classes']} classes (chance {first['chance']:.3f})",
                        lambda r: r["zero_shot_top1"]),
                       ("zero-shot top-1 on the held-out classes (never seen in training)",
                        lambda r: r["zero_shot_top1_unseen"]),
                       ("recall@1 text → image (rounds of 36 pairs)", lambda r: r["recall_at_1"]["text_to_image"]),
                       ("recall@1 image → text (rounds of 36 pairs)", lambda r: r["recall_at_1"]["image_to_text"])]:
        lines += [title, f"{'stage':<28}" + "".join(f"{lang:>6}" for lang in langs)]
        for name, result in stages.items():
            lines.append(f"{STAGES.get(name, name):<28}" + "".join(f"{get(result)[lang]:6.2f}" for lang in langs))
        lines.append("")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Optimisation, shared by the stages.


def adamw(params, stage: Stage) -> torch.optim.AdamW:
    """AdamW with CLIP's betas and eps; weight decay on matrices only (not on biases, LayerNorm weights, embeddings
    of one vector or the temperature)."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": stage.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=stage.lr, betas=(0.9, 0.98), eps=1e-6)


def optimise(params, stage: Stage, loss_fn, desc: str, after_step=None) -> list:
    """AdamW on `params` for the stage's steps of `loss_fn(step)`, with linear warm-up then cosine decay to zero.
    Returns the loss of every step."""
    steps = stage.steps
    opt = adamw(params, stage)
    warmup = max(1, round(stage.warmup * steps))

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    history = []
    bar = tqdm(range(steps), desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True)
    for step in bar:
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        scheduler.step()
        if after_step:
            after_step()
        history.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    return history


def freeze(*modules):
    for m in modules:
        for p in (m.parameters() if isinstance(m, torch.nn.Module) else [m]):
            p.requires_grad_(False)


# -----------------------------------------------------------------------------
# The stages.


def new_teacher(towers: Towers, vocab_size: int) -> AltCLIP:
    """An AltCLIP of the recipe's size at random: the CLIP stand-in that stage 0 trains."""
    vision = VisionConfig(image_size=towers.image_size, patch_size=towers.patch_size, hidden_size=towers.vision_width,
                          intermediate_size=4 * towers.vision_width, num_hidden_layers=towers.vision_layers,
                          num_attention_heads=towers.heads)
    text = TextConfig(vocab_size=vocab_size, hidden_size=towers.text_width, intermediate_size=4 * towers.text_width,
                      num_hidden_layers=towers.text_layers, num_attention_heads=towers.heads,
                      max_position_embeddings=towers.max_positions, project_dim=towers.text_width)
    return AltCLIP(AltCLIPConfig(text=text, vision=vision, projection_dim=towers.projection_dim))


def new_student(recipe: Recipe, teacher: AltCLIP) -> AltCLIP:
    """The multilingual model at the start of stage 1: copies of the teacher's image tower, both projections and its
    temperature, and a fresh XLM-R-style text tower of its own width whose transformation lands in the teacher's
    text space (the teacher's project_dim), so that text_projection is shared."""
    text = replace(teacher.config.text, hidden_size=recipe.student_width, intermediate_size=4 * recipe.student_width,
                   num_hidden_layers=recipe.student_layers)
    model = AltCLIP(replace(teacher.config, text=text))
    for name in ("vision_model", "visual_projection", "text_projection"):
        getattr(model, name).load_state_dict(getattr(teacher, name).state_dict())
    with torch.no_grad():
        model.logit_scale.copy_(teacher.logit_scale)
    return model


def stage0_clip(teacher: AltCLIP, images, scenes, captions: Captions, stage: Stage, rng: random.Random) -> list:
    """Stage 0, the CLIP stand-in: both towers, both projections and the temperature learn from scratch, with CLIP's
    contrastive loss on (image, English caption) pairs. Nothing is frozen."""
    teacher.train()
    order = []

    def loss(step):
        while len(order) < stage.batch:  # epochs of the images in random order; a fresh caption every time
            order.extend(rng.sample(range(len(images)), len(images)))
        batch = [order.pop() for _ in range(stage.batch)]
        ids, mask = captions([shapes.captions(scenes[k], rng)["en"] for k in batch])
        text = teacher.text_projection(teacher.text_model(ids, mask, skip_padding=True).pooler_output)
        image = teacher.visual_projection(teacher.vision_model(pixel_values(images[batch])).pooler_output)
        return clip_loss(text, image, teacher.logit_scale)

    def clamp():  # as CLIP: the temperature never scales logits by more than 100
        with torch.no_grad():
            teacher.logit_scale.clamp_(max=math.log(100))
    return optimise(teacher.parameters(), stage, loss, "stage 0: CLIP stand-in", clamp)


def stage1_teacher_learning(student: AltCLIP, teacher: AltCLIP, captions: Captions, stage: Stage,
                            rng: random.Random) -> list:
    """Stage 1, teacher learning: text only. Each step draws scenes (never rendered) with a caption in each of the
    ten languages, and pulls the student's output for every caption to the teacher's for the English one."""
    freeze(teacher)  # the teacher only gives the targets
    freeze(student.vision_model, student.visual_projection, student.text_projection, student.logit_scale)  # the
    # teacher's, kept as they are: only the new text tower learns
    teacher.eval()
    student.train()

    def loss(step):
        groups = [shapes.captions(shapes.sample_scene(rng), rng) for _ in range(stage.batch)]
        with torch.no_grad():
            target = teacher.text_model(*captions([g["en"] for g in groups]), skip_padding=True).pooler_output
        texts = [g[lang] for lang in shapes.LANGUAGES for g in groups]  # language-major: (10 · B,)
        out = student.text_model(*captions(texts), skip_padding=True).pooler_output  # (10 · B, d)
        return teacher_learning_loss(out, target.repeat(len(shapes.LANGUAGES), 1))
    return optimise(student.text_model.parameters(), stage, loss, "stage 1: teacher learning")


def stage2_contrastive(model: AltCLIP, images, scenes, captions: Captions, stage: Stage,
                       rng: random.Random) -> list:
    """Stage 2, contrastive learning on (image, caption in a random language) pairs. The text tower learns; the image
    tower is frozen, and so are both projections and the temperature: the shared space stays the teacher's."""
    freeze(model.vision_model, model.visual_projection, model.text_projection, model.logit_scale)
    model.eval()
    image_embeds = image_features(model, images)  # (N, P): the image side is fixed, so computed once, up front
    model.text_model.train()
    order = []

    def loss(step):
        while len(order) < stage.batch:
            order.extend(rng.sample(range(len(images)), len(images)))
        batch = [order.pop() for _ in range(stage.batch)]
        texts = [shapes.captions(scenes[k], rng)[rng.choice(shapes.LANGUAGES)] for k in batch]
        text = model.text_projection(model.text_model(*captions(texts), skip_padding=True).pooler_output)
        return clip_loss(text, image_embeds[batch], model.logit_scale)
    return optimise(model.text_model.parameters(), stage, loss, "stage 2: contrastive")


# -----------------------------------------------------------------------------
# The whole recipe.


def keep_freed_memory():
    """Let the large tensors one step frees be reused by the next. glibc hands every block over 32 MB back to the
    operating system when it is freed, so each training step faults fresh zeroed pages into its activations, a
    cost bench/train_step.py measures. With the thresholds raised, freed blocks stay in the heap. The numbers
    computed are the same; only where the memory comes from changes. A no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks under 1 GiB come from the heap, not fresh pages...
    libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: ...and the heap is not trimmed back to the system


def seed_everything(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)


def training_scenes(n: int, rng: random.Random) -> list:
    return [shapes.sample_scene(rng, shapes.SEEN) for _ in range(n)]  # held-out classes never appear in training


def train(out: Path, recipe: Recipe = Recipe(), seed: int = TRAIN_SEED, test_seed: int = TEST_SEED,
          teacher_cache: Path | None = None) -> dict:
    """Run stages 0-2, evaluating after each; save the model (and the teacher, in out/teacher) in BAAI/AltCLIP's
    layout with results.json beside it. Returns the results. `teacher_cache`: a folder where the stage-0 teacher
    is kept; found there (same stage-0 recipe, seed and tokenizer), stage 0 is skipped (for tuning stages 1 and 2)."""
    t0 = time.perf_counter()
    out = Path(out)
    rng = random.Random(seed)  # the tokenizer's scenes, then stage 0's: stages 1 and 2 draw from their own seeds
    test = make_test_set(test_seed, recipe.test_per_class, recipe.towers.image_size)
    tokenizer = tokenizer_of_the_world(recipe.towers, rng, out)
    captions = Captions(tokenizer)
    results = {"recipe": asdict(recipe), "seed": seed, "threads": torch.get_num_threads(), "tokenizer_pieces":
               tokenizer.vocab_size, "stages": {}, "loss": {}, "seconds": {}}

    def report(name, model, history, t):
        results["seconds"][name] = round(time.perf_counter() - t, 1)
        results["loss"][name] = subsample(history)
        results["stages"][name] = evaluate(model, tokenizer, test, captions)
        print(format_table({name: results["stages"][name]}), flush=True)

    t = time.perf_counter()
    teacher, history = teacher_from_cache_or_stage0(recipe, captions, rng, seed, out, teacher_cache)
    report("stage0", teacher, history, t)

    t = time.perf_counter()
    model, history = student_from_stage1(recipe, teacher, captions, seed + 1)
    report("stage1", model, history, t)

    t = time.perf_counter()
    history = tune_with_stage2(model, recipe, captions, seed + 2)
    report("stage2", model, history, t)

    results["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    results["targets"] = check_targets(results["stages"])
    save_run(out, model, teacher, results)
    return results


def tokenizer_of_the_world(towers: Towers, rng: random.Random, out: Path) -> Tokenizer:
    """The tokenizer, trained on the captions, in all ten languages, of training scenes only; saved in `out`."""
    corpus = [text for scene in training_scenes(towers.tokenizer_scenes, rng)
              for text in shapes.captions(scene, rng).values()]
    return train_tokenizer(corpus, out, towers.vocab_size, towers.max_positions - 2)


def teacher_from_cache_or_stage0(recipe: Recipe, captions: Captions, rng: random.Random, seed: int, out: Path,
                                 teacher_cache: Path | None) -> tuple[AltCLIP, list]:
    """Stage 0, the CLIP stand-in on English captions only, or its result kept in `teacher_cache` by an earlier run
    of the same stage 0. Returns the teacher and its loss history."""
    scenes0 = training_scenes(recipe.stage0.images, rng)  # drawn either way: the random stream stays the same
    if teacher_cache and (cached := _cached_teacher(teacher_cache, recipe, seed, out / MODEL_FILE)):
        return cached
    images0 = render(scenes0, recipe.towers.image_size)
    seed_everything(seed)
    teacher = new_teacher(recipe.towers, captions.tokenizer.vocab_size)
    history = stage0_clip(teacher, images0, scenes0, captions, recipe.stage0, rng)
    if teacher_cache:
        _save(teacher, Path(teacher_cache), tokenizer_from=out)
        (Path(teacher_cache) / "stage0.json").write_text(json.dumps(
            {"stage0_key": recipe.stage0_key(), "seed": seed, "loss": history}))
    return teacher, history


def student_from_stage1(recipe: Recipe, teacher: AltCLIP, captions: Captions, seed: int) -> tuple[AltCLIP, list]:
    """Stage 1, teacher learning, text only: a fresh student learns from the teacher. Returns it and its losses."""
    seed_everything(seed)
    model = new_student(recipe, teacher)
    return model, stage1_teacher_learning(model, teacher, captions, recipe.stage1, random.Random(seed))


def tune_with_stage2(model: AltCLIP, recipe: Recipe, captions: Captions, seed: int) -> list:
    """Stage 2, contrastive learning on multilingual pairs, on images stage 0 never saw. Returns the losses."""
    rng = random.Random(seed)
    scenes = training_scenes(recipe.stage2.images, rng)
    seed_everything(seed)
    return stage2_contrastive(model, render(scenes, recipe.towers.image_size), scenes, captions, recipe.stage2, rng)


def save_run(out: Path, model: AltCLIP, teacher: AltCLIP, results: dict):
    """The model in `out`, the teacher in out/teacher (BAAI/AltCLIP's layout, tokenizer files beside each), the
    results in out/results.json; the table and the targets on stdout."""
    _save(model, out)
    _save(teacher, out / "teacher", tokenizer_from=out)
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(format_table(results["stages"]))
    print(f"trained in {results['seconds']['total']:.0f} s; saved to {out}")
    for target, ok in results["targets"].items():
        print(f"  {'met ' if ok else 'MISSED'}  {target}")


def check_targets(stages: dict) -> dict:
    """The issue's targets: the paper's claims, in miniature."""
    s1, s2 = stages["stage1"], stages["stage2"]
    en0, en2 = stages["stage0"]["zero_shot_top1"]["en"], s2["zero_shot_top1"]["en"]
    return {
        "after stage 2, English top-1 >= 0.8": en2 >= 0.8,
        "after stage 2, every language >= 0.9 x English": all(v >= 0.9 * en2 for v in s2["zero_shot_top1"].values()),
        "after stage 2, held-out classes >= 0.5 in every language": min(s2["zero_shot_top1_unseen"].values()) >= 0.5,
        "after stage 1 (no image seen), every language >= 0.8 x the teacher's English":
            all(v >= 0.8 * en0 for v in s1["zero_shot_top1"].values()),
    }


def subsample(history: list, points: int = 200) -> list:
    """[[step, loss], …]: at most `points` of them, each the mean of its stretch of steps (for a loss-curve plot)."""
    stride = max(1, math.ceil(len(history) / points))
    return [[k, sum(history[k:k + stride]) / len(history[k:k + stride])] for k in range(0, len(history), stride)]


def _save(model: AltCLIP, folder: Path, tokenizer_from: Path | None = None):
    save_pretrained(model, folder)
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            (folder / name).write_bytes((tokenizer_from / name).read_bytes())


def _cached_teacher(folder: Path, recipe: Recipe, seed: int, spm_model: Path):
    """The stage-0 teacher kept in `folder` by an earlier run with the same stage 0 (Recipe.stage0_key), seed and
    tokenizer, or None."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "stage0.json").read_text())
        same_tokenizer = (folder / MODEL_FILE).read_bytes() == spm_model.read_bytes()
    except OSError:
        return None
    if meta.get("seed") != seed or not same_tokenizer or meta.get("stage0_key") != recipe.stage0_key():
        return None
    model = load_pretrained(folder)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, meta["loss"]


# -----------------------------------------------------------------------------
# Make it yours: the paper's two stages, pointed at any AltCLIP checkpoint and the user's data.
#
#   teach  stage 1 on parallel text (known<TAB>translation): the model's own text tower, frozen, is the teacher of
#          the known side; the student (the same tower, learning) puts the translation where the teacher puts the
#          known sentence. No picture.
#   tune   stage 2 on (picture, caption) pairs: CLIP's contrastive loss against the pictures' embeddings, which the
#          frozen image tower computes once.
#
# Both keep what the model knew with two kinds of anchor, each distilled from the original model (MSE to its
# output): the known side mapped onto itself, and random token sequences ("data-free" anchors). Pieces a new language
# shares with an old one (French and Italian words) would otherwise drag the old language along.
# Both run data-parallel under torchrun: each process takes its share of the global batch, and the gradients are
# summed across processes, so N processes compute the step one process would.


class InputError(Exception):
    """Bad input the user must fix, in one line (file, line, what is wrong): the run stops with status 1."""


@dataclass(frozen=True)
class Adapt:
    """What one `teach` or `tune` run computes; a --resume must find the same (the data file by its bytes)."""
    command: str  # "teach" or "tune"
    model: str
    data: str
    data_sha256: str
    steps: int
    batch: int  # pairs per step, over all processes
    lr: float
    seed: int
    anchors: int  # random token sequences per step, over all processes
    val_fraction: float
    train_embeddings: bool
    precision: str  # "float32" or "bfloat16" (autocast)
    warmup: float = 0.05
    weight_decay: float = 0.01

    def stage(self) -> Stage:
        return Stage(self.steps, self.batch, self.lr, warmup=self.warmup, weight_decay=self.weight_decay)


class Ranks:
    """This process's place among the torchrun processes (one process: rank 0 of 1, and no torch.distributed)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist, self.size = dist, int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def share(self, items: list) -> list:
        """This process's contiguous share of a global batch (the batch is a multiple of the number of processes)."""
        n = len(items) // self.size
        return items[self.rank * n:(self.rank + 1) * n]

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            self.dist.all_reduce(t)
        return t

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's rows of x, in rank order, differentiably (see GatherRows)."""
        return GatherRows.apply(x, self) if self.size > 1 else x

    def barrier(self):
        if self.size > 1:
            self.dist.barrier()


class GatherRows(torch.autograd.Function):
    """all_gather with a backward pass: each process computes the loss over the whole batch divided by the number of
    processes, so the gradient of its own rows is the sum over processes of what their losses send back."""

    @staticmethod
    def forward(ctx, x, ranks):
        parts = [torch.empty_like(x) for _ in range(ranks.size)]
        ranks.dist.all_gather(parts, x.contiguous())
        ctx.ranks, ctx.rows = ranks, len(x)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = ctx.ranks.sum_(grad.contiguous().clone())
        return grad[ctx.ranks.rank * ctx.rows:(ctx.ranks.rank + 1) * ctx.rows], None


class Warnings:
    """One-line warnings about skipped input, `file:line: what`: the first few of each kind in full, then a count."""
    SHOWN = 5

    def __init__(self, quiet: bool = False):
        self.counts, self.quiet = {}, quiet

    def __call__(self, kind: str, message: str):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if not self.quiet and self.counts[kind] <= self.SHOWN:
            tqdm.write(f"train.py: warning: {message}; skipped", file=sys.stderr)  # on a line of its own

    def summary(self, path: Path, good: int) -> str:
        skipped = sum(self.counts.values())
        why = ", ".join(f"{n} {kind}" for kind, n in self.counts.items())
        return f"train.py: {path}: {good} good pair(s)" + (f", {skipped} skipped ({why})" if skipped else "")


def read_lines(path: Path) -> list[str]:
    """The file's lines, without line ends: InputError naming the file when it is missing, unreadable, not UTF-8 or
    holds no line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise InputError(f"{path} is empty")
    return lines


def tab_separated(path: Path, lines, first: int, sides: tuple[str, str], warn: Warnings):
    """(line number, left, right) of each line that is `left<TAB>right` with both sides non-empty; the others are
    skipped with a warning naming the file and the line. Blank lines are skipped quietly."""
    for n, line in enumerate(lines, first):
        if not line.strip():
            continue
        left, tab, right = line.partition("\t")
        if not tab:
            warn("without a tab", f"{path}:{n}: no tab between {sides[0]} and {sides[1]}")
        elif not left.strip() or not right.strip():
            warn("with an empty side", f"{path}:{n}: {sides[0]} or {sides[1]} is empty")
        else:
            yield n, left.strip(), right.strip()


def spelled(tokenizer: Tokenizer, texts) -> list[list[int]]:
    return tokenizer.encode_batch(list(texts))


def all_unknown(ids: list[int], tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer spells a text with <unk> only (a script none of its pieces covers), besides the bare
    word-start piece "▁" that each word of it may begin with."""
    word_start = (tokenizer.vocab.get("\u2581") or (None,))[0]
    return all(i in (tokenizer.unk_token_id, word_start) for i in ids[1:-1])


def read_pairs(path: Path, tokenizer: Tokenizer, warn: Warnings):
    """teach's file: `known<TAB>translation` per line → (known ids, translation ids, line numbers)."""
    rows = list(tab_separated(path, read_lines(path), 1, ("the known sentence", "its translation"), warn))
    known, translated = spelled(tokenizer, (r[1] for r in rows)), spelled(tokenizer, (r[2] for r in rows))
    keep = []
    for k, (n, a, b) in enumerate(rows):
        side = "known sentence" if all_unknown(known[k], tokenizer) else \
            "translation" if all_unknown(translated[k], tokenizer) else None
        if side:
            warn("all <unk>", f"{path}:{n}: the tokenizer spells the {side} {(a if side[0] == 'k' else b)!r:.60} "
                              f"with <unk> only (a script its pieces do not cover)")
        else:
            keep.append(k)
    return [known[k] for k in keep], [translated[k] for k in keep], [rows[k][0] for k in keep]


def read_captions(path: Path, tokenizer: Tokenizer, warn: Warnings):
    """tune's file: a header `image<TAB>caption`, then `picture path<TAB>caption` per line, paths relative to the
    file → (paths, caption ids, line numbers). Pictures are opened later (embed_pictures), once each."""
    lines = read_lines(path)
    header = [f.strip().lower() for f in lines[0].split("\t")]
    first = 2 if header == ["image", "caption"] else 1
    if first == 1:
        print(f"train.py: warning: {path}:1: no header 'image<TAB>caption'; reading line 1 as a pair",
              file=sys.stderr)
    rows = list(tab_separated(path, lines[first - 1:], first, ("the picture", "its caption"), warn))
    ids = spelled(tokenizer, (r[2] for r in rows))
    keep = []
    for k, (n, _, caption) in enumerate(rows):
        if all_unknown(ids[k], tokenizer):
            warn("all <unk>", f"{path}:{n}: the tokenizer spells the caption {caption!r:.60} with <unk> only (a "
                              f"script its pieces do not cover)")
        else:
            keep.append(k)
    folder = Path(path).parent
    return [folder / rows[k][1] for k in keep], [ids[k] for k in keep], [rows[k][0] for k in keep]


def pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists → (B, L) ids right-padded with pad_id, and the attention mask."""
    ids = torch.full((len(rows), max(map(len, rows))), pad_id)
    mask = torch.zeros_like(ids)
    for k, row in enumerate(rows):
        ids[k, :len(row)], mask[k, :len(row)] = torch.tensor(row), 1
    return ids.to(device), mask.to(device)


def random_sequences(tokenizer: Tokenizer, n: int, generator: torch.Generator, lengths=(4, 12)) -> list[list[int]]:
    """n data-free anchors: `<s> … </s>` around 4-12 pieces drawn uniformly from the vocabulary (no specials)."""
    low, high = 4, tokenizer.mask_token_id  # the pieces lie between the four specials and <mask>
    sizes = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=generator).tolist()
    return [[tokenizer.bos_token_id, *torch.randint(low, high, (k,), generator=generator).tolist(),
             tokenizer.eos_token_id] for k in sizes]


def step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    """The random numbers of one step follow from (seed, step) alone: a resumed run draws what the uninterrupted
    one drew, with no generator state to save."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8 + salt)


def batch_of(step: int, batch: int, n: int, seed: int) -> list[int]:
    """Item indices of a step: epochs of the n items, each in an order drawn from (seed, epoch)."""
    out = []
    for p in range(step * batch, (step + 1) * batch):
        epoch = p // n
        order = torch.randperm(n, generator=step_generator(seed, epoch, 1))
        out.append(int(order[p % n]))
    return out


def split_off(n_groups: int, fraction: float, seed: int) -> set:
    """Which of n_groups groups (pictures, or pairs) are held out for validation: round(fraction · n), at least one
    when fraction > 0 and two or more groups exist, drawn with the run's seed."""
    k = min(n_groups - 1, max(1, round(fraction * n_groups))) if fraction > 0 and n_groups > 1 else 0
    return set(torch.randperm(n_groups, generator=step_generator(seed, 0, 2))[:k].tolist())


NARROW = 512  # text towers narrower than this train in float32 under --precision auto (see autocast_dtype)


def autocast_dtype(precision: str, device: torch.device, width: int) -> str:
    """The autocast dtype for --precision: "auto" is bfloat16 where the device multiplies it natively (CPU: AVX-512
    BF16 or AMX, altclip_kernels/cpu.py; GPU: Ampere or later) and the text tower is at least NARROW wide, else
    float32. Where bfloat16 is emulated it is slower than float32; in a narrow tower a step's time goes to small ops
    that the casts only add to (bench/README.md has both measurements)."""
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_native_bfloat16()
        precision = "bfloat16" if native and width >= NARROW else "float32"
    return precision


def _cpu_has_native_bfloat16() -> bool:
    from altclip_kernels import cpu
    return cpu.native(torch.bfloat16)


class TextSide:
    """The text tower being trained and the original one, frozen: the teacher of both anchors (and, in teach, of
    every pair). Outputs are the text representation before projection (the `<s>` row through pre_LN and
    transformation), as in the paper's teacher learning."""

    def __init__(self, model: AltCLIP, settings: Adapt, device: torch.device):
        import copy

        self.model, self.device = model, device
        # What stays: the image tower, both projections and the temperature (the shared space is the model's), and
        # the word embeddings unless asked (a new language is spelled with pieces the model has; for XLM-R large
        # their Adam state alone would be 2 GB).
        freeze(model.vision_model, model.visual_projection, model.text_projection, model.logit_scale)
        words = model.text_model.embeddings.word_embeddings.weight
        if not settings.train_embeddings:
            freeze(words)
        # The teacher is a copy, but of what learns only: frozen word embeddings are shared, not copied (a quarter
        # of XLM-R large's text tower).
        self.teacher = copy.deepcopy(model.text_model, memo={} if words.requires_grad else {id(words): words}).eval()
        freeze(self.teacher)
        self.autocast = settings.precision == "bfloat16"

    def __call__(self, rows, pad_id, tower=None):
        ids, mask = pad(rows, pad_id, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = (tower or self.model.text_model)(ids, mask, skip_padding=True).pooler_output
        return out.float()  # (B, project_dim)

    @torch.no_grad()
    def target(self, rows, pad_id):
        return self(rows, pad_id, self.teacher)

    def trainable(self):
        return [p for p in self.model.text_model.parameters() if p.requires_grad]


def squared_error_sum(student, teacher):
    """Σ over rows of mean over dimensions of (s − t)²: each process's part of teacher_learning_loss over the global
    batch, before dividing by the global number of rows."""
    return ((student - teacher) ** 2).mean(dim=1).sum()


def anchor_loss(text: TextSide, tokenizer: Tokenizer, settings: Adapt, ranks: Ranks, step: int):
    """Teacher learning on random token sequences: the model's output stays the original's on text of no language."""
    if not settings.anchors:
        return torch.zeros((), device=text.device)
    rows = ranks.share(random_sequences(tokenizer, settings.anchors, step_generator(settings.seed, step, 3)))
    target = text.target(rows, tokenizer.pad_token_id)
    return squared_error_sum(text(rows, tokenizer.pad_token_id), target) / settings.anchors


class Teach:
    """Stage 1 on the user's pairs: L = MSE(student(translation), teacher(known)) + MSE(student(known),
    teacher(known)) over the batch's pairs, + the anchors' MSE. The teacher's outputs for the known sentences are
    computed once, up front, in a fixed order (so that every process and every resumed run has the same)."""

    def __init__(self, text: TextSide, tokenizer: Tokenizer, known, translated, settings: Adapt):
        self.text, self.tokenizer, self.known, self.translated = text, tokenizer, known, translated
        self.targets = torch.cat([text.target(known[k:k + 256], tokenizer.pad_token_id)
                                  for k in range(0, len(known), 256)])  # (N, d)

    def __len__(self):
        return len(self.known)

    def loss(self, batch: list[int], settings: Adapt, ranks: Ranks, step: int):
        mine = ranks.share(batch)
        rows = [self.translated[k] for k in mine] + [self.known[k] for k in mine]
        target = self.targets[mine].repeat(2, 1)
        pairs = squared_error_sum(self.text(rows, self.tokenizer.pad_token_id), target) / (2 * settings.batch)
        return pairs + anchor_loss(self.text, self.tokenizer, settings, ranks, step)


class Tune:
    """Stage 2 on the user's captioned pictures: CLIP's contrastive loss (clip_loss) between the captions and their
    pictures' embeddings over the global batch, + the anchors' MSE. The image side is frozen, so the pictures'
    embeddings are computed once (embed_pictures) and only the text side learns."""

    def __init__(self, text: TextSide, tokenizer: Tokenizer, image_embeds, picture_of, captions, settings: Adapt):
        self.text, self.tokenizer = text, tokenizer
        self.image_embeds, self.picture_of, self.captions = image_embeds, picture_of, captions

    def __len__(self):
        return len(self.captions)

    def loss(self, batch: list[int], settings: Adapt, ranks: Ranks, step: int):
        model = self.text.model
        rows = [self.captions[k] for k in ranks.share(batch)]
        text = model.text_projection(self.text(rows, self.tokenizer.pad_token_id))  # (B / processes, P)
        everyone = ranks.gather(text)  # (B, P): every process's captions, in batch order
        images = self.image_embeds[[self.picture_of[k] for k in batch]]  # (B, P)
        contrastive = clip_loss(everyone, images, model.logit_scale) / ranks.size
        return contrastive + anchor_loss(self.text, self.tokenizer, settings, ranks, step)


def embed_pictures(model: AltCLIP, paths: list[Path], cache: Path, device, warn: Warnings, lines, data: Path,
                   ranks: Ranks):
    """Each distinct picture's embedding (not normalised), computed once by the frozen image tower and kept in
    `cache` (reused when the same pictures, unchanged, meet the same image tower). Returns (embeddings (M, P), the
    index of each pair's picture or None where it does not open). Under torchrun the first process computes them,
    and the others read its cache."""
    if ranks.rank == 0:
        found = _embed_pictures(model, paths, cache, device, warn, lines, data)
    ranks.barrier()
    if ranks.rank != 0:
        kept = torch.load(cache, weights_only=True)
        found = kept["embeds"], [kept["index"][str(p)] for p in paths]
    return found[0].to(device), found[1]


@torch.no_grad()
def _embed_pictures(model: AltCLIP, paths: list[Path], cache: Path, device, warn: Warnings, lines, data: Path,
                    batch: int = 32):
    import altclip

    distinct = list(dict.fromkeys(paths))
    tower = hashlib.sha256()  # the cache holds for this image tower only
    for t in [*model.vision_model.state_dict().values(), model.visual_projection.weight]:
        tower.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    key = json.dumps({"pictures": [(str(p), *_file_stamp(p)) for p in distinct], "tower": tower.hexdigest()})
    if cache.exists() and (kept := torch.load(cache, weights_only=True)).get("key") == key:
        embeds, index, failed = kept["embeds"], kept["index"], kept["failed"]
    else:
        index, embeds, failed, opened = {}, [], {}, []
        for p in tqdm(distinct, desc="pictures", unit="img", file=sys.stderr, dynamic_ncols=True):
            try:
                opened.append((p, altclip.load_image(p)))
            except altclip.ImageError as e:
                index[str(p)], failed[str(p)] = None, str(e)
            if len(opened) == batch or (p == distinct[-1] and opened):
                pixels = altclip.preprocess([im for _, im in opened], model.config.vision.image_size)
                for (q, _), e in zip(opened, model.get_image_features(pixels.to(device))):
                    index[str(q)] = len(embeds)
                    embeds.append(e.cpu())
                opened = []
        embeds = torch.stack(embeds) if embeds else torch.empty(0, model.config.projection_dim)
        atomic_save({"key": key, "embeds": embeds, "index": index, "failed": failed}, cache)
    first_line = {}
    for n, p in zip(lines, paths):
        first_line.setdefault(str(p), n)
    for p, message in failed.items():  # named again when the cache is reused: the pairs are skipped again
        warn("unopenable pictures", f"{data}:{first_line[p]}: {message}")
    return embeds, [index[str(p)] for p in paths]


def _file_stamp(path: Path) -> tuple[int, int]:
    """(size, modification time) of a file, (-1, -1) if there is none: a changed picture is embedded again."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def atomic_save(obj, path: Path):
    """torch.save into path.tmp, flushed to disk, then renamed over path: a crash leaves the old file or the new one,
    never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)  # the rename itself reaches the disk
        os.close(fd)
    except OSError:
        pass


STATE_FILE = "train_state.pt"  # in --out: the last checkpoint of a teach or tune run, for --resume


def save_state(out: Path, settings: Adapt, step: int, text: TextSide, opt, schedule, history: list):
    trainable = {n: p.detach().cpu() for n, p in text.model.text_model.named_parameters() if p.requires_grad}
    atomic_save({"settings": asdict(settings), "step": step, "text_model": trainable, "optimizer": opt.state_dict(),
                 "schedule": schedule.state_dict(), "history": history}, out / STATE_FILE)


def load_state(out: Path, settings: Adapt, text: TextSide, opt, schedule) -> tuple[int, list]:
    """The step to go on from and the losses so far, from out/train_state.pt; (0, []) when there is none."""
    path = out / STATE_FILE
    if not path.exists():
        return 0, []
    state = torch.load(path, weights_only=True, map_location="cpu")
    if state["settings"] != asdict(settings):
        changed = [k for k, v in asdict(settings).items() if state["settings"].get(k) != v]
        raise InputError(f"--resume: {path} is a run with other settings ({', '.join(changed)} differ)")
    params = dict(text.model.text_model.named_parameters())
    with torch.no_grad():
        for name, t in state["text_model"].items():
            params[name].copy_(t)
    opt.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return state["step"], state["history"]


def run_steps(objective, text: TextSide, tokenizer: Tokenizer, settings: Adapt, ranks: Ranks, out: Path,
              resume: bool, save_every: int) -> list:
    """The optimisation loop both commands share: AdamW with warm-up and cosine decay (as the recipe's stages), a
    checkpoint every `save_every` steps and at the end, the gradients summed over processes. Returns the losses
    and the mean seconds per step."""
    stage = settings.stage()
    params = text.trainable()
    opt = adamw(params, stage)
    warmup = max(1, round(stage.warmup * stage.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (
        1 + math.cos(math.pi * (s - warmup) / max(1, stage.steps - warmup))))
    start, history = load_state(out, settings, text, opt, schedule) if resume else (0, [])
    if resume and start and ranks.rank == 0:
        print(f"resuming {out / STATE_FILE} at step {start} of {stage.steps}", file=sys.stderr)
    text.model.text_model.train()
    t = time.perf_counter()
    bar = tqdm(range(start, stage.steps), initial=start, total=stage.steps, desc=settings.command, unit="step",
               file=sys.stderr, dynamic_ncols=True, disable=ranks.rank != 0)
    for step in bar:
        loss = objective.loss(batch_of(step, settings.batch, len(objective), settings.seed), settings, ranks, step)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        for p in params:  # each process's gradient is its share of the global batch's: the sum is the whole
            if p.grad is None:  # a parameter no text of this step reached: zero, so every process sums the same set
                p.grad = torch.zeros_like(p)
            ranks.sum_(p.grad)
        opt.step()
        schedule.step()
        history.append(ranks.sum_(loss.detach().clone()).item())
        bar.set_postfix(loss=f"{history[-1]:.4f}")
        if (step + 1) % save_every == 0 or step + 1 == stage.steps:
            if ranks.rank == 0:
                save_state(out, settings, step + 1, text, opt, schedule, history)
            ranks.barrier()
    text.model.eval()
    return history, round((time.perf_counter() - t) / max(1, stage.steps - start), 3)


@torch.no_grad()
def embed_texts(model: AltCLIP, rows, pad_id, device, batch: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (N, P), in float32."""
    return F.normalize(torch.cat([model.get_text_features(*pad(rows[k:k + batch], pad_id, device))
                                  for k in range(0, len(rows), batch)]), dim=-1)


def translation_recall(model: AltCLIP, tokenizer: Tokenizer, known, translated, device) -> float:
    """Held-out pairs: how often a translation's nearest known sentence (cosine, among the distinct held-out known
    sentences) is its own. Chance is one over their number."""
    distinct = list(dict.fromkeys(map(tuple, known)))
    guess = (embed_texts(model, translated, tokenizer.pad_token_id, device)
             @ embed_texts(model, [list(k) for k in distinct], tokenizer.pad_token_id, device).t()).argmax(dim=1)
    truth = torch.tensor([distinct.index(tuple(k)) for k in known], device=guess.device)
    return (guess == truth).float().mean().item()


def picture_recall(model: AltCLIP, tokenizer: Tokenizer, captions, pictures, image_embeds, device) -> float:
    """Held-out pairs: text → image recall@1, each caption's nearest picture among the held-out pictures."""
    distinct = sorted(set(pictures))
    images = F.normalize(image_embeds[distinct].float(), dim=-1)
    guess = (embed_texts(model, captions, tokenizer.pad_token_id, device) @ images.t()).argmax(dim=1)
    truth = torch.tensor([distinct.index(p) for p in pictures], device=guess.device)
    return (guess == truth).float().mean().item()


def save_checkpoint(model: AltCLIP, source: Path, out: Path, tokenizer: Tokenizer):
    """The whole model in BAAI/AltCLIP's layout (load_weights.save_pretrained) with the source's tokenizer files
    beside it: a checkpoint that load_pretrained, `python altclip.py --model` and the reference all load."""
    save_pretrained(model, out)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            (out / name).write_bytes((source / name).read_bytes())
    if not (out / "tokenizer_config.json").is_file():  # e.g. BAAI/AltCLIP-m9 ships the sentencepiece model alone
        write_config(out, tokenizer.model_max_length)


def peak_rss_gib() -> float:
    """This process's peak resident memory so far, in GiB (Linux and macOS; 0 where unknown)."""
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 30 if sys.platform == "darwin" else 2 ** 20), 2)  # bytes on macOS, KiB elsewhere


def make_it_yours(args) -> dict:
    """`train.py teach` and `train.py tune`: read, check, train, save. Returns what out/adapt.json records."""
    t0 = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if device.index is None:  # under torchrun, one GPU per process on each machine
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    ranks = Ranks(device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if ranks.size > 1 and (args.batch_size % ranks.size or args.anchors % ranks.size):
        raise InputError(f"--batch-size {args.batch_size} and --anchors {args.anchors} must be multiples of the "
                         f"{ranks.size} processes")
    try:
        folder, _ = resolve(args.model, optional=list(TOKENIZER_FILES))
        model = load_pretrained(folder, device=device, kernels=False)
        tokenizer = Tokenizer.from_pretrained(folder)
    except (OSError, CheckpointError) as e:
        raise InputError(f"--model {args.model}: {e}") from None
    data = Path(args.pairs if args.command == "teach" else args.data)
    raw = read_lines(data)  # missing, unreadable or empty: stop before any work
    lr = args.lr or ADAPT[args.command]["lr"] * LR_WIDTH / model.config.text.hidden_size
    settings = Adapt(args.command, str(args.model), str(data), hashlib.sha256("\n".join(raw).encode()).hexdigest(),
                     args.steps, args.batch_size, lr, args.seed, args.anchors, args.val_fraction,
                     args.train_embeddings, autocast_dtype(args.precision, device, model.config.text.hidden_size))
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create --out '{args.out}': {e.strerror or e}") from None
    warn = Warnings(quiet=ranks.rank != 0)
    say = print if ranks.rank == 0 else (lambda *a, **k: None)
    text = TextSide(model, settings, device)
    report = {"settings": asdict(settings), "processes": ranks.size, "device": str(device)}
    if args.command == "teach":
        known, translated, lines = read_pairs(data, tokenizer, warn)
        held = split_off(len(known), settings.val_fraction, settings.seed)
        learn = [k for k in range(len(known)) if k not in held]
        say(warn.summary(data, len(known)) + f"; {len(held)} held out to score", file=sys.stderr)
        if not learn:
            raise InputError(f"{data}: no good pair left to learn from")
        val = ([known[k] for k in sorted(held)], [translated[k] for k in sorted(held)])

        def score():
            return {"translation_to_known_recall_at_1": translation_recall(model, tokenizer, *val, device)
                    if held else None}
        original_known = embed_texts(model, val[0], tokenizer.pad_token_id, device) if held else None
        before = score()
        objective = Teach(text, tokenizer, [known[k] for k in learn], [translated[k] for k in learn], settings)
    else:
        paths, captions, lines = read_captions(data, tokenizer, warn)
        if not paths:
            raise InputError(f"{data}: {warn.summary(data, 0)}: no good pair left to learn from")
        embeds, picture_of = embed_pictures(model, paths, args.out / "image_embeddings.pt", device, warn, lines, data,
                                            ranks)
        good = [k for k in range(len(paths)) if picture_of[k] is not None]
        pictures = sorted({picture_of[k] for k in good})
        held_pictures = {pictures[i] for i in split_off(len(pictures), settings.val_fraction, settings.seed)}
        learn = [k for k in good if picture_of[k] not in held_pictures]
        held = [k for k in good if picture_of[k] in held_pictures]
        say(warn.summary(data, len(good)) + f" of {len(pictures)} pictures; {len(held_pictures)} pictures held out "
            f"to score", file=sys.stderr)
        if not learn:
            raise InputError(f"{data}: no good pair left to learn from")

        def score():
            return {"text_to_image_recall_at_1": picture_recall(
                model, tokenizer, [captions[k] for k in held], [picture_of[k] for k in held], embeds, device)
                if held else None}
        before = score()
        objective = Tune(text, tokenizer, embeds, [picture_of[k] for k in learn], [captions[k] for k in learn],
                         settings)
    history, report["seconds_per_step"] = run_steps(objective, text, tokenizer, settings, ranks, args.out,
                                                    args.resume, args.save_every)
    report["peak_rss_gib"] = {"training": peak_rss_gib()}
    text.teacher = objective = None  # done: freed before save_pretrained makes its copy of every tensor
    after = score()
    if args.command == "teach" and held:
        after["known_side_cosine_to_the_original"] = (
            embed_texts(model, val[0], tokenizer.pad_token_id, device) * original_known).sum(1).mean().item()
    report.update(before=before, after=after, loss=subsample(history), seconds=round(time.perf_counter() - t0, 1))
    if ranks.rank == 0:
        save_checkpoint(model, folder, args.out, tokenizer)
        report["peak_rss_gib"]["with_saving"] = peak_rss_gib()
        (args.out / "adapt.json").write_text(json.dumps(report, indent=1) + "\n")
        for name, value in before.items():
            if value is not None:
                print(f"{name.replace('_', ' ')} on the held-out pairs: {value:.3f} before, {after[name]:.3f} after")
        if "known_side_cosine_to_the_original" in after:
            print(f"known sentences, cosine to where the original model put them: "
                  f"{after['known_side_cosine_to_the_original']:.4f}")
        print(f"{args.command}: {settings.steps} steps in {report['seconds']:.0f} s; saved to {args.out}")
    ranks.barrier()
    return report


# -----------------------------------------------------------------------------
# Command line.


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a mini AltCLIP on generated coloured shapes with the paper's recipe (stage 0: an English "
                    "CLIP stand-in; stage 1: teacher learning, text only; stage 2: contrastive learning, image "
                    "tower frozen), or evaluate a checkpoint on a freshly generated test set.",
        epilog="examples:\n  python train.py --out examples/mini-altclip\n"
               "  python train.py --eval examples/mini-altclip --seed 7 --json scores.json\n\n"
               "teach a checkpoint a language, or tune it on your pictures (see `train.py teach -h`, "
               "`train.py tune -h`):\n"
               "  python train.py teach --model BAAI/AltCLIP --pairs PAIRS.tsv --out my-altclip\n"
               "  python train.py tune --model BAAI/AltCLIP --data CAPTIONS.tsv --out my-altclip")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", metavar="DIR", type=Path,
                      help="train, and save the model (BAAI/AltCLIP's layout), the teacher (DIR/teacher) and "
                           "results.json into DIR")
    what.add_argument("--eval", metavar="CHECKPOINT", help="evaluate this checkpoint folder instead of training")
    p.add_argument("--seed", type=non_negative_int, default=TEST_SEED,
                   help="seed of the generated test set (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", type=Path, help="with --eval: write the scores to FILE as JSON")
    p.add_argument("--per-class", type=positive_int, metavar="N",
                   help=f"test images per class (default: {Recipe.test_per_class})")
    p.add_argument("--train-seed", type=non_negative_int, default=TRAIN_SEED,
                   help="seed of the training data and initialisation (default: %(default)s)")
    p.add_argument("--steps", type=non_negative_int, nargs=3, metavar=("S0", "S1", "S2"),
                   help="optimisation steps of stages 0, 1 and 2 (default: %s %s %s)"
                        % (Recipe.stage0.steps, Recipe.stage1.steps, Recipe.stage2.steps))
    p.add_argument("--smoke", action="store_true", help="tiny towers, a few steps on a few images: checks the "
                                                        "whole pipeline in seconds (the scores mean nothing)")
    p.add_argument("--teacher-cache", metavar="DIR", type=Path,
                   help="keep the stage-0 teacher in DIR and reuse it when the recipe and seed match (for tuning "
                        "stages 1 and 2)")
    p.add_argument("--threads", type=positive_int, default=2,
                   help="CPU threads; results are reproducible for a given count (default: %(default)s)")
    args = p.parse_args(argv)
    if args.json and not args.eval:
        p.error("--json goes with --eval (training writes results.json beside the checkpoint)")
    if args.eval and (args.steps or args.smoke or args.teacher_cache):
        p.error("--steps, --smoke and --teacher-cache are for training, not --eval")
    return args


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 up to (not including) 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# The default learning rates are the mini model's (its text tower is 96 wide); a wider tower takes steps smaller by
# 96 / width (9.4e-5 for teach on XLM-R large), as the update of a layer grows with its width.
LR_WIDTH = Recipe.student_width
ADAPT = {  # per command: what it reads, its help, and defaults that work on a few thousand lines
    "teach": dict(data="--pairs", metavar="PAIRS.tsv", steps=400, lr=1e-3,
                  help="each line `known<TAB>translation`: a sentence the model understands (e.g. English) and its "
                       "translation into the language to teach",
                  description="Teach a checkpoint a new language from parallel sentences, no picture (the paper's "
                              "stage 1, teacher learning): the model's own embedding of the known side is the "
                              "target of its translation."),
    "tune": dict(data="--data", metavar="CAPTIONS.tsv", steps=300, lr=1e-3,
                 help="a header line `image<TAB>caption`, then one picture path (relative to this file) and its "
                      "caption per line, in any language",
                 description="Tune a checkpoint on your captioned pictures (the paper's stage 2, contrastive "
                             "learning): the image tower stays frozen, each picture is embedded once."),
}


def parse_adapt_args(argv):
    command, spec = argv[0], ADAPT[argv[0]]
    p = argparse.ArgumentParser(
        prog=f"train.py {command}", description=spec["description"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  python train.py {command} --model BAAI/AltCLIP {spec['data']} {spec['metavar']} "
               f"--out my-altclip\n  torchrun --nproc_per_node 4 train.py {command} --model BAAI/AltCLIP "
               f"{spec['data']} {spec['metavar']} --out my-altclip")
    p.add_argument("--model", required=True, metavar="DIR_OR_REPO",
                   help="the checkpoint to start from: a folder or a hub id (e.g. BAAI/AltCLIP)")
    p.add_argument(spec["data"], dest="pairs" if command == "teach" else "data", required=True, type=Path,
                   metavar=spec["metavar"], help=spec["help"])
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="the trained checkpoint (BAAI/AltCLIP's layout, tokenizer files beside it), adapt.json "
                        "(scores before and after, losses) and train_state.pt (for --resume)")
    p.add_argument("--steps", type=positive_int, default=spec["steps"], help="(default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                   help="pairs per step, over all processes (default: %(default)s)")
    p.add_argument("--lr", type=positive_float,
                   help=f"peak learning rate of AdamW, after a warm-up of 5%% of the steps, then cosine decay "
                        f"(default: {spec['lr']:g} × {LR_WIDTH} / the text tower's width)")
    p.add_argument("--anchors", type=non_negative_int, metavar="N",
                   help="random token sequences per step whose output stays the original model's, so the languages "
                        "it knew stay where they were (default: as many as --batch-size)")
    p.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F",
                   help="held out and scored before and after (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="data order and anchors (default: 0)")
    p.add_argument("--resume", action="store_true",
                   help="go on from DIR/train_state.pt, the last checkpoint of an interrupted run with the same "
                        "settings")
    p.add_argument("--save-every", type=positive_int, default=100, metavar="N",
                   help="write DIR/train_state.pt every N steps, and at the end (default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, … (default: cuda when there is one, else cpu)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto: bfloat16 autocast where the CPU or GPU has native bfloat16, else float32")
    p.add_argument("--train-embeddings", action="store_true",
                   help="train the word embeddings too (frozen by default: a new language is spelled with pieces "
                        "the model has, and their optimiser state is large)")
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads per process (default: the CPU's cores over the processes on this machine)")
    args = p.parse_args(argv[1:])
    args.command = command
    args.anchors = args.batch_size if args.anchors is None else args.anchors
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ADAPT:
        args = parse_adapt_args(argv)
        keep_freed_memory()
        try:
            make_it_yours(args)
        except InputError as e:
            print(f"train.py: error: {e}", file=sys.stderr)
            return 1
        return 0
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    if args.eval:
        try:
            model = load_pretrained(args.eval)
            tokenizer = Tokenizer.from_pretrained(args.eval)
        except (OSError, CheckpointError) as e:
            print(f"train.py: error: checkpoint '{args.eval}': {e}", file=sys.stderr)
            return 1
        test = make_test_set(args.seed, args.per_class or Recipe.test_per_class, model.config.vision.image_size)
        result = evaluate(model, tokenizer, test)
        print(format_table({args.eval: result}))
        if args.json:
            try:
                args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
            except OSError as e:
                print(f"train.py: error: cannot write --json '{args.json}': {e.strerror or e}", file=sys.stderr)
                return 1
        return 0
    recipe = SMOKE if args.smoke else Recipe()
    if args.steps:
        recipe = recipe.with_steps(*args.steps)
    if args.per_class:
        recipe = replace(recipe, test_per_class=args.per_class)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"train.py: error: cannot create --out '{args.out}': {e.strerror or e}", file=sys.stderr)
        return 1
    train(args.out, recipe, seed=args.train_seed, test_seed=args.seed, teacher_cache=args.teacher_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
