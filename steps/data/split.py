"""Split: deterministic, stratified, group-aware train/validation/test split with leakage checks.

Rows are grouped so that related rows always land in the same split: by `reviewId` when the data has it
(sentences of one review), and rows with the same normalized text are merged into one group as well, so an
exact duplicate can never sit in train and test at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas import GROUP_COLUMN, LABEL_COLUMN, TEXT_COLUMN
from steps.runtime.errors import ReviewflowError


@dataclass
class Split:
    train: object
    validation: object
    test: object
    rows: dict = field(default_factory=dict)  # name -> positions of its rows in the frame that was split

    def sizes(self) -> dict:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}

    def frames(self) -> dict:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def normalized_texts(texts) -> list:
    """Each text stripped, lower-cased, runs of whitespace made one space (None where the text is missing):
    two reviews whose normalized texts are equal are the same review for splitting."""
    import pandas as pd

    values = pd.Series(texts).to_numpy(dtype=object)
    missing = pd.isna(values)
    if not missing.any() and all(map(str.__instancecheck__, values)):
        return [" ".join(t.lower().split()) for t in values]
    return [None if gone else " ".join((t if isinstance(t, str) else str(t)).lower().split())
            for t, gone in zip(values, missing)]


def _review_ids(frame):
    """The reviewId column as strings (missing stays missing), or an empty list without the column."""
    return frame[GROUP_COLUMN].astype("string").to_numpy(dtype=object) if GROUP_COLUMN in frame.columns else []


def _codes(values):
    """Integer codes of values (equal values, equal codes); -1 where missing."""
    import pandas as pd

    return pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)[0]


def group_keys(frame):
    """One integer group per row: connected components of 'same reviewId' and 'same normalized text'."""
    return _group_keys(_key_codes(frame))


def _key_codes(frame) -> list:
    """Codes of the normalized text and of the reviewId (all -1 without the column); -1 where missing."""
    import numpy as np

    texts = _codes(normalized_texts(frame[TEXT_COLUMN]))
    ids = _codes(_review_ids(frame)) if GROUP_COLUMN in frame.columns else np.full(len(frame), -1)
    return [texts, ids]


def _group_keys(keys):
    import numpy as np
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(keys[0])
    # Bipartite graph: row nodes 0..n-1, then one node per distinct key value; a row joins its key nodes.
    # A missing key (-1) joins nothing: that row is grouped with no other through it.
    rows, cols, offset = [], [], n
    for codes in keys:
        present = codes >= 0
        rows.append(np.flatnonzero(present))
        cols.append(codes[present] + offset)
        offset += int(codes.max()) + 1 if present.any() else 0
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(offset, offset))
    _, component = connected_components(graph, directed=False)
    return pd.factorize(component[:n])[0]


# Up to this many groups the held-out rows are chosen by scikit-learn's StratifiedGroupKFold (its greedy loop
# runs in Python, ~0.1 ms per group and fold); above it by the vectorized systematic sample below.
SKLEARN_MAX_GROUPS = 5_000


def _fold(labels, groups, fraction: float, seed: int):
    """Indices (rest, held_out) with about `fraction` of rows held out, stratified by label, whole groups."""
    import numpy as np

    n_splits = max(2, int(round(1 / fraction)))
    n_groups = int(np.count_nonzero(np.bincount(groups))) if len(groups) else 0
    if n_groups < n_splits:
        raise ReviewflowError(
            f"too few independent groups ({n_groups}) to hold out {fraction:.0%} of the data; "
            "add more rows or lower the held-out fraction"
        )
    if n_groups > SKLEARN_MAX_GROUPS:
        return _systematic_fold(labels, groups, 1 / n_splits, seed)
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, held_out = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return rest, held_out


def _systematic_fold(labels, groups, fraction: float, seed: int):
    """Hold out whole groups, about `fraction` of the rows of every label, in O(n log n).

    Groups are ordered by their label mix (the share of each label), then by size, in random order (from
    `seed`) among groups alike in both; walking that order, every (1/fraction)-th group is held out, starting
    at a random one: a systematic sample, so every stretch of alike groups gives `fraction` of its groups and
    rows to the held-out part.
    """
    import numpy as np

    _, label_codes = np.unique(labels, return_inverse=True)
    n_labels = int(label_codes.max()) + 1
    present = np.bincount(groups) > 0  # renumber the groups this subset has: 0..n_groups-1
    groups = (np.cumsum(present) - 1)[groups]
    n_groups = int(present.sum())
    counts = np.bincount(groups * n_labels + label_codes, minlength=n_groups * n_labels).reshape(n_groups, n_labels)
    sizes = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    tie_break = rng.permutation(n_groups)
    shares = counts / sizes[:, None]
    order = np.lexsort((tie_break, sizes, *(shares[:, k] for k in reversed(range(n_labels)))))
    rank = np.arange(n_groups) * fraction + rng.random()
    held_group = np.zeros(n_groups, dtype=bool)
    held_group[order[np.floor(rank + fraction) > np.floor(rank)]] = True
    held_row = held_group[groups]
    return np.flatnonzero(~held_row), np.flatnonzero(held_row)


def split_reviews(frame, test_fraction: float = 0.2, validation_fraction: float = 0.1, seed: int = 0) -> Split:
    """Split into train/validation/test; fractions are of all rows. Same input + seed -> same split."""
    frame = frame.reset_index(drop=True)
    if not 0 < test_fraction < 1 or not 0 < validation_fraction < 1 or test_fraction + validation_fraction >= 1:
        raise ReviewflowError(
            f"split fractions must be in (0, 1) and sum below 1, got test={test_fraction}, "
            f"validation={validation_fraction}"
        )
    labels = frame[LABEL_COLUMN].to_numpy()
    keys = _key_codes(frame)
    groups = _group_keys(keys)
    rest, test = _fold(labels, groups, test_fraction, seed)
    inner_fraction = validation_fraction / (1 - test_fraction)
    train_idx, val_idx = _fold(labels[rest], groups[rest], inner_fraction, seed + 1)
    rows = {"train": rest[train_idx], "validation": rest[val_idx], "test": test}
    _raise_on_overlap({name: [codes[index] for codes in keys] for name, index in rows.items()})
    return Split(**{name: frame.iloc[index].reset_index(drop=True) for name, index in rows.items()}, rows=rows)


def check_no_leakage(split: Split) -> dict:
    """Fail if any reviewId or normalized text appears in more than one split; return the overlap counts."""
    parts = split.frames()
    values = {name: [normalized_texts(part[TEXT_COLUMN]), _review_ids(part)] for name, part in parts.items()}
    codes = {}  # the same value in two parts gets the same code
    for kind in range(2):
        together = _codes([v for name in parts for v in values[name][kind]])
        bounds = [0]
        for name in parts:
            bounds.append(bounds[-1] + len(values[name][kind]))
        for i, name in enumerate(parts):
            codes.setdefault(name, []).append(together[bounds[i]:bounds[i + 1]])
    return _raise_on_overlap(codes)


def _raise_on_overlap(codes: dict) -> dict:
    """codes: {split name: [text codes, reviewId codes]} (-1 = missing); overlap counts per pair of splits."""
    import numpy as np

    size = [max((int(c[kind].max()) + 1 if len(c[kind]) else 0) for c in codes.values()) for kind in range(2)]
    present = {}
    for name, (texts, ids) in codes.items():
        present[name] = []
        for kind, values in enumerate((texts, ids)):
            seen = np.zeros(size[kind], dtype=bool)
            seen[values[values >= 0]] = True
            present[name].append(seen)
    overlaps = {}
    names = list(codes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            texts, ids = (int((present[a][k] & present[b][k]).sum()) for k in range(2))
            overlaps[f"{a}/{b}"] = {"texts": texts, "review_ids": ids}
            if texts or ids:
                raise ReviewflowError(f"leakage between {a} and {b}: {texts} shared texts, {ids} shared reviewIds")
    return overlaps
