"""Split: deterministic, stratified, group-aware train/validation/test split with leakage checks.

Rows are grouped so that related rows always land in the same split: by `reviewId` when the data has it
(sentences of one review), and rows with the same normalized text are merged into one group as well, so an
exact duplicate can never sit in train and test at once.
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas import GROUP_COLUMN, LABEL_COLUMN, TEXT_COLUMN
from steps.runtime.errors import ReviewflowError


@dataclass
class Split:
    train: object
    validation: object
    test: object

    def sizes(self) -> dict:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}

    def frames(self) -> dict:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def _normalized(texts):
    return texts.astype("string").str.strip().str.lower().str.replace(r"\s+", " ", regex=True)


def group_keys(frame):
    """One integer group per row: connected components of 'same reviewId' and 'same normalized text'."""
    import numpy as np
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(frame)
    own = pd.Series([f"<row {i}>" for i in range(n)], index=frame.index, dtype="string")
    keys = [_normalized(frame[TEXT_COLUMN]).fillna(own)]  # a missing key groups a row with nothing else
    if GROUP_COLUMN in frame.columns:
        keys.append(frame[GROUP_COLUMN].astype("string").fillna(own))
    # Bipartite graph: row nodes 0..n-1, then one node per distinct key value; a row joins its key nodes.
    rows, cols, offset = [], [], n
    for key in keys:
        codes = pd.factorize(key)[0]
        rows.append(np.arange(n))
        cols.append(codes + offset)
        offset += codes.max() + 1 if n else 0
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(offset, offset))
    _, component = connected_components(graph, directed=False)
    return pd.factorize(component[:n])[0]


def _fold(labels, groups, fraction: float, seed: int):
    """Indices (rest, held_out) with about `fraction` of rows held out, stratified by label, whole groups."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, int(round(1 / fraction)))
    if len(np.unique(groups)) < n_splits:
        raise ReviewflowError(
            f"too few independent groups ({len(np.unique(groups))}) to hold out {fraction:.0%} of the data; "
            "add more rows or lower the held-out fraction"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held_out = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return rest, held_out


def split_reviews(frame, test_fraction: float = 0.2, validation_fraction: float = 0.1, seed: int = 0) -> Split:
    """Split into train/validation/test; fractions are of all rows. Same input + seed -> same split."""
    frame = frame.reset_index(drop=True)
    if not 0 < test_fraction < 1 or not 0 < validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise ReviewflowError(
            f"split fractions must be in (0, 1) and sum below 1, got test={test_fraction}, "
            f"validation={validation_fraction}"
        )
    labels = frame[LABEL_COLUMN].to_numpy()
    groups = group_keys(frame)
    rest, test = _fold(labels, groups, test_fraction, seed)
    inner_fraction = validation_fraction / (1 - test_fraction)
    train_idx, val_idx = _fold(labels[rest], groups[rest], inner_fraction, seed + 1)
    split = Split(
        train=frame.iloc[rest[train_idx]].reset_index(drop=True),
        validation=frame.iloc[rest[val_idx]].reset_index(drop=True),
        test=frame.iloc[test].reset_index(drop=True),
    )
    check_no_leakage(split)
    return split


def check_no_leakage(split: Split) -> dict:
    """Fail if any reviewId or normalized text appears in more than one split; return the overlap counts."""
    overlaps = {}
    parts = split.frames()
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            texts = set(_normalized(parts[a][TEXT_COLUMN])) & set(_normalized(parts[b][TEXT_COLUMN]))
            ids = set()
            if GROUP_COLUMN in parts[a].columns:
                ids = set(parts[a][GROUP_COLUMN].dropna()) & set(parts[b][GROUP_COLUMN].dropna())
            overlaps[f"{a}/{b}"] = {"texts": len(texts), "review_ids": len(ids)}
            if texts or ids:
                raise ReviewflowError(
                    f"leakage between {a} and {b}: {len(texts)} shared texts, {len(ids)} shared reviewIds"
                )
    return overlaps
