"""A small XLM-R-like sentencepiece model, trained in a second from an embedded multilingual corpus.

XLM-R's `sentencepiece.bpe.model` is, despite its name, a *unigram* model with the default `nmt_nfkc` normaliser
and sentencepiece's default ids `<unk>`=0, `<s>`=1, `</s>`=2; the reference tokenizer rebuilds it as a unigram
model, so the fixture is trained the same way. Tests, the command line and notebooks all use
`train_sentencepiece(folder)` to get a tokenizer folder without any download.
"""
import io
import json
import pathlib
import random

import sentencepiece as spm

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
