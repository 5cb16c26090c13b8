"""Resolving --model, and what a model can take (--max-length)."""
from pathlib import Path

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


def test_a_local_directorys_limit_is_read_from_its_files_as_transformers_reads_it(tiny_model_dir, tmp_path):
    """position_limit reads config.json and tokenizer_config.json of a local directory itself (no transformers
    import in the start step); the figures are the ones transformers reads from the same files."""
    import json
    import shutil
    import subprocess
    import sys

    from transformers import AutoConfig, AutoTokenizer

    model_dir = tmp_path / "declared-32"
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer_config = model_dir / "tokenizer_config.json"
    declared = json.loads(tokenizer_config.read_text()) if tokenizer_config.exists() else {}
    tokenizer_config.write_text(json.dumps({**declared, "model_max_length": 32}))
    assert AutoTokenizer.from_pretrained(model_dir).model_max_length == 32
    assert AutoConfig.from_pretrained(model_dir).max_position_embeddings == 64
    assert position_limit(str(model_dir)) == 32  # the tokenizer's declared limit is below the 64 positions

    roberta_like = tmp_path / "offset"
    shutil.copytree(tiny_model_dir, roberta_like)
    config = json.loads((roberta_like / "config.json").read_text())
    (roberta_like / "config.json").write_text(json.dumps({**config, "model_type": "roberta", "pad_token_id": 1}))
    assert position_limit(str(roberta_like)) == 64 - 2  # RoBERTa-style models reserve pad_token_id + 1 positions

    code = ("import sys; from steps.training.models import position_limit; "
            f"print(position_limit({str(tiny_model_dir)!r}), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2])).stdout.split()
    assert out == ["64", "False"]


def test_an_unreadable_config_names_the_file(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ReviewflowError, match=r"cannot read .*config\.json.*save_pretrained"):
        position_limit(str(broken))
