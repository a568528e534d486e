"""Tokenizer parity with the reference, `transformers.XLMRobertaTokenizer`, on a sentencepiece model trained here."""
import json
import random
import shutil
import socket
import subprocess
import sys
import pathlib

import huggingface_hub
import pytest
import sentencepiece
import torch
import transformers

from spm_fixture import corpus, train_sentencepiece
from tokenizer import MODEL_FILE, Tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]

TEXTS = {
    "english": "a photo of a cat",
    "english_caps": "A PHOTO of the Dog, running!",
    "german": "Ein Foto einer Katze über der Straße",
    "french": "une photo d'un chat à côté de la forêt",
    "spanish": "una foto de un niño en la montaña",
    "chinese": "一张猫的照片",
    "japanese": "猫の写真です",
    "katakana": "カタカナのテレビとカメラ",
    "russian": "фотография кошки",
    "arabic": "صورة قطة",
    "hindi": "एक बिल्ली की तस्वीर",
    "korean": "고양이 사진",
    "thai": "ภาพแมว",
    "greek": "μια φωτογραφία γάτα",
    "mixed": "cat 猫 кошка قطة बिल्ली 고양이",
    "digits": "2024 100% 3.14",
    "emoji": "🐱 a cat 🐶❤️",
    "emoji_sequences": "👩‍👩‍👧 🇯🇵 👍🏽",
    "empty": "",
    "space": " ",
    "whitespace_only": " \t\n\u3000\u00a0 ",
    "fullwidth": "ＡＢＣ１２３",
    "halfwidth_katakana": "ｶﾀｶﾅ",
    "halfwidth_dakuten": "ﾃﾞｼﾞﾀﾙ ｶﾒﾗ ﾊﾟﾝ",
    "compatibility": "ﬁ ① ½ ™ ㍿ ㈱ ℌ x³",
    "nfd_accents": "cafe\u0301 Gro\u0308sse",
    "nfd_vietnamese": "Vie\u0323\u0302t Nam",
    "hangul_jamo": "\u1100\u1169\u110b\u1163\u11bc",
    "mark_after_mapped": "Ａ\u0301 ª\u0300",
    "unknown": "☃ ✈ 𓀀 ɐʃ",
    "unknown_run": "aɐʃɐb",
    "tabs_newlines": "a\tphoto\nof\r\na cat\n",
    "multiple_spaces": "a   photo    of  a cat",
    "leading_trailing": "   a photo of a cat   ",
    "unicode_separators": "a\x85photo\u2028of\u2029a\u1680cat",
    "zero_width": "a\u200bphoto\ufeff\u200dcat",
    "controls": "a\x00b\x01c\x7fd",
    "metaspace_char": "▁a ▁▁photo▁",
    "specials": "a <mask> cat</s><s> <pad><unk>",
    "fullwidth_specials": "a ＜ｍａｓｋ＞ ＜ｓ＞",
}
LONG = {
    "long_english": "a photo of a cat on the red car " * 80,
    "long_chinese": "一张猫的照片" * 200,
    "long_no_spaces": "photo" * 400,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_sentencepiece(folder)
    return folder


@pytest.fixture(scope="module")
def tok(model_dir):
    return Tokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def ref(model_dir):
    return transformers.XLMRobertaTokenizer.from_pretrained(model_dir)


def reference(ref, texts, max_length=512):
    return ref(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def assert_same(ours, theirs):
    assert ours["input_ids"].dtype == ours["attention_mask"].dtype == torch.int64
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["attention_mask"].tolist() == theirs["attention_mask"].tolist()


@pytest.mark.parametrize("name", TEXTS)
def test_matches_reference(tok, ref, name):
    assert_same(tok(TEXTS[name]), reference(ref, TEXTS[name]))


@pytest.mark.parametrize("name", LONG)
def test_long_text_matches_reference(tok, ref, name):
    ours = tok(LONG[name])
    assert ours["input_ids"].shape == (1, 512)
    assert ours["input_ids"][0, -1] == tok.eos_token_id
    assert_same(ours, reference(ref, LONG[name]))


@pytest.mark.parametrize("pieces", [509, 510, 511, 512])
def test_truncation_boundary(tok, ref, pieces):
    text = "a " * pieces  # one "▁a" piece each
    assert len(tok.tokenize(text)) == pieces
    ours = tok(text)
    assert ours["input_ids"].shape[1] == min(pieces + 2, 512)
    assert_same(ours, reference(ref, text))


def test_batch_pads_and_truncates_like_reference(tok, ref):
    texts = list(TEXTS.values()) + list(LONG.values())
    ours = tok(texts)
    assert ours["input_ids"].shape == (len(texts), 512)
    assert_same(ours, reference(ref, texts))
    empty = list(TEXTS).index("empty")
    assert ours["input_ids"][empty, :3].tolist() == [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]
    assert ours["attention_mask"][empty].sum() == 2


def test_max_length_override(tok, ref):
    texts = [TEXTS["english"], LONG["long_english"], TEXTS["empty"]]
    ours = tok(texts, max_length=8)
    assert ours["input_ids"].shape == (3, 8)
    assert_same(ours, reference(ref, texts, max_length=8))


def test_random_strings_match_reference(tok, ref):
    rng = random.Random(0)
    letters = "".join(sorted(set("".join(corpus()))))
    whitespace = " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff▁"
    marks = "\u0300\u0301\u0302\u0308\u0323\u3099\u309a\uff9e\uff9f\u200d\u200c\ufe0f\u0903\u0600\U0001f3fd"
    odd = "ＡＢＣ１２３ｶﾀﾅﾋﾊ①½ﬁ™㍿ªº\u1100\u1161\u11a8😀🇯🇵\x00\x7f\x9f<>/ ＜＞ｓｍａｋ"
    pools = [letters, letters + whitespace, whitespace, odd + marks + letters, marks + odd + whitespace]
    specials = ["<s>", "</s>", "<pad>", "<unk>", "<mask>", "＜ｍａｓｋ＞"]
    texts = []
    for _ in range(1000):
        pool = rng.choice(pools)
        texts.append("".join(rng.choice(pool) if rng.random() > 0.02 else rng.choice(specials)
                             for _ in range(rng.randint(0, 40))))
    texts += ["".join(chr(rng.randint(0x20, 0x2FFFF)) for _ in range(20)).encode("utf-8", "replace").decode()
              for _ in range(200)]  # any plane-0-2 character, lone surrogates replaced
    for i in range(0, len(texts), 100):
        assert_same(tok(texts[i:i + 100]), reference(ref, texts[i:i + 100]))


def test_follows_reference_where_sentencepiece_differs(tok, ref, model_dir):
    """The reference normalises per grapheme (shortest match) and splits on U+0085; sentencepiece does neither."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / MODEL_FILE))
    for text in ["ﾃﾚﾋﾞ", "ª\u0300", "a\x85b"]:
        with_sentencepiece = [0] + [i + 1 if i else 3 for i in sp.encode(text)] + [2]
        assert tok.encode(text) == ref(text)["input_ids"] != with_sentencepiece


def test_ids_are_sentencepiece_ids_plus_one(tok, model_dir):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / MODEL_FILE))
    text = TEXTS["mixed"]
    assert tok.encode(text) == [0] + [i + 1 for i in sp.encode(text)] + [2]
    assert 0 in sp.encode("☃ cat") and tok.encode("☃ cat")[1:-1] == [i + 1 if i else 3 for i in sp.encode("☃ cat")]
    assert [tok.pieces[i + 1] for i in range(3, sp.get_piece_size())] == [
        sp.id_to_piece(i) for i in range(3, sp.get_piece_size())]


def test_special_ids_and_vocabulary(tok, ref, model_dir):
    sp_size = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / MODEL_FILE)).get_piece_size()
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        ref.bos_token_id, ref.pad_token_id, ref.eos_token_id, ref.unk_token_id, ref.mask_token_id)
    assert tok.mask_token_id == sp_size + 1
    assert tok.vocab_size == len(tok) == len(ref) == ref.vocab_size == sp_size + 2
    assert list(tok.pieces) == ref.convert_ids_to_tokens(list(range(len(ref))))


@pytest.mark.parametrize("name", ["english", "japanese", "unknown_run", "specials", "halfwidth_dakuten", "empty"])
def test_tokenize_matches_reference(tok, ref, name):
    assert tok.tokenize(TEXTS[name]) == ref.tokenize(TEXTS[name])


def test_decode(tok, ref):
    for text in list(TEXTS.values()) + list(LONG.values()):
        ids = tok.encode(text)
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    for text in ["a photo of a cat", "猫の写真です", "фотография кошки", "une photo à côté"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok("a photo of a cat")["input_ids"][0]) == "a photo of a cat"
    assert tok.decode(tok.encode("ＡＢＣ１２３")) == "AB123"  # normalised; "C" was never seen, so it is <unk>


def test_single_string_is_a_batch_of_one(tok):
    one, batch = tok("a photo of a cat"), tok(["a photo of a cat"])
    assert one["input_ids"].shape == (1, 10)
    assert torch.equal(one["input_ids"], batch["input_ids"])
    assert torch.equal(one["attention_mask"], batch["attention_mask"])
    with pytest.raises(TypeError):
        tok([])
    with pytest.raises(TypeError):
        tok([1, 2])


@pytest.mark.parametrize("how", ["sentencepiece", "tokenizer.json", "AutoTokenizer"])
def test_every_way_of_loading_the_reference_agrees(tok, ref, model_dir, tmp_path, how):
    """BAAI/AltCLIP ships tokenizer.json too; transformers reads it instead of the sentencepiece file when present."""
    if how == "tokenizer.json":
        ref.save_pretrained(tmp_path)
        assert (tmp_path / "tokenizer.json").is_file()
        (tmp_path / MODEL_FILE).unlink(missing_ok=True)
        other = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)
    elif how == "AutoTokenizer":
        other = transformers.AutoTokenizer.from_pretrained(model_dir)
    else:
        other = ref
    texts = list(TEXTS.values()) + list(LONG.values())
    assert_same(tok(texts), reference(other, texts))


def test_model_max_length_from_tokenizer_config(tok, model_dir, tmp_path):
    assert tok.model_max_length == 512
    shutil.copy(model_dir / MODEL_FILE, tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 512  # no tokenizer_config.json
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    short = Tokenizer.from_pretrained(tmp_path)
    assert short.model_max_length == 16
    assert short(LONG["long_english"])["input_ids"].shape == (1, 16)
    assert Tokenizer(tmp_path / MODEL_FILE)(LONG["long_english"])["input_ids"].shape == (1, 512)


def test_fixture_is_deterministic(model_dir, tmp_path):
    assert train_sentencepiece(tmp_path).read_bytes() == (model_dir / MODEL_FILE).read_bytes()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        Tokenizer(tmp_path / "nothing.model")
    with pytest.raises(FileNotFoundError, match=MODEL_FILE) as err:
        Tokenizer.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="/no/such/folder"):
        Tokenizer.from_pretrained("/no/such/folder")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty hub cache, offline mode, and no sockets: nothing can reach the network."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, so patch them too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args):
        raise AssertionError("the test tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def test_offline_without_cache_is_a_clear_error(offline_hub):
    with pytest.raises(OSError, match="nobody-here/no-such-altclip") as err:
        Tokenizer.from_pretrained("nobody-here/no-such-altclip")
    assert "--model /path/to/folder" in str(err.value) and "\n" not in str(err.value)


def test_offline_from_hub_cache(offline_hub, model_dir, tok):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--someone--tiny-altclip"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    cached = Tokenizer.from_pretrained("someone/tiny-altclip")
    assert cached.encode(TEXTS["mixed"]) == tok.encode(TEXTS["mixed"])


def test_runtime_does_not_import_transformers():
    code = "import sys, tokenizer; assert 'transformers' not in sys.modules, 'tokenizer imported transformers'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
