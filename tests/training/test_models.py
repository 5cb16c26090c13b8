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


def _variant(source: Path, target: Path, config: dict | None = None, tokenizer_config: dict | None = None,
             drop: tuple = (), tokenizer_json: str | None = None) -> Path:
    """A copy of the model directory `source` with fields of its config.json / tokenizer_config.json replaced
    (a value None removes the field) and files dropped or overwritten."""
    import json
    import shutil

    shutil.copytree(source, target)
    for name, changes in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if changes:
            content = json.loads((target / name).read_text())
            content.update(changes)
            (target / name).write_text(json.dumps({k: v for k, v in content.items() if v is not None}))
    for name in drop:
        (target / name).unlink()
    if tokenizer_json is not None:
        (target / "tokenizer.json").write_text(tokenizer_json)
    return target


VARIANTS = {
    "as saved": {},
    "tokenizer declares 32": {"tokenizer_config": {"model_max_length": 32}},
    "tokenizer declares 1e30 (no limit)": {"tokenizer_config": {"model_max_length": 1e30}},
    "tokenizer declares nothing": {"tokenizer_config": {"model_max_length": None}},
    "tokenizer declares a string": {"tokenizer_config": {"model_max_length": "32"}},
    "tokenizer declares a fraction": {"tokenizer_config": {"model_max_length": 40.5}},
    "legacy max_len": {"tokenizer_config": {"model_max_length": None, "max_len": 32}},
    "no tokenizer_config.json": {"drop": ("tokenizer_config.json",)},
    "positions left to the default": {"config": {"max_position_embeddings": None}},
    "roberta without pad_token_id": {"config": {"model_type": "roberta", "pad_token_id": None}},
    "roberta with pad_token_id 1": {"config": {"model_type": "roberta", "pad_token_id": 1}},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_local_directorys_limit_is_the_one_transformers_reports(tiny_model_dir, tmp_path, monkeypatch, variant):
    """position_limit reads what it can of a local directory itself (no transformers import in the start step);
    whatever the files say, the answer is the one the transformers path gives for the same directory."""
    from steps.training import models

    model_dir = _variant(tiny_model_dir, tmp_path / "model", **VARIANTS[variant])
    read = position_limit(str(model_dir))
    monkeypatch.setattr(models, "_stated_limit", lambda source: None)  # force the transformers path
    assert read == position_limit(str(model_dir))
    if variant == "tokenizer declares 32":
        assert read == 32  # the tokenizer's declared limit is below the 64 positions


def test_the_packaged_encoder_and_a_saved_model_are_read_without_transformers(tiny_model_dir):
    import subprocess
    import sys

    code = ("import sys; from steps.training.models import position_limit; "
            f"print(position_limit({str(tiny_model_dir)!r}), position_limit('minilm'), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2])).stdout.split()
    assert out == ["64", "512", "False"]


def test_a_broken_model_directory_still_fails_at_the_check(tiny_model_dir, tmp_path):
    """Files the direct read cannot trust go to transformers, which refuses them as before: in the start step,
    before any data is read."""
    corrupt_tokenizer = _variant(tiny_model_dir, tmp_path / "corrupt-tokenizer", tokenizer_json="{not json")
    with pytest.raises(ValueError, match="Expecting property name"):  # the tokenizer file's JSON error
        position_limit(str(corrupt_tokenizer))
    unknown_type = _variant(tiny_model_dir, tmp_path / "unknown-type", config={"model_type": "no-such-model"})
    with pytest.raises(ValueError, match="no-such-model|Unrecognized"):
        position_limit(str(unknown_type))


def test_a_packed_classifier_is_loaded_once_and_a_loaded_one_is_passed_through(tiny_model_dir, tmp_path):
    """steps.training.models.loaded: bytes are unpacked and loaded (the directory lives while in use); a classifier
    already loaded is handed back as it is, not loaded again."""
    from steps.training.models import LoadedClassifier, load_classifier, load_tokenizer, loaded, pack_directory

    load_classifier(str(tiny_model_dir)).save_pretrained(tmp_path / "c")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(tmp_path / "c")
    with loaded(pack_directory(tmp_path / "c")) as model:
        assert isinstance(model, LoadedClassifier) and (Path(model.directory) / "config.json").exists()
        assert not model.model.training and model.tokenizer("great")["input_ids"]
        with loaded(model) as again:
            assert again is model
        directory = model.directory
    assert not Path(directory).exists()
