"""The split's guarantees on both of its paths (scikit-learn's StratifiedGroupKFold for up to
SKLEARN_MAX_GROUPS groups, the vectorized systematic sample above), on random data with groups."""
import re

import numpy as np
import pandas as pd
import pytest

from steps.data import split as split_module
from steps.data.split import Split, check_no_leakage, group_keys, normalized_texts, split_reviews
from steps.runtime.errors import ReviewflowError


def grouped_reviews(rows: int, seed: int) -> pd.DataFrame:
    """Reviews of 1-6 sentences (one reviewId each, label constant within a review), 30% positive, and 5% of
    the sentences copied into other reviews with other case and spacing (so text groups join reviews)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, rows)
    review = np.repeat(np.arange(rows), sizes)[:rows]
    labels = (rng.random(rows) < 0.3).astype(int)[review]
    texts = [f"sentence {i} of review {r}" for i, r in enumerate(review)]
    copies = rng.choice(rows, rows // 20, replace=False)
    sources = rng.choice(rows, rows // 20, replace=False)
    for i, j in zip(copies, sources):
        texts[i] = "  " + texts[j].upper().replace(" ", " \t ") + "\n"
        labels[i] = labels[j]
    return pd.DataFrame({"reviewId": [f"r{r}" for r in review], "reviewText": texts, "isPositive": labels})


def independent_leak_check(split: Split) -> None:
    """No reviewId and no normalized text (by the regex definition) in two splits: plain Python sets."""
    def norm(text):
        return re.sub(r"\s+", " ", text.strip().lower())

    parts = split.frames()
    for a in parts:
        for b in parts:
            if a < b:
                assert not set(parts[a]["reviewId"]) & set(parts[b]["reviewId"])
                assert not {norm(t) for t in parts[a]["reviewText"]} & {norm(t) for t in parts[b]["reviewText"]}


@pytest.mark.parametrize("path", ["sklearn", "systematic"])
def test_both_paths_keep_the_guarantees(monkeypatch, path):
    frame = grouped_reviews(3000, seed=1)
    monkeypatch.setattr(split_module, "SKLEARN_MAX_GROUPS", 10**9 if path == "sklearn" else 0)
    split = split_reviews(frame, seed=7)
    parts = split.frames()
    assert sorted(pd.concat(parts.values())["reviewText"]) == sorted(frame["reviewText"])  # every row once
    independent_leak_check(split)
    sizes = split.sizes()
    assert abs(sizes["test"] / 3000 - 0.2) < 0.02 and abs(sizes["validation"] / 3000 - 0.1) < 0.02
    overall = frame["isPositive"].mean()
    for part in parts.values():
        assert abs(part["isPositive"].mean() - overall) < 0.03  # stratified (300 validation rows)
    again = split_reviews(frame, seed=7)
    assert all(again.frames()[k].equals(v) for k, v in parts.items())  # deterministic
    other = split_reviews(frame, seed=8)
    assert not other.test.equals(split.test)


def test_large_data_takes_the_systematic_path_and_stays_balanced():
    frame = grouped_reviews(60_000, seed=2)
    assert len(set(group_keys(frame))) > split_module.SKLEARN_MAX_GROUPS
    split = split_reviews(frame, seed=42)
    independent_leak_check(split)
    sizes, overall = split.sizes(), frame["isPositive"].mean()
    assert abs(sizes["test"] / 60_000 - 0.2) < 0.005 and abs(sizes["validation"] / 60_000 - 0.1) < 0.005
    assert all(abs(p["isPositive"].mean() - overall) < 0.01 for p in split.frames().values())


def test_small_data_is_split_as_scikit_learn_splits_it():
    """Up to SKLEARN_MAX_GROUPS groups the split is StratifiedGroupKFold's first fold, as before: the default
    run's split did not change."""
    from sklearn.model_selection import StratifiedGroupKFold

    frame = grouped_reviews(3000, seed=3)
    groups, labels = group_keys(frame), frame["isPositive"].to_numpy()
    rest, test = next(StratifiedGroupKFold(5, shuffle=True, random_state=11).split(frame, labels, groups))
    train, validation = next(StratifiedGroupKFold(8, shuffle=True, random_state=12)
                             .split(rest, labels[rest], groups[rest]))
    split = split_reviews(frame, seed=11)
    assert split.test["reviewText"].tolist() == frame["reviewText"].iloc[test].tolist()
    assert split.train["reviewText"].tolist() == frame["reviewText"].iloc[rest[train]].tolist()
    assert split.validation["reviewText"].tolist() == frame["reviewText"].iloc[rest[validation]].tolist()


def test_normalized_text_is_strip_lower_and_single_spaces():
    texts = pd.Series(["  Great\tPHONE \n", "great phone", "a\u00a0b\u3000c", "\x1cx\x0by\x1f", "", "   ", None,
                       float("nan"), 42, "İstanbul"])
    expected = [re.sub(r"\s+", " ", t.strip().lower()) if isinstance(t, str) else None for t in texts]
    expected[8] = "42"
    assert normalized_texts(texts) == expected
    assert normalized_texts(pd.Series(["A  b", "c"], dtype="string")) == ["a b", "c"]


def test_leakage_check_counts_shared_review_ids_and_ignores_missing_texts():
    one = pd.DataFrame({"reviewText": ["a", None], "isPositive": [1, 0], "reviewId": ["r1", "r2"]})
    two = pd.DataFrame({"reviewText": ["b", None], "isPositive": [1, 0], "reviewId": ["r1", "r3"]})
    three = pd.DataFrame({"reviewText": ["c"], "isPositive": [1], "reviewId": [None]})
    with pytest.raises(ReviewflowError, match="leakage between train and validation: 0 shared texts, 1 shared"):
        check_no_leakage(Split(train=one, validation=two, test=three))
    two["reviewId"] = ["r4", "r5"]
    overlaps = check_no_leakage(Split(train=one, validation=two, test=three))
    assert overlaps == {"train/validation": {"texts": 0, "review_ids": 0}, "train/test": {"texts": 0, "review_ids": 0},
                        "validation/test": {"texts": 0, "review_ids": 0}}
