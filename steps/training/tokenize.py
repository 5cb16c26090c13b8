"""The tokenize step: encode each split with the model's tokenizer (steps/data/tokens.py), its length statistics,
and the training data's drift profile.
"""
from __future__ import annotations

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.data.tokens import TokenizedReviews, encode  # TokenizedReviews: also how earlier runs' artifacts unpickle

__all__ = ["TokenizedReviews", "encode", "length_stats", "tokenize_and_profile", "tokenize_split"]


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
