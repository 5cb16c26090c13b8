"""Resolving --model, and what a model can take (--max-length)."""
import pytest

from steps import settings
from steps.runtime.errors import ReviewflowError
from steps.training.models import check_max_length, position_limit


def test_max_length_is_checked_against_the_models_position_limit(tiny_model_dir):
    assert position_limit(str(tiny_model_dir)) == 64  # the tiny DistilBERT has 64 position embeddings
    check_max_length(str(tiny_model_dir), 64)
    for bad in (0, 65, 100_000):
        with pytest.raises(ReviewflowError, match=rf"--max-length {bad}: the model .* takes 1 to 64 tokens per review"):
            check_max_length(str(tiny_model_dir), bad)


def test_zero_or_negative_max_length_is_refused_by_its_setting_too():
    with pytest.raises(ReviewflowError, match="--max-length must be at least 1, got 0"):
        settings.check({"max-length": 0})
