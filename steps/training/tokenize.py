"""Tokenize: turn review texts into token ids, truncated to max_length, never padded here.

Batches pad themselves at training time (to the longest review in the batch), so what is stored is the
real tokens only: one flat int32 array plus row offsets, compact enough to keep as a Metaflow artifact.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas import LABEL_COLUMN, TEXT_COLUMN


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


def encode(texts, labels, tokenizer, max_length: int, batch_size: int = 1024, progress=None) -> TokenizedReviews:
    """Tokenize `texts` (truncating to `max_length` tokens, special tokens included).

    progress: a steps.runtime.progress.Progress counting reviews, updated after every `batch_size` reviews.
    """
    import numpy as np

    texts = [str(t) for t in texts]
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start:start + batch_size], truncation=True, max_length=max_length,
            padding=False, return_attention_mask=False, return_token_type_ids=False,
        )
        chunks.extend(batch["input_ids"])
        if progress is not None:
            progress.update(len(batch["input_ids"]))
    lengths = np.array([len(c) for c in chunks], dtype=np.int64)
    return TokenizedReviews(
        ids=np.concatenate([np.asarray(c, dtype=np.int32) for c in chunks]) if chunks else np.zeros(0, np.int32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
    )


def length_stats(tokens: TokenizedReviews, max_length: int) -> dict:
    """Token-length statistics, including how many reviews were cut at max_length."""
    import numpy as np

    lengths = tokens.lengths
    if not len(lengths):
        return {"rows": 0}
    return {
        "rows": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "length_mean": round(float(lengths.mean()), 2),
        "length_p50": float(np.percentile(lengths, 50)),
        "length_p95": float(np.percentile(lengths, 95)),
        "length_max": int(lengths.max()),
        "truncated_share": round(float((lengths >= max_length).mean()), 4),
        "padding_share_if_padded_to_max_length": round(float(1 - lengths.sum() / (len(lengths) * max_length)), 4),
    }


def tokenize_split(frames: dict, tokenizer, max_length: int, progress_mode: str | None = None) -> dict:
    """Encode each named split ({"train": df, ...}) -> {"train": TokenizedReviews, ...}, with one progress
    report over all of them (steps/runtime/progress.py decides bar, lines or only the finish line)."""
    from steps.runtime.progress import Progress

    total = sum(len(frame) for frame in frames.values())
    with Progress("tokenize", total, "reviews", mode=progress_mode) as progress:
        return {
            name: encode(frame[TEXT_COLUMN].tolist(), frame[LABEL_COLUMN].to_numpy(), tokenizer, max_length,
                         progress=progress)
            for name, frame in frames.items()
        }


def tokenize_and_profile(run, frames: dict, model: str, max_length: int) -> tuple[dict, dict, dict]:
    """The tokenize step: (tokens per split, length statistics per split, the training data's drift profile),
    with the statistics logged on the step's run."""
    from steps.data.drift import training_profile
    from steps.training.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    tokens = tokenize_split(frames, tokenizer, max_length)
    profile = training_profile(frames["train"], tokens["train"], tokens["validation"], tokenizer, model, max_length)
    stats = {name: length_stats(t, max_length) for name, t in tokens.items()}
    run.params({"model": model, "max_length": max_length})
    for name, split_stats in stats.items():
        run.metrics({f"{name}_{k}": v for k, v in split_stats.items()})
    return tokens, stats, profile
