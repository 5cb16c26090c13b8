"""K-fold cross-validation splits for small data: grouped and stratified, like the train/validation/test split.

Each fold holds out about 1/K of the rows as its test rows (scikit-learn `StratifiedGroupKFold`, shuffled with the
seed); the remaining rows are cut into train and validation (about 10% of all rows, for early stopping and the
best epoch) the same way. Groups are those of steps/data/split.py: the sentences of one `reviewId` and rows with
the same normalized text always stay together, so no review is in a fold's train and test rows at once. Every
row is a test row in exactly one fold.
"""
from __future__ import annotations

from schemas import LABEL_COLUMN
from steps.data.split import Split, _fold, check_no_leakage, group_keys
from steps.runtime.errors import ReviewflowError

MAX_FOLDS = 20


def grouped_folds(frame, k: int, seed: int = 0, validation_fraction: float = 0.1) -> list[Split]:
    """K Splits of `frame` whose test parts are disjoint and together cover every row."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    if not 2 <= k <= MAX_FOLDS:
        raise ReviewflowError(f"--cv-folds must be 0 (one train/validation/test split) or 2 to {MAX_FOLDS}, got {k}")
    frame = frame.reset_index(drop=True)
    labels = frame[LABEL_COLUMN].to_numpy()
    groups = group_keys(frame)
    if len(np.unique(groups)) < k:
        raise ReviewflowError(f"--cv-folds {k}: the data has only {len(np.unique(groups))} independent groups "
                              "(reviews); use fewer folds or more data")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    inner = validation_fraction / (1 - 1 / k)
    folds = []
    for rest, test in splitter.split(np.zeros(len(frame)), labels, groups):
        train, validation = _fold(labels[rest], groups[rest], inner, seed + 1)
        split = Split(train=frame.iloc[rest[train]].reset_index(drop=True),
                      validation=frame.iloc[rest[validation]].reset_index(drop=True),
                      test=frame.iloc[test].reset_index(drop=True))
        check_no_leakage(split)
        folds.append(split)
    return folds
