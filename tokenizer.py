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
   in front of every word, and each word is split into pieces by Viterbi search.
Sentencepiece reads the model file; steps 1-3 are written out below.
"""
import json
import pathlib
import re
import struct

import regex  # grapheme clusters (\X), which the standard library's `re` lacks
import sentencepiece
import torch

MODEL_FILE = "sentencepiece.bpe.model"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq ids 0-3; <mask> comes after the pieces
WHITESPACE = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")  # White_Space
UNK_PENALTY = 10.0  # an unknown character scores this much below the worst piece, as in sentencepiece


class Tokenizer:
    """`Tokenizer.from_pretrained("BAAI/AltCLIP")(["a cat", "eine Katze"])` -> {"input_ids", "attention_mask"}."""

    def __init__(self, path, model_max_length=512):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No sentencepiece model at {path}")
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        n = sp.get_piece_size()
        # fairseq's layout: four specials, sentencepiece's pieces from its id 3 on (id + 1), then <mask>.
        self.pieces = SPECIALS + [sp.id_to_piece(i) for i in range(3, n)] + ["<mask>"]
        scores = [0.0] * 4 + [sp.get_score(i) for i in range(3, n)] + [0.0]
        self.vocab = {piece: (i, score) for i, (piece, score) in enumerate(zip(self.pieces, scores))}
        self.unk_score = min(scores) - UNK_PENALTY
        self.longest_piece = max(map(len, self.pieces))
        self.charmap = CharMap(sp.serialized_model_proto())

        self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2, 3
        self.mask_token_id = n + 1
        self.vocab_size = n + 2
        self.special_ids = {0, 1, 2, 3, self.mask_token_id}
        self.specials = re.compile("(" + "|".join(map(re.escape, SPECIALS + ["<mask>"])) + ")")
        self.model_max_length = model_max_length

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
        rows = [self.encode(text, max_length) for text in texts]
        input_ids = torch.full((len(rows), max(map(len, rows))), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = torch.tensor(row)
            attention_mask[i, :len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def encode(self, text, max_length=None):
        """Ids of one text, with <s> and </s>; long texts keep their first max_length - 2 pieces."""
        max_length = max_length or self.model_max_length
        if max_length < 2:
            raise ValueError(f"max_length must leave room for <s> and </s>, got {max_length}")
        ids = [i for _, i in self.split(text)]
        return [self.bos_token_id] + ids[:max_length - 2] + [self.eos_token_id]

    def tokenize(self, text):
        """The pieces of a text (no <s>, </s>, no truncation); an unknown stretch is shown as its own characters."""
        return [piece for piece, _ in self.split(text)]

    def decode(self, ids):
        """Text of a list (or 1-D tensor) of ids, skipping special tokens, as the reference's decode does."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        text = "".join(self.pieces[i] for i in ids if i not in self.special_ids).replace("▁", " ")
        return text[1:] if text.startswith(" ") else text  # the "▁" put in front of the first word

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

        for start in range(len(chunk)):
            for end in range(start + 1, min(start + self.longest_piece, len(chunk)) + 1):
                if (piece := self.vocab.get(chunk[start:end])) is not None:
                    offer(start, end, piece[0], best[start][0] + piece[1])
            if chunk[start] not in self.vocab:
                offer(start, start + 1, self.unk_token_id, best[start][0] + self.unk_score)
        pairs, end = [], len(chunk)
        while end > 0:  # walk back from the end
            _, start, id_ = best[end]
            if id_ == self.unk_token_id and pairs and pairs[-1][1] == self.unk_token_id:
                pairs[-1] = (chunk[start:end] + pairs[-1][0], id_)
            else:
                pairs.append((chunk[start:end], id_))
            end = start
        return pairs[::-1]


class CharMap:
    """Sentencepiece's precompiled normalisation map: a double-array trie (darts-clone) from UTF-8 strings to offsets
    of their replacements in a pool of NUL-terminated strings. An empty map normalises nothing."""

    def __init__(self, model_proto):
        blob = protobuf_field(protobuf_field(model_proto, 3), 2)  # ModelProto.normalizer_spec.precompiled_charsmap
        size = struct.unpack_from("<I", blob)[0] if blob else 0
        self.units = struct.unpack_from(f"<{size // 4}I", blob, 4) if blob else ()
        self.pool = blob[4 + size:]

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

    def normalize(self, text):
        """The reference's way (step 2 of the module docstring). Its graphemes come from Rust's unicode-segmentation,
        ours from `regex`; the two can disagree on odd sequences (a virama after a non-letter, unassigned marks)."""
        out = []
        for grapheme in regex.findall(r"\X", text):
            mapped = self.shortest_match(grapheme) if len(grapheme.encode()) < 6 else None
            if mapped is None:
                mapped = "".join(c if (m := self.shortest_match(c)) is None else m for c in grapheme)
            out.append(mapped)
        return "".join(out)


def offset(unit):
    """darts-clone: where a node's children start, relative to the node."""
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


def protobuf_field(message, number):
    """The first length-delimited field `number` of a serialized protobuf message (b"" if absent)."""
    i = 0
    while i < len(message):
        key, i = varint(message, i)
        if key & 7 == 0:
            _, i = varint(message, i)
        elif key & 7 in (1, 5):  # fixed 64 or 32 bits
            i += 8 if key & 7 == 1 else 4
        else:
            length, i = varint(message, i)
            if key >> 3 == number:
                return message[i:i + length]
            i += length
    return b""


def varint(buf, i):
    value = shift = 0
    while True:
        value |= (buf[i] & 0x7F) << shift
        shift += 7
        i += 1
        if buf[i - 1] < 0x80:
            return value, i


def download(repo_id, filename):
    """A file of a hub repo, through huggingface_hub's cache (looked at first), with load_weights' clear errors."""
    from load_weights import cache_first, hub_file  # one resolver for weights and tokenizer

    path = cache_first(repo_id, lambda local_only: hub_file(repo_id, filename, local_only))
    if path is None:
        raise FileNotFoundError(f"{repo_id} has no {filename} on the Hugging Face Hub")
    return path
