"""K-fold splits for CompareFlow --cv-folds: grouped by review, stratified, every row a test row exactly once."""
import pandas as pd
import pytest

from steps.data.folds import grouped_folds
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame


def test_folds_are_grouped_stratified_and_cover_every_row_once():
    frame = review_frame(300)
    folds = grouped_folds(frame, 3, seed=0)
    assert len(folds) == 3
    tested = pd.concat([f.test for f in folds])
    assert sorted(tested["reviewText"]) == sorted(frame["reviewText"]) and len(tested) == len(frame)
    for fold in folds:
        assert sum(fold.sizes().values()) == len(frame)
        ids = [set(part["reviewId"]) for part in fold.frames().values()]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])  # a review stays in one part
        assert fold.test["isPositive"].mean() == pytest.approx(frame["isPositive"].mean(), abs=0.08)
        assert 0.05 < len(fold.validation) / len(frame) < 0.15
    assert [f.test["reviewText"].tolist() for f in grouped_folds(frame, 3, seed=0)] == \
        [f.test["reviewText"].tolist() for f in folds]  # same seed, same folds


@pytest.mark.parametrize("k", [1, 21])
def test_fold_counts_out_of_range_are_refused(k):
    with pytest.raises(ReviewflowError, match="--cv-folds"):
        grouped_folds(review_frame(100), k)


def test_too_few_reviews_for_the_folds_is_a_clear_error():
    with pytest.raises(ReviewflowError, match="only 3 independent groups"):
        grouped_folds(review_frame(6), 5)
