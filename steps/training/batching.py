"""Batches of tokenized reviews: length bucketing and dynamic padding, shared by training and inference."""
from __future__ import annotations


def bucketed_batches(lengths, batch_size: int, seed: int, bucket_batches: int = 50):
    """Batches of row indices whose lengths are close, in random order, reproducible from `seed`.

    Rows are shuffled, cut into buckets of `bucket_batches * batch_size`, each bucket is sorted by length and
    cut into batches, and the batches of all buckets are shuffled together. Every row appears exactly once.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    bucket = max(batch_size, batch_size * bucket_batches)
    batches = []
    for start in range(0, len(order), bucket):
        chunk = order[start:start + bucket]
        chunk = chunk[np.argsort(np.asarray(lengths)[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def micro_batches(rows, size: int):
    """Cut one optimizer step's rows (already length-sorted by `bucketed_batches`) into forward passes."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def sorted_batches(lengths, batch_size: int):
    """Batches in length order, for inference (least padding; order does not matter there)."""
    import numpy as np

    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(tokens, rows, device=None, pad_to_multiple_of: int = 1):
    """Pad the rows to the longest one in the batch: (input_ids, attention_mask, labels) tensors.

    `pad_to_multiple_of` rounds the width up (fewer distinct shapes, e.g. for torch.compile).
    """
    import numpy as np
    import torch

    pieces = [tokens[i] for i in rows]
    width = max(len(p) for p in pieces)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = np.full((len(pieces), width), tokens.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(pieces), width), dtype=np.int64)
    for row, piece in enumerate(pieces):
        ids[row, :len(piece)] = piece
        mask[row, :len(piece)] = 1
    batch = (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(tokens.labels[np.asarray(rows)]))
    if device is not None:
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
    return batch


def padding_share(lengths, batches) -> float:
    """Share of pad positions when the given batches are padded to their longest row."""
    import numpy as np

    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1 - real / padded if padded else 0.0
