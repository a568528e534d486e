"""XLM-RoBERTa's tokenizer, which feeds AltCLIP's text tower: a sentencepiece unigram model in fairseq's id layout.

XLM-R's `sentencepiece.bpe.model` is, despite its name, a sentencepiece *unigram* model: a list of pieces with
log-probabilities, and a text is split into the pieces whose scores sum highest. Fairseq put four special tokens in
front of the pieces and `<mask>` behind them, so a piece's id is its sentencepiece id plus one:

    id      0     1      2      3      4 ... n            n + 1       (n = number of sentencepiece pieces)
    token   <s>   <pad>  </s>   <unk>  pieces 3 ... n-1   <mask>

Sentencepiece's own `<unk>`, `<s>`, `</s>` (its ids 0, 1, 2) give way to the four in front; a character that no
piece covers is `<unk>` (3). A text becomes `<s> pieces </s>`, at most 512 ids.

The ids must equal those of the reference, `transformers.XLMRobertaTokenizer`, which runs the same model file through
HF `tokenizers`. That differs from `sentencepiece.encode` in a few corners, and we follow the reference:
1. special-token strings in the text ("<mask>", "</s>", ...) become their ids;
2. the model's normalisation (NFKC and a few rules, precompiled into the model file as a character map) is applied
   one grapheme at a time: a grapheme under 6 bytes is replaced by the mapping of its *shortest* mapped prefix,
   longer ones character by character. Sentencepiece always takes the longest match instead, so half-width "ﾋﾞ"
   becomes "ビ" there but "ヒ" + U+3099 here, and "ª" + U+0300 becomes "à" there but "a" here;
3. the normalised text is split on Unicode whitespace (including U+0085, which the character map keeps), "▁" is put
   in front of every word, and each word is split into pieces by Viterbi search. The special tokens are pieces
   there too (score 0), so a "＜ｍａｓｋ＞" that normalises to "<mask>" becomes <mask>.

`Tokenizer.split` writes steps 1-3 out in Python: it is the definition, and the tests hold the fast path to it. The
fast path (`__call__`, `encode`, `tokenize`) gives the same ids at sentencepiece's speed:
- step 2 stays in Python, from caches: each distinct character or grapheme goes through the character map once, and
  a text in which every character is its own grapheme (most text) is mapped character by character by
  `str.translate`, without grapheme segmentation;
- step 3's Viterbi search runs in sentencepiece's C++, one call for a whole batch, on the model file rewritten by
  `for_our_words`: no normaliser of its own (it gets our normalised words), fairseq's ids, the reference's specials
  as pieces, and a separator piece between the words of a text so that no piece spans two;
- words in which a stretch repeats ("hahaha", "!!!", "1000000") are split by our Viterbi search instead: there,
  splits with the same score are common, and sentencepiece, adding in float32, may keep another one than the
  reference (see REPEAT).
Loading asks sentencepiece for nothing per piece: `pieces` and `vocab` look pieces up when asked.
"""
import collections.abc
import functools
import itertools
import json
import operator
import pathlib
import re
import struct

import numpy
import regex  # grapheme clusters (\X), which the standard library's `re` lacks
import sentencepiece
import torch

MODEL_FILE = "sentencepiece.bpe.model"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq ids 0-3; <mask> comes after the pieces
UNKNOWN = 3  # the id of a character that no piece covers, whatever the file's layout
WHITESPACE = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")  # White_Space
NOT_WHITE_SPACE = re.compile("[\x1c-\x1f]")  # what str.split() splits on, besides WHITESPACE
UNK_PENALTY = 10.0  # an unknown character scores this much below the worst piece, as in sentencepiece
GRAPHEME = regex.compile(r"\X")
# The characters that can join a neighbour in a grapheme (Unicode's grapheme break rules GB3-GB13: CR LF, Hangul
# jamo sequences, Extend, ZWJ, SpacingMark, Prepend, regional-indicator pairs; the Indic conjunct rule GB9c needs a
# virama, which is Extend). A text with none of them is one grapheme per character.
JOINERS = regex.compile(r"[\r\p{GCB=Extend}\p{GCB=ZWJ}\p{GCB=SpacingMark}\p{GCB=Prepend}"
                        r"\p{GCB=Regional_Indicator}\p{GCB=L}\p{GCB=V}\p{GCB=T}]")
# Sentencepiece adds scores in float32, the reference in float64 (exactly, for sums of float32 scores). Splits with
# the same score then come out the same only if sentencepiece's rounding happens to keep the first one found, as the
# reference does. Two different splits of a word score the same, other than by a coincidence of scores, when they
# use the same pieces in another order: "a"+"aa" and "aa"+"a" in "▁aaa". That takes a word in which a stretch repeats,
# a unit three times running or a unit of two characters or more twice running (checked exhaustively on small
# alphabets, tests/test_tokenizer.py::test_equal_splits_need_a_repeat); such words are split by our Viterbi search.
# (Splits with different pieces whose float64 scores differ by less than float32 rounding, ~1e-6 of the score, can
# still be ordered differently; no test has met one.)
REPEAT = re.compile(r"(.)\1\1|(..+)\2", re.S)


class Tokenizer:
    """`Tokenizer.from_pretrained("BAAI/AltCLIP")(["a cat", "eine Katze"])` -> {"input_ids", "attention_mask"}."""

    def __init__(self, path, model_max_length=512):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No sentencepiece model at {path}")
        model = path.read_bytes()
        pieces_end, fields = model_fields(model)
        self.charmap = CharMap(protobuf_field(fields.get(3, b""), 2))  # normalizer_spec.precompiled_charsmap
        # Sentencepiece gets the words of a text as one string, joined by a character that no piece of the file
        # contains (its bytes are nowhere in the file), added as a piece: no piece can span two words, so each word
        # is split as if it were alone, as the reference does.
        self.sep = next(c for c in map(chr, range(0x10FFFF, 0xF0000, -1)) if c.encode() not in model)
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=for_our_words(model, pieces_end, fields, self.sep))
        n = self.sp.get_piece_size() - len(ADDED) - 1  # the file's pieces and our placeholder: <mask> comes next
        self.sep_id = n + len(ADDED)
        # in words joined by the separator: a character three times running, or a pair of characters twice, as
        # REPEAT needs (a cheaper search: REPEAT itself takes time in the square of a word's length)
        c = f"[^{re.escape(self.sep)}]"
        self.maybe_repeat = re.compile(f"({c})\\1\\1|({c}{c}){c}*?\\2")

        self.mask_token_id = n
        self.vocab_size = n + 1
        # The reference's vocabulary is a list: the four specials, the file's pieces from its fourth on, <mask>. A
        # token's id is its *last* place in that list, so a special that the file also has among those pieces (a
        # "</s>" at sentencepiece id 3, in a file laid out pad, unk, bos, eos) takes that piece's id. The file says
        # where its pieces are: ask sentencepiece, which looks special pieces up among the file's own first.
        self.special_id = {token: self.own_piece(token, default=i) for i, token in enumerate(SPECIALS)}
        self.special_id["<mask>"] = self.mask_token_id
        self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id = map(self.special_id.get, SPECIALS)
        self.special_ids = {0, 1, 2, 3, *self.special_id.values()}  # what decode leaves out: both places of each
        self.specials = re.compile("(" + "|".join(map(re.escape, self.special_id)) + ")")
        # sentencepiece's ids that are not fairseq's: its unknown (a character no piece covers is UNKNOWN, 3, in the
        # reference, wherever the file keeps its own unknown piece), and the specials added as pieces after <mask>
        self.from_sp = {self.sp.unk_id(): UNKNOWN} | {n + i: self.special_id[t] for i, t in enumerate(ADDED) if i}
        self.pieces = Pieces(self.sp, self.vocab_size)
        self.vocab = Vocab(self.sp, self.vocab_size, self.special_id)
        self.split_word = Cache(self.viterbi)
        self.model_max_length = model_max_length

    def own_piece(self, token, default):
        """The fairseq id of `token` among the file's pieces that the reference keeps (its fourth on), or default."""
        i = self.sp.piece_to_id(token)
        return i if 4 <= i < self.mask_token_id and self.sp.id_to_piece(i) == token else default

    @classmethod
    def from_pretrained(cls, source="BAAI/AltCLIP"):
        """From a folder holding sentencepiece.bpe.model, the model file itself, or a hub repo id (through the
        huggingface_hub cache). `model_max_length` comes from a tokenizer_config.json next to the model, if any."""
        folder = pathlib.Path(source)
        if folder.is_dir():
            path = folder / MODEL_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{folder} has no {MODEL_FILE}: not a tokenizer folder")
        elif folder.is_file():
            path = folder
        else:
            path = pathlib.Path(download(str(source), MODEL_FILE))
        config = path.parent / "tokenizer_config.json"
        config = json.loads(config.read_text()) if config.is_file() else {}
        return cls(path, model_max_length=config.get("model_max_length", 512))

    def __len__(self):
        return self.vocab_size

    def __call__(self, texts, max_length=None):
        """Token ids and attention mask, (B, L) int64: `<s> … </s>`, right-padded with <pad> to the longest text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(text, str) for text in texts):
            raise TypeError(f"expected a string or a non-empty list of strings, got {texts!r:.80}")
        rows = self.encode_batch(texts, max_length)
        lengths = numpy.fromiter(map(len, rows), numpy.int64, len(rows))
        attention_mask = numpy.arange(lengths.max()) < lengths[:, None]  # (B, L)
        input_ids = numpy.full(attention_mask.shape, self.pad_token_id, numpy.int64)
        input_ids[attention_mask] = numpy.fromiter(itertools.chain.from_iterable(rows), numpy.int64, lengths.sum())
        input_ids, attention_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask.astype(numpy.int64))
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def encode(self, text, max_length=None):
        """Ids of one text, with <s> and </s>; long texts keep their first max_length - 2 pieces."""
        return self.encode_batch([text], max_length)[0]

    def encode_batch(self, texts, max_length=None):
        """`encode` of each text, with one call to sentencepiece for all of them."""
        max_length = max_length or self.model_max_length
        if max_length < 2:
            raise ValueError(f"max_length must leave room for <s> and </s>, got {max_length}")
        items = [self.words(text) for text in texts]
        encoded = iter(self.sp_encode([item for row in items for item in row if type(item) is str]))
        rows = []
        for row in items:
            if len(row) == 1 and type(row[0]) is str:  # the common case, a text of words for sentencepiece only
                ids = self.fairseq_ids([self.bos_token_id, *next(encoded)])
            else:
                ids = [self.bos_token_id]
                for item in row:
                    ids += self.fairseq_ids(next(encoded)) if type(item) is str else [i for _, i in item]
            if len(ids) >= max_length:
                del ids[max_length - 1:]
            ids.append(self.eos_token_id)
            rows.append(ids)
        return rows

    def sp_encode(self, strings, out_type=int):
        """sentencepiece.encode of each string. Its batch call starts threads, ~0.1 ms: for a few strings, one call
        each is quicker."""
        if len(strings) < 32:
            return [self.sp.encode(s, out_type=out_type) for s in strings]
        return self.sp.encode(strings, out_type=out_type)

    def fairseq_ids(self, ids):
        """Sentencepiece's ids without the separators: fairseq's, but for its unknown and the specials added after
        <mask>."""
        ids = [*filter(self.sep_id.__ne__, ids)]
        return ids if self.from_sp.keys().isdisjoint(ids) else [self.from_sp.get(i, i) for i in ids]

    def tokenize(self, text):
        """The pieces of a text (no <s>, </s>, no truncation); an unknown stretch is shown as its own characters."""
        items = self.words(text)
        encoded = iter(self.sp_encode([item for item in items if type(item) is str], out_type=str))
        pieces = []
        for item in items:
            pieces += [p for p in next(encoded) if p != self.sep] if type(item) is str else [p for p, _ in item]
        return pieces

    def words(self, text):
        """Steps 1-3 of the module docstring up to the Viterbi search: the normalised words, each with "▁" in front
        (a "▁" inside a word starts a new one), joined by the separator for sentencepiece to split. The special tokens
        of the text, and the words that sentencepiece might split otherwise than the reference (see REPEAT), come
        already split, as lists of (piece, id) pairs."""
        if "<" not in text:  # no special token: the common case
            return self.words_between_specials(text)
        out = []
        for i, part in enumerate(self.specials.split(text)):
            if i % 2:  # re.split puts the special-token strings at odd positions
                out.append([(part, self.special_id[part])])
            else:
                out += self.words_between_specials(part)
        return out

    def words_between_specials(self, part):
        normalized = self.charmap.fast_normalize(part)
        if "▁" in normalized or NOT_WHITE_SPACE.search(normalized):
            words = [word for word in WHITESPACE.split(normalized) if word]
            words = [chunk for word in words for chunk in re.findall("▁[^▁]*", "▁" + word.removeprefix("▁"))]
        else:  # the common case, in C: str.split splits on WHITESPACE here
            words = ["▁" + word for word in normalized.split()]
        joined = self.sep.join(words)
        if self.maybe_repeat.search(joined) or self.sep in normalized:
            words = [self.split_word[w] if REPEAT.search(w) or self.sep in w else w for w in words]
            return [self.sep.join(group) if for_sp else list(itertools.chain.from_iterable(group))
                    for for_sp, group in itertools.groupby(words, lambda w: type(w) is str)]
        return [joined] if joined else []

    def decode(self, ids, skip_special_tokens=True):
        """Text of a list (or 1-D tensor) of ids, as the reference's decode gives it with skip_special_tokens (with
        False, its own default, the special tokens are written out)."""
        ids = ids.tolist() if isinstance(ids, (torch.Tensor, numpy.ndarray)) else ids
        skip = self.special_ids if skip_special_tokens else ()
        text = "".join(self.pieces[i] for i in ids if i not in skip).replace("▁", " ")
        return text[1:] if text.startswith(" ") else text  # the "▁" put in front of the first word

    # -------------------------------------------------------------------------------------------------------------
    # The definition: steps 1-3 written out, with the Viterbi search in Python. Slow; the fast path above must agree.

    def split(self, text):
        """(piece, id) pairs of a text, steps 1-3 of the module docstring."""
        pairs = []
        for i, part in enumerate(self.specials.split(text)):
            if i % 2:  # re.split puts the special-token strings at odd positions
                pairs.append((part, self.vocab[part][0]))
                continue
            for word in WHITESPACE.split(self.charmap.normalize(part)):
                if word:
                    word = word if word.startswith("▁") else "▁" + word
                    for chunk in re.findall("▁[^▁]*", word):  # a "▁" in the word starts a new chunk
                        pairs += self.viterbi(chunk)
        return pairs

    def viterbi(self, chunk):
        """The split of `chunk` into pieces whose scores sum highest. A character no piece covers is <unk>, scored
        UNK_PENALTY below the worst piece; neighbouring <unk>s merge into one."""
        # best[end] = (score, start, id) of the best split of chunk[:end]; on a tie the first one found stays
        best = [(0.0, 0, None)] + [None] * len(chunk)

        def offer(start, end, id_, score):
            if best[end] is None or score > best[end][0]:
                best[end] = (score, start, id_)

        # pieces to try are at most this long: any bound from the longest piece up gives the same split, and finding
        # the longest piece of 250,000 takes a while, which a short chunk need not wait for
        longest = len(chunk) if len(chunk) <= 64 else self.longest_piece
        for start in range(len(chunk)):
            for end in range(start + 1, min(start + longest, len(chunk)) + 1):
                if (piece := self.vocab.get(chunk[start:end])) is not None:
                    offer(start, end, piece[0], best[start][0] + piece[1])
            if chunk[start] not in self.vocab:
                offer(start, start + 1, UNKNOWN, best[start][0] + self.unk_score)
        pairs, end = [], len(chunk)
        while end > 0:  # walk back from the end
            _, start, id_ = best[end]
            if id_ == UNKNOWN and pairs and pairs[-1][1] == UNKNOWN:
                pairs[-1] = (chunk[start:end] + pairs[-1][0], id_)
            else:
                pairs.append((chunk[start:end], id_))
            end = start
        return pairs[::-1]

    @functools.cached_property
    def longest_piece(self):  # the specials are shorter than "<mask>"
        return max(len("<mask>"), *map(len, map(self.sp.id_to_piece, range(4, self.mask_token_id))))

    @functools.cached_property
    def unk_score(self):  # the specials score 0
        return min(0.0, *map(self.sp.get_score, range(4, self.mask_token_id))) - UNK_PENALTY


def write_config(folder, model_max_length: int):
    """tokenizer_config.json and special_tokens_map.json, as BAAI/AltCLIP ships them (the tokenizer's class, its
    length limit, XLM-R's special tokens): written beside a sentencepiece.bpe.model, they make a folder that
    `Tokenizer.from_pretrained` and the reference's AutoTokenizer both read."""
    folder = pathlib.Path(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": model_max_length}, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>", "pad_token": "<pad>",
         "cls_token": "<s>", "mask_token": "<mask>"}, indent=2) + "\n")


class Pieces(collections.abc.Sequence):
    """The tokens by fairseq id, looked up in sentencepiece when asked for (a list of 250,000 takes time to make)."""

    def __init__(self, sp, size):
        self.sp, self.size = sp, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.size))]
        i = operator.index(i) + (self.size if i < 0 else 0)
        if not 0 <= i < self.size:
            raise IndexError(f"token id {i} is not below {self.size}")
        return SPECIALS[i] if i < 4 else "<mask>" if i == self.size - 1 else self.sp.id_to_piece(i)


class Vocab(collections.abc.Mapping):
    """piece -> (fairseq id, score), the reference's unigram vocabulary, looked up in sentencepiece when asked for:
    the pieces with their scores, and the special tokens with score 0."""

    def __init__(self, sp, size, special_id):
        self.sp, self.size, self.special_id = sp, size, special_id
        self.unk = sp.unk_id()  # what sentencepiece answers for a string that is no piece

    def get(self, piece, default=None):
        if piece in self.special_id:
            return self.special_id[piece], 0.0
        i = self.sp.piece_to_id(piece)  # below 4 or above <mask>: not a piece of the file (see for_our_words)
        return (i, self.sp.get_score(i)) if 4 <= i < self.size - 1 and i != self.unk else default

    def __getitem__(self, piece):
        if (found := self.get(piece)) is None:
            raise KeyError(piece)
        return found

    def __iter__(self):
        return iter(Pieces(self.sp, self.size))

    def __len__(self):
        return self.size


class CharMap:
    """Sentencepiece's precompiled normalisation map: a double-array trie (darts-clone) from UTF-8 strings to offsets
    of their replacements in a pool of NUL-terminated strings. An empty map normalises nothing."""

    def __init__(self, blob):
        size = struct.unpack_from("<I", blob)[0] if blob else 0
        self.units = struct.unpack_from(f"<{size // 4}I", blob, 4) if blob else ()
        self.pool = blob[4 + size:]
        self.by_code = Cache(lambda code: self.grapheme(chr(code)))  # str.translate's table: code point -> text
        self.by_grapheme = Cache(self.grapheme)

    def shortest_match(self, text):
        """Replacement of the shortest prefix of `text` that the map holds, or None."""
        if not self.units:
            return None
        node = offset(self.units[0])
        for byte in text.encode():
            if byte == 0:
                return None
            node ^= byte
            unit = self.units[node]
            if unit & 0x800000FF != byte:  # the unit's label: no key continues with this byte
                return None
            node ^= offset(unit)
            if unit >> 8 & 1:  # a key ends here; its value unit sits at `node`
                start = self.units[node] & 0x7FFFFFFF
                return self.pool[start:self.pool.index(0, start)].decode()
        return None

    def grapheme(self, grapheme):
        """The reference's normalisation of one grapheme (step 2 of the module docstring)."""
        mapped = self.shortest_match(grapheme) if len(grapheme.encode()) < 6 else None
        if mapped is None:
            mapped = "".join(c if (m := self.shortest_match(c)) is None else m for c in grapheme)
        return mapped

    def normalize(self, text):
        """The reference's way, grapheme by grapheme. Its graphemes come from Rust's unicode-segmentation, ours from
        `regex`; the two can disagree on odd sequences (a virama after a non-letter, unassigned marks)."""
        return "".join(self.grapheme(g) for g in GRAPHEME.findall(text))

    def fast_normalize(self, text):
        """`normalize` from the caches; character by character where each character is its own grapheme."""
        if text.isascii() and "\r" not in text or JOINERS.search(text) is None:
            return text.translate(self.by_code)
        return "".join(map(self.by_grapheme.__getitem__, GRAPHEME.findall(text)))


class Cache(dict):
    """fn(key), computed on first use; a dict, so that str.translate and map read it in C. Emptied when full, so
    that endless new graphemes cannot grow it without bound."""

    def __init__(self, fn, limit=1 << 17):
        super().__init__()
        self.fn, self.limit = fn, limit

    def __missing__(self, key):
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.fn(key)
        return value


def offset(unit):
    """darts-clone: where a node's children start, relative to the node."""
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


# -------------------------------------------------------------------------------------------------------------------
# The model file, a serialized sentencepiece ModelProto: pieces (field 1, each a piece, its score and its type),
# trainer_spec (2), normalizer_spec (3), self_test_data (4), denormalizer_spec (5).

NORMAL, UNKNOWN_TYPE, CONTROL, UNUSED = 1, 2, 3, 5  # piece types
DROPPED_PIECES = 3  # the reference's vocabulary starts at the file's fourth piece
ADDED = ["<mask>", "<s>", "<pad>", "</s>", "<unk>"]  # the reference's specials, pieces of its vocabulary


def for_our_words(model, pieces_end, fields, separator):
    """The model file rewritten so that sentencepiece splits our normalised words as the reference does:
    - a placeholder piece in front moves every piece one id up, to its fairseq id; sentencepiece's unknown moves to
      1 (the caller maps it to 3);
    - the reference's special tokens are ordinary pieces of its vocabulary, with score 0: they are added at the end
      as such, <mask> first so that its id is fairseq's (the caller maps the others to 0-3), then the separator that
      the caller puts between words;
    - unigram and no byte fallback, whatever the file says: the reference reads every model file that way;
    - the identity normaliser, with no "▁" added in front and no whitespace removed: our words are normalised and
      split already, and sentencepiece must see them as they are. The self-test samples and the denormaliser go:
      they assume the file's normaliser.
    The file's own pieces are kept as they are: XLM-R's are all normal ones (sentencepiece would skip unused or
    control pieces and always prefer user-defined ones; the reference takes them all as normal). But the reference
    drops the file's first three pieces, whatever they are (XLM-R's <unk>, <s>, </s>; in other layouts <pad> or an
    ordinary piece): those that sentencepiece would match become unused pieces (see `unused`).
    Appending works because protobuf appends repeated fields and merges repeated messages, later values winning."""
    trainer = fields.get(2, b"") + varint_field(3, 1) + varint_field(35, 0)  # model_type UNIGRAM, byte_fallback off
    first, rest = leading_pieces(model, DROPPED_PIECES)
    identity = (message_field(1, b"identity") + message_field(2, b"")  # name, precompiled_charsmap
                + varint_field(3, 0) + varint_field(4, 0) + varint_field(5, 0))  # dummy prefix, extra and escaped ws
    return b"".join([message_field(1, piece("<fairseq offset>", CONTROL)), *map(unused, first), model[rest:pieces_end],
                     *(message_field(1, piece(token, NORMAL)) for token in ADDED + [separator]),
                     message_field(2, trainer), message_field(3, identity)])


def leading_pieces(model, k):
    """The first k serialized pieces of a ModelProto (each a field-1 message), and the offset where the rest start."""
    pieces, i = [], 0
    for _ in range(k):
        length, start = varint(model, i + 1)
        pieces.append(model[start:start + length])
        i = start + length
    return pieces, i


def unused(serialized):
    """A serialized piece (text 1, score 2, type 3) that sentencepiece will not match, as a field-1 message of the
    ModelProto: unknown and control pieces are never matched as they are (and sentencepiece needs its unknown);
    others are retyped UNUSED."""
    text, score, type_, i = b"", 0.0, NORMAL, 0
    while i < len(serialized):
        key, i = varint(serialized, i)
        if key == 1 << 3 | 2:
            length, i = varint(serialized, i)
            text, i = serialized[i:i + length], i + length
        elif key == 2 << 3 | 5:
            score, i = struct.unpack_from("<f", serialized, i)[0], i + 4
        elif key == 3 << 3:
            type_, i = varint(serialized, i)
        else:
            raise ValueError(f"unexpected field {key >> 3} in a piece of the model file")
    return message_field(1, serialized if type_ in (UNKNOWN_TYPE, CONTROL) else piece(text.decode(), UNUSED, score))


def piece(text, type_, score=0.0):
    """A serialized ModelProto.SentencePiece."""
    return message_field(1, text.encode()) + bytes([2 << 3 | 5]) + struct.pack("<f", score) + varint_field(3, type_)


def model_fields(model):
    """Where the pieces of a serialized ModelProto end, and its other fields (number -> bytes). The pieces come first
    in the files sentencepiece writes, 250,000 of them in XLM-R's: a tight loop steps over them."""
    i, end = 0, len(model)
    while i < end and model[i] == 1 << 3 | 2:  # field 1, length-delimited
        length = model[i + 1]
        if length < 0x80:  # a one-byte length: nearly every piece
            i += 2 + length
        else:
            length, i = varint(model, i + 1)
            i += length
    fields = dict(protobuf_fields(model, i))
    if 1 in fields:
        raise ValueError("the model file's pieces are not all at its start; sentencepiece writes them there")
    return i, fields


def protobuf_fields(message, i=0):
    """(field number, value) of each field of a serialized protobuf message, from offset i: bytes for the
    length-delimited fields, None for the others."""
    while i < len(message):
        key, i = varint(message, i)
        value = None
        if key & 7 == 0:
            _, i = varint(message, i)
        elif key & 7 in (1, 5):  # fixed 64 or 32 bits
            i += 8 if key & 7 == 1 else 4
        else:
            length, i = varint(message, i)
            value, i = message[i:i + length], i + length
        yield key >> 3, value


def protobuf_field(message, number):
    """The first length-delimited field `number` of a serialized protobuf message (b"" if absent)."""
    return next((value for n, value in protobuf_fields(message) if n == number and value is not None), b"")


def varint(buf, i):
    value = shift = 0
    while True:
        value |= (buf[i] & 0x7F) << shift
        shift += 7
        i += 1
        if buf[i - 1] < 0x80:
            return value, i


def encode_varint(value):
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def varint_field(number, value):
    return encode_varint(number << 3) + encode_varint(value)


def message_field(number, payload):
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def download(repo_id, filename):
    """A file of a hub repo, through huggingface_hub's cache (looked at first), with load_weights' clear errors."""
    from checkpoint_files import cache_first, hub_file  # one resolver for weights and tokenizer

    path = cache_first(repo_id, lambda local_only: hub_file(repo_id, filename, local_only))
    if path is None:
        raise FileNotFoundError(f"{repo_id} has no {filename} on the Hugging Face Hub")
    return path
