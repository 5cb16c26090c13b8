"""Test data and a tiny DistilBERT, built from scratch so tests are fast and need no network."""
from __future__ import annotations

import random
from pathlib import Path

POSITIVE_WORDS = ["great", "excellent", "love", "perfect", "amazing", "happy", "works", "recommend", "best", "solid"]
NEGATIVE_WORDS = ["terrible", "broken", "awful", "hate", "refund", "worst", "useless", "poor", "returned", "junk"]
NEUTRAL_WORDS = ["the", "this", "player", "phone", "camera", "battery", "screen", "it", "is", "was", "and", "a",
                 "very", "after", "week", "my", "with", "product", "sound", "quality"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def review_sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(NEUTRAL_WORDS, 4) + rng.sample(POSITIVE_WORDS if positive else NEGATIVE_WORDS, 2)
    rng.shuffle(words)
    return " ".join(words) + rng.choice([".", "!", ""])


def review_frame(rows: int = 160, seed: int = 0, sentences_per_review: int = 2):
    """Synthetic reviews in the canonical schema, with sentiment carried by clear words."""
    import pandas as pd

    rng = random.Random(seed)
    records = []
    for i in range(rows):
        review = i // sentences_per_review
        positive = (review % 5) < 3  # 60% positive, constant within a review
        records.append({"reviewId": f"r{review}", "reviewText": review_sentence(rng, positive),
                        "isPositive": int(positive)})
    return pd.DataFrame(records)


def write_reviews_csv(path: Path, rows: int = 160, seed: int = 0) -> Path:
    review_frame(rows, seed).to_csv(path, index=False)
    return path


def build_tiny_distilbert(directory: Path, dim: int = 32, seed: int = 0) -> Path:
    """A 2-layer DistilBERT encoder (width `dim`) with a vocabulary written here, saved with save_pretrained()."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL_TOKENS + sorted(set(POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS)) + list(".,!?")
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = DistilBertTokenizer(vocab=str(vocab_file))
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=len(vocab), dim=dim, hidden_dim=2 * dim, n_layers=2, n_heads=2,
                              max_position_embeddings=64, pad_token_id=0)
    DistilBertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def served_model_uri(classifier_dir, trained_by: str = "tests", max_length: int = 32) -> str:
    """Log `classifier_dir` as a served model (PyTorch only: no ONNX export) in the active MLflow run; its URI.
    What the evaluate step does before register, without the ONNX variants that most tests do not need."""
    from steps.serving.package import log_served_model

    return log_served_model(str(classifier_dir), [], [], max_length=max_length, trained_by=trained_by,
                            variants=False, log=lambda _: None).model_uri
