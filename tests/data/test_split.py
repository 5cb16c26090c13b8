import pandas as pd
import pytest

from steps.data.split import Split, check_no_leakage, group_keys, split_reviews
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame


def test_split_is_deterministic_sized_and_keeps_reviews_together():
    frame = review_frame(400, sentences_per_review=4)
    a, b = split_reviews(frame, seed=3), split_reviews(frame, seed=3)
    assert a.sizes() == b.sizes()
    assert a.test["reviewText"].tolist() == b.test["reviewText"].tolist()
    sizes = a.sizes()
    assert sum(sizes.values()) == 400
    assert abs(sizes["test"] / 400 - 0.2) < 0.05 and abs(sizes["validation"] / 400 - 0.1) < 0.05
    for name, part in a.frames().items():  # each split is also its positions in the frame that was split
        pd.testing.assert_frame_equal(frame.iloc[a.rows[name]].reset_index(drop=True), part)
    ids = {name: set(part["reviewId"]) for name, part in a.frames().items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"]
    assert not ids["validation"] & ids["test"]


def test_split_is_stratified():
    frame = review_frame(500, sentences_per_review=1)
    split = split_reviews(frame, seed=0)
    overall = frame["isPositive"].mean()
    for part in split.frames().values():
        assert abs(part["isPositive"].mean() - overall) < 0.06


def test_other_seed_gives_another_split():
    frame = review_frame(200)
    one, two = split_reviews(frame, seed=1), split_reviews(frame, seed=2)
    assert one.test["reviewText"].tolist() != two.test["reviewText"].tolist()


def test_duplicate_texts_share_a_group_even_across_review_ids():
    frame = pd.DataFrame({"reviewText": ["Great phone", "great   PHONE ", "bad", "ok"],
                          "isPositive": [1, 1, 0, 1], "reviewId": ["a", "b", "c", "b"]})
    groups = group_keys(frame)
    assert groups[0] == groups[1] == groups[3]  # a~b by text, b~b by id
    assert groups[2] != groups[0]


def test_rows_without_review_id_are_independent():
    frame = pd.DataFrame({"reviewText": ["x", "y", "z"], "isPositive": [1, 0, 1],
                          "reviewId": pd.array([None, None, "r"], dtype="string")})
    assert len(set(group_keys(frame))) == 3


def test_leakage_check_catches_shared_text():
    frame = review_frame(10)[["reviewText", "isPositive"]]
    with pytest.raises(ReviewflowError, match="leakage between train and test: 1 shared texts"):
        check_no_leakage(Split(train=frame.iloc[:5], validation=frame.iloc[5:7],
                               test=pd.concat([frame.iloc[7:], frame.iloc[[0]]])))


def test_too_few_groups_is_a_clear_error():
    frame = review_frame(8, sentences_per_review=4)  # 2 reviews
    with pytest.raises(ReviewflowError, match="too few independent groups"):
        split_reviews(frame)
