"""Tokenizer benchmark: ours against `sentencepiece.encode` and the reference (transformers' XLMRobertaTokenizer),
same run, on a 250,000-piece model (BAAI/AltCLIP's vocabulary size) and 10,000 zero-shot captions.

    python bench/tokenizer.py             # builds bench/out/tokenizer-250k/ once (~5 s), then measures (~1.5 min)
    python bench/tokenizer.py --repeats 3 --rebuild

What it measures, in one process, medians of `--repeats` interleaved repeats, wall and CPU time:
- **load**: `Tokenizer(path)`, `SentencePieceProcessor(model_file=path)` and
  `XLMRobertaTokenizer.from_pretrained(folder)` (the reference converts the model file to HF `tokenizers` on load);
- **10,000 captions**: `tok(captions)` (ids and mask as (B, L) tensors, like the reference's
  `return_tensors="pt"`), `tok.encode_batch(captions)` (ids only), `sp.encode(captions)` (ids only;
  sentencepiece's batch call, which uses every core by default, as ours does inside; and with one thread) and the
  reference's `tok(captions, padding=True, truncation=True, return_tensors="pt")`.
Before any timing the ids are compared: ours must equal the reference's on every caption, and those of our
written-out definition (`Tokenizer.split`) on a sample, or the script stops. Plain sentencepiece, mapped to
fairseq's layout (+1, 0 -> 3), is only counted: it differs by design in the corners tokenizer.py lists.

The model (bench/out/tokenizer-250k/sentencepiece.bpe.model, git-ignored): a unigram model trained by
sentencepiece on the tests' multilingual corpus plus the captions (a few thousand pieces, nmt_nfkc normaliser,
sentencepiece's own precompiled character map), then extended to 250,000 pieces with made-up ones: strings of 1-8
characters drawn from the scripts the captions use, 70% with a leading "▁", scores below the trained pieces'.
Made-up pieces do not make the ids meaningful, but they make the vocabulary, the trie and the model file the size
of XLM-R's (the file is 6.3 MB; XLM-R's is 5.1 MB), which is what loading and encoding time depend on. How
long sentencepiece takes to load 250,000 pieces depends on them (its trie is built on load): these random ones take
it about as long as pieces made by a character-level Markov chain over the corpus, several times as long as
numbered pieces ("▁w123").

The captions: CLIP-style zero-shot templates in nine languages (English, German, French, Spanish, Chinese,
Japanese, Russian, Korean, Arabic) filled with 25 class names each; 10,000 drawn with a fixed seed from the 1,575
combinations, so some repeat. None of the three caches whole texts; HF tokenizers caches words, ours the
normalisation of each character or grapheme and the words it splits in Python.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import OUT  # common puts the repository first on sys.path: `import tokenizer` finds tokenizer.py,
                              # not this script

MODEL = OUT / "tokenizer-250k"

PIECES = 250_000
SEED = 0

TEMPLATES = {
    "en": ["a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
           "a rendering of a {}.", "graffiti of a {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
           "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
           "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a close-up photo of a {}.",
           "a black and white photo of the {}.", "a painting of the {}.", "a pixelated photo of the {}.",
           "a jpeg corrupted photo of a {}."],
    "de": ["ein Foto von einem {}.", "ein schlechtes Foto von einem {}.", "eine Skulptur von einem {}.",
           "eine Zeichnung von einem {}.", "ein helles Foto von einem {}.", "ein dunkles Foto von dem {}.",
           "ein Gemälde von dem {}.", "eine Nahaufnahme von einem {}."],
    "fr": ["une photo d'un {}.", "une mauvaise photo d'un {}.", "une sculpture d'un {}.", "un dessin d'un {}.",
           "une photo lumineuse d'un {}.", "une peinture du {}.", "un gros plan d'un {}.",
           "une photo en noir et blanc du {}."],
    "es": ["una foto de un {}.", "una mala foto de un {}.", "una escultura de un {}.", "un dibujo de un {}.",
           "una pintura del {}.", "una foto oscura del {}."],
    "zh": ["一张{}的照片。", "一张{}的模糊照片。", "{}的雕塑。", "{}的画。", "一张明亮的{}的照片。", "{}的特写照片。"],
    "ja": ["{}の写真。", "{}の悪い写真。", "{}の彫刻。", "{}の絵。", "{}の明るい写真。"],
    "ru": ["фотография {}.", "плохая фотография {}.", "скульптура {}.", "рисунок {}.", "картина {}."],
    "ko": ["{}의 사진.", "{}의 조각.", "{}의 그림."],
    "ar": ["صورة {}.", "رسم {}."],
}
CLASSES = {
    "en": "cat,dog,goldfish,great white shark,tiger,golden retriever,school bus,espresso,pizza,mountain bike,"
          "ice cream,red wine,volcano,coral reef,banana,strawberry,umbrella,teddy bear,airliner,sports car,"
          "lighthouse,castle,violin,backpack,laptop",
    "de": "Katze,Hund,Goldfisch,Weißen Hai,Tiger,Golden Retriever,Schulbus,Espresso,Pizza,Mountainbike,Eisbecher,"
          "Rotwein,Vulkan,Korallenriff,Banane,Erdbeere,Regenschirm,Teddybär,Verkehrsflugzeug,Sportwagen,Leuchtturm,"
          "Schloss,Geige,Rucksack,Laptop",
    "fr": "chat,chien,poisson rouge,grand requin blanc,tigre,golden retriever,bus scolaire,expresso,pizza,"
          "vélo tout terrain,glace,vin rouge,volcan,récif corallien,banane,fraise,parapluie,ours en peluche,"
          "avion de ligne,voiture de sport,phare,château,violon,sac à dos,ordinateur portable",
    "es": "gato,perro,pez dorado,gran tiburón blanco,tigre,golden retriever,autobús escolar,café expreso,pizza,"
          "bicicleta de montaña,helado,vino tinto,volcán,arrecife de coral,plátano,fresa,paraguas,osito de peluche,"
          "avión,coche deportivo,faro,castillo,violín,mochila,portátil",
    "zh": "猫,狗,金鱼,大白鲨,老虎,金毛猎犬,校车,浓缩咖啡,披萨,山地自行车,冰淇淋,红酒,火山,珊瑚礁,香蕉,草莓,雨伞,泰迪熊,"
          "客机,跑车,灯塔,城堡,小提琴,背包,笔记本电脑",
    "ja": "猫,犬,金魚,ホホジロザメ,トラ,ゴールデンレトリバー,スクールバス,エスプレッソ,ピザ,マウンテンバイク,"
          "アイスクリーム,赤ワイン,火山,サンゴ礁,バナナ,イチゴ,傘,テディベア,旅客機,スポーツカー,灯台,城,バイオリン,"
          "リュックサック,ノートパソコン",
    "ru": "кошки,собаки,золотой рыбки,большой белой акулы,тигра,золотистого ретривера,школьного автобуса,эспрессо,"
          "пиццы,горного велосипеда,мороженого,красного вина,вулкана,кораллового рифа,банана,клубники,зонта,"
          "плюшевого мишки,авиалайнера,спортивного автомобиля,маяка,замка,скрипки,рюкзака,ноутбука",
    "ko": "고양이,개,금붕어,백상아리,호랑이,골든 리트리버,스쿨버스,에스프레소,피자,산악자전거,아이스크림,레드 와인,화산,"
          "산호초,바나나,딸기,우산,테디 베어,여객기,스포츠카,등대,성,바이올린,배낭,노트북",
    "ar": "قطة,كلب,سمكة ذهبية,قرش أبيض كبير,نمر,كلب صيد ذهبي,حافلة مدرسية,إسبريسو,بيتزا,دراجة جبلية,آيس كريم,"
          "نبيذ أحمر,بركان,شعاب مرجانية,موز,فراولة,مظلة,دب محشو,طائرة ركاب,سيارة رياضية,منارة,قلعة,كمان,حقيبة ظهر,"
          "حاسوب محمول",
}


def all_captions() -> list[str]:
    return [t.format(c) for lang, templates in TEMPLATES.items() for t in templates
            for c in CLASSES[lang].split(",")]


def captions(n: int = 10_000, seed: int = SEED) -> list[str]:
    return random.Random(seed).choices(all_captions(), k=n)


# -----------------------------------------------------------------------------
# The 250,000-piece model.


def build_model(folder: Path = MODEL, pieces: int = PIECES, seed: int = SEED) -> Path:
    """Train a small unigram model, extend it to `pieces` pieces with made-up ones (module docstring); return the
    folder. Needs protobuf (a test-only requirement) for sentencepiece's model proto."""
    import io

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tests.helpers import corpus

    import tokenizer

    t0 = time.perf_counter()
    lines = corpus(lines_per_language=200) + all_captions()
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="unigram", vocab_size=8000,
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="nmt_nfkc", num_threads=1,
        seed_sentencepiece_size=1_000_000, minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    trained = {p.piece for p in proto.pieces}
    lowest = min(p.score for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL)

    # The made-up pieces draw on the characters the corpus uses, script by script, so they read like words.
    rng = random.Random(seed)
    scripts = {}
    for line in lines:
        for c in line:
            if c.isalpha():
                scripts.setdefault(script_of(c), set()).add(c)
    alphabets = [sorted(chars) for chars in scripts.values()]
    new = set()
    while len(trained) + len(new) < pieces:
        chars = rng.choice(alphabets)
        piece = "".join(rng.choices(chars, k=rng.randint(1, 8)))
        piece = "▁" + piece if rng.random() < 0.7 else piece
        if piece not in trained:
            new.add(piece)
    scores = sorted((rng.uniform(lowest - 6, lowest) for _ in new), reverse=True)
    for piece, score in zip(sorted(new), scores):
        proto.pieces.add(piece=piece, score=score)
    assert len(proto.pieces) == pieces

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "sentencepiece.bpe.model").write_bytes(proto.SerializeToString())
    tokenizer.write_config(tmp, 512)
    (tmp / "build.json").write_text(json.dumps(
        {"pieces": pieces, "trained_pieces": len(trained), "seed": seed,
         "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def script_of(c: str) -> str:
    """A coarse script name: the first word of the character's Unicode name (LATIN, CJK, HANGUL, ...)."""
    import unicodedata
    return unicodedata.name(c, "?").split()[0]


# -----------------------------------------------------------------------------
# Measurements.


def machine() -> dict:
    import os

    import sentencepiece
    import torch
    import transformers
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
               platform.processor() or "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(), "sentencepiece": sentencepiece.__version__,
            "transformers": transformers.__version__, "loadavg_start": loadavg()}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def check_ids(tok, sp, ref, texts: list[str], sample: int) -> dict:
    """Ours against the reference on every caption (must be equal), our written-out definition on a sample (must be
    equal), and plain sentencepiece mapped to fairseq's ids (+1, unknown -> 3; reported: it differs by design in the
    corners the module docstring of tokenizer.py lists)."""
    ours = tok(texts)
    theirs = ref(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    if ours["input_ids"].tolist() != theirs["input_ids"].tolist() or \
            ours["attention_mask"].tolist() != theirs["attention_mask"].tolist():
        sys.exit("ours and the reference disagree on the captions: no timing")
    rows = tok.encode_batch(texts)
    for text, row in zip(texts[:sample], rows):
        if row != [0] + [i for _, i in tok.split(text)][:510] + [2]:
            sys.exit(f"the fast path and the definition disagree on {text!r}: no timing")
    plain = [[0] + [i + 1 if i else 3 for i in ids] + [2] for ids in sp.encode(texts)]
    return {"captions": len(texts), "equal_to_reference": len(texts), "definition_checked": min(sample, len(texts)),
            "sentencepiece_differs": sum(a != b for a, b in zip(plain, rows))}


def interleaved(fns: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds (this process, all its threads) per call of each function, alternating between them,
    after one unmeasured call of each. On a busy machine the CPU time moves less than the wall time."""
    for fn in fns.values():
        fn()
    times = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name]["wall"].append(time.perf_counter() - t0)
            times[name]["cpu"].append(time.process_time() - c0)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description="Tokenizer benchmark: ours, sentencepiece and the reference, same run "
                                            "(see the module docstring).")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement (default 5)")
    p.add_argument("--captions", type=int, default=10_000, help="how many captions to tokenize (default 10000)")
    p.add_argument("--model", type=Path, default=MODEL, help="tokenizer folder with sentencepiece.bpe.model "
                   "(default bench/out/tokenizer-250k, built if missing)")
    p.add_argument("--rebuild", action="store_true", help="build the 250,000-piece model again")
    p.add_argument("--out", type=Path, default=OUT / "tokenizer.md", help="where the table goes (and .json)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)

    import sentencepiece
    from transformers import XLMRobertaTokenizer

    from tokenizer import MODEL_FILE, Tokenizer

    if args.rebuild or (args.model == MODEL and not (MODEL / "build.json").exists()):
        print(f"building {MODEL} ...", file=sys.stderr)
        build_model(MODEL)
    path = args.model / MODEL_FILE
    info = machine()
    texts = captions(args.captions)
    tok, sp = Tokenizer(path), sentencepiece.SentencePieceProcessor(model_file=str(path))
    ref = XLMRobertaTokenizer.from_pretrained(args.model)
    print("checking ids ...", file=sys.stderr)
    ids = check_ids(tok, sp, ref, texts, sample=300)

    print(f"timing, {args.repeats} interleaved repeats ...", file=sys.stderr)
    load = interleaved({"ours": lambda: Tokenizer(path),
                        "sentencepiece": lambda: sentencepiece.SentencePieceProcessor(model_file=str(path)),
                        "reference": lambda: XLMRobertaTokenizer.from_pretrained(args.model)}, args.repeats)
    encode = interleaved({
        "ours": lambda: tok(texts),
        "ours, ids only": lambda: tok.encode_batch(texts),
        "sentencepiece": lambda: sp.encode(texts),
        "sentencepiece, 1 thread": lambda: sp.encode(texts, num_threads=1),
        "reference": lambda: ref(texts, padding=True, truncation=True, max_length=512, return_tensors="pt"),
    }, args.repeats)
    info["loadavg_end"] = loadavg()

    lines = [
        f"Tokenizer benchmark, `{' '.join(['python bench/tokenizer.py', *argv])}`",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores, torch CPU capability {info['cpu_capability']}; Python "
        f"{info['python']}, sentencepiece {info['sentencepiece']}, transformers {info['transformers']} (the reference)",
        f"- load average at start {info['loadavg_start']}, at end {info['loadavg_end']}",
        f"- model: {path} ({path.stat().st_size / 1e6:.1f} MB, {tok.vocab_size:,} ids)",
        f"- {len(texts):,} captions ({sum(map(len, texts)) / len(texts):.0f} characters on average, 9 languages); "
        f"ids: ours equal to the reference on all of them, to our written-out definition on "
        f"{ids['definition_checked']}; plain sentencepiece (+1, 0 -> 3) differs on {ids['sentencepiece_differs']}",
        f"- medians of {args.repeats} interleaved repeats; CPU time is this process's, all threads (sentencepiece's "
        f"batch call uses every core)",
        "",
        "| measure | wall s | ÷ sentencepiece | ÷ reference | CPU s | ÷ sentencepiece |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for what, label in ((load, f"load the {tok.vocab_size:,}-id model"), (encode, f"{len(texts):,} captions")):
        med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in what.items()}
        sp_, ref_ = med["sentencepiece"], med["reference"]
        for name, m in med.items():
            lines.append(f"| {label}: {name} | {m['wall']:.3f} | {m['wall'] / sp_['wall']:.2f}× | "
                         f"{m['wall'] / ref_['wall']:.2f}× | {m['cpu']:.3f} | {m['cpu'] / sp_['cpu']:.2f}× |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "ids": ids, "load_s": load, "encode_s": encode}, indent=1))


if __name__ == "__main__":
    main()
