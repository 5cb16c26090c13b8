"""Token ids of review texts: truncated to max_length, never padded here.

Batches pad themselves at training and scoring time (to the longest review in the batch), so what is stored is
the real tokens only: one flat int32 array plus row offsets, compact enough to keep as a Metaflow artifact. The
data layer owns this because the drift checks count tokens too; the tokenize step (steps/training/tokenize.py)
encodes the splits with it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizedReviews:
    ids: object  # np.ndarray[int32], all rows' token ids concatenated
    offsets: object  # np.ndarray[int64], row i is ids[offsets[i]:offsets[i+1]]
    labels: object  # np.ndarray[int64]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self):
        import numpy as np

        return np.diff(self.offsets)

    def subset(self, rows) -> TokenizedReviews:
        import numpy as np

        rows = np.asarray(rows)
        pieces = [self[i] for i in rows]
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        return TokenizedReviews(
            ids=np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            labels=self.labels[rows],
            pad_token_id=self.pad_token_id,
        )


def encode(texts, labels, tokenizer, max_length: int, batch_size: int = 10_000, progress=None) -> TokenizedReviews:
    """Tokenize `texts` (truncating to `max_length` tokens, special tokens included).

    progress: a steps.runtime.progress.Progress counting reviews, updated after every `batch_size` reviews.
    For BERT-style WordPiece tokenizers, ASCII texts take a faster path that gives the same ids (WordPieceCache).
    """
    import itertools

    import numpy as np

    texts = [t if isinstance(t, str) else str(t) for t in texts]
    cache = WordPieceCache.for_tokenizer(tokenizer, max_length)
    ids, lengths = [], []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        rows = cache.encode(chunk) if cache is not None else _encode_with(tokenizer, chunk, max_length)
        lengths.append(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)))
        ids.append(np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths[-1].sum())))
        if progress is not None:
            progress.update(len(chunk))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return TokenizedReviews(
        ids=np.concatenate(ids) if ids else np.zeros(0, np.int32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
    )


def _encode_with(tokenizer, texts: list, max_length: int) -> list:
    """Token ids of each text, from the tokenizer itself."""
    return tokenizer(texts, truncation=True, max_length=max_length, padding=False, return_attention_mask=False,
                     return_token_type_ids=False)["input_ids"]


class WordPieceCache:
    """The ids a BERT WordPiece tokenizer gives ASCII texts, from a cache of the ids of each word.

    For a fast tokenizer with BERT's normalizer (clean text, lower case), BERT's pre-tokenizer (split at
    whitespace, every punctuation character a word of its own), a WordPiece model and `[CLS] text [SEP]`, an ASCII
    text's ids are: [CLS], the WordPiece ids of each word (computed once per distinct word by the tokenizer's own
    model), cut to max_length - 2, [SEP]. That is what the tokenizer does, without its per-text cost (on a 2-core
    CPU the tokenizer managed ~8,000 short reviews/s, this ~10x more). Texts with other characters, or with the
    text of a special token such as "[MASK]" in them, go to the tokenizer.
    """

    def __init__(self, tokenizer, max_length: int, lowercase: bool):
        import re
        import string

        self.tokenizer, self.max_length = tokenizer, max_length
        self.model = tokenizer.backend_tokenizer.model
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        table = {c: None for c in range(32) if chr(c) not in "\t\n\r"}  # control characters are dropped
        table.update({ord("\t"): " ", ord("\n"): " ", ord("\r"): " ", 127: None})
        table.update({ord(c): f" {c} " for c in string.punctuation})  # punctuation: a word of its own
        if lowercase:
            table.update({ord(c): c.lower() for c in string.ascii_uppercase})
        self.table = str.maketrans(table)
        added = [t.content for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values() if t.content]
        self.special = re.compile("|".join(map(re.escape, added)), re.IGNORECASE).search if added else None
        self.words = {}  # word -> its WordPiece ids

    @classmethod
    def for_tokenizer(cls, tokenizer, max_length: int) -> WordPieceCache | None:
        """A cache when `tokenizer` is of the kind described above (and checks out on a few texts), else None."""
        import json

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or max_length < 2 or None in (getattr(tokenizer, "cls_token_id", None),
                                                         getattr(tokenizer, "sep_token_id", None)):
            return None
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001 - a tokenizer that cannot describe itself takes the general path
            return None
        normalizer, pre_tokenizer, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec["model"]
        post = spec.get("post_processor") or {}
        template = [next(iter(part.values())).get("id") for part in post.get("single", [])]
        if (normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text")
                or pre_tokenizer.get("type") != "BertPreTokenizer" or model.get("type") != "WordPiece"
                or not (post.get("type") == "BertProcessing"
                        or (post.get("type") == "TemplateProcessing"
                            and template == [tokenizer.cls_token, "A", tokenizer.sep_token]))):
            return None
        cache = cls(tokenizer, max_length, lowercase=bool(normalizer.get("lowercase")))
        probe = ["", "Great phone, works!", "A\tB\x00c\x7fd -- isn't it?!", "x " * max_length]
        return cache if cache.encode(probe) == _encode_with(tokenizer, probe, max_length) else None

    def encode(self, texts: list) -> list:
        """Token ids of each text (lists of ints)."""
        import itertools

        chain, table, limit = itertools.chain.from_iterable, self.table, self.max_length - 2
        known = self.words.__getitem__
        rows, others = [], []
        for i, text in enumerate(texts):
            if text.isascii() and not (self.special and self.special(text)):
                words = text.translate(table).split()
                try:
                    pieces = list(chain(map(known, words)))
                except KeyError:  # a word not seen before: its pieces from the tokenizer's model, once
                    self._learn(words)
                    pieces = list(chain(map(known, words)))
                rows.append([self.cls, *pieces[:limit], self.sep])
            else:
                rows.append(None)
                others.append(i)
        if others:
            for i, row in zip(others, _encode_with(self.tokenizer, [texts[i] for i in others], self.max_length)):
                rows[i] = row
        return rows

    def _learn(self, words) -> None:
        for word in words:
            if word not in self.words:
                self.words[word] = [token.id for token in self.model.tokenize(word)]
