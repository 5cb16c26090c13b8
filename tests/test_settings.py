"""Every setting declared once (steps/settings.py): what the flows, the training engine and the retrain signature
derive from it."""
import dataclasses
import subprocess
import sys

import pytest

from steps import settings
from steps.lifecycle import retrain
from steps.runtime.errors import ReviewflowError
from steps.training.config import TrainConfig
from tests.flow_runs import ROOT


def test_train_config_is_the_training_group_plus_where_to_train():
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert fields == {**{s.attr: s.default for s in settings.in_groups("training")}, "device": "auto"}
    config = TrainConfig.from_values({"epochs": 3, "batch-size": 8, "max-rows": 10, "data": "x.csv"})
    assert (config.epochs, config.batch_size, config.effective_batch) == (3, 8, 8)
    assert config.as_params()["weight_decay"] == settings.default("weight-decay")


@pytest.mark.parametrize("values, message", [
    ({"epochs": -1}, r"--epochs must be at least 1 \(or 0 = the model's recipe: 1 for mpnet, 2 for minilm and any "
                     r"other model\), got -1"),
    ({"learning-rate": 1.5}, r"--learning-rate must be in \(0, 1\), got 1.5"),
    ({"warmup-ratio": 1.0}, r"--warmup-ratio must be in \[0, 1\), got 1.0"),
    ({"max-rows": -5}, r"--max-rows must be at least 1 \(or 0 = all rows\), got -5"),
    ({"promote": "sometimes"}, "--promote must be one of auto, never, got 'sometimes'"),
    ({"class-weights": "balanced"}, "--class-weights must be one of none, auto"),
    ({"min-f1": 2.0}, r"--min-f1 must be in \[0, 1\], got 2.0"),
])
def test_a_value_outside_what_a_setting_allows_names_the_option_and_the_allowed_values(values, message):
    with pytest.raises(ReviewflowError, match=message):
        settings.check(values)


def test_all_problems_are_reported_at_once_and_allowed_values_pass():
    with pytest.raises(ReviewflowError, match="--epochs.*; --batch-size"):
        settings.check({"epochs": -2, "batch-size": 0})
    settings.check({s.name: s.default for s in settings.SETTINGS})
    settings.check({"max-rows": 0, "epochs": 0, "max-regression": 1.0, "unknown-option": object()})


def test_the_retrain_signature_covers_exactly_the_settings_declared_as_training_inputs():
    values = {s.name: s.default for s in settings.SETTINGS}
    inputs = retrain.training_inputs("f" * 64, values)
    declared = {s.name for s in settings.SETTINGS if s.training_input}
    assert set(inputs) == declared | {"data_fingerprint", "code"}  # and the training code's version
    assert {s.group for s in settings.SETTINGS if s.training_input} <= set(retrain.GROUPS)
    # a new setting is a training input unless it says otherwise
    assert settings.Setting("new-knob", int, 1, "help", "training").training_input


def test_settings_are_selected_by_group_or_name_in_declaration_order():
    chosen = settings.select("registered-model", "min-f1", "max-regression")
    assert [s.name for s in chosen] == ["min-f1", "max-regression", "registered-model"]
    with pytest.raises(ValueError, match="unknown settings or groups"):
        settings.select("epochz")


def test_a_fixed_set_of_values_is_rejected_when_the_command_line_is_parsed(tmp_path):
    for option, value, allowed in (("--promote", "sometimes", "auto, never"),
                                   ("--precision", "fp8", "auto, fp32, bf16, fp16"),
                                   ("--class-weights", "balanced", "none, auto")):
        done = subprocess.run([sys.executable, str(ROOT / "flows" / "review_flow.py"), "run", option, value],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "USERNAME": "reviewflow-tests",
                                   "METAFLOW_USER": "reviewflow-tests", "HOME": str(tmp_path)})
        assert done.returncode != 0
        assert f"Invalid value for '{option}': invalid choice: {value}. (choose from {allowed})" in done.stderr
        assert not (tmp_path / "mlflow.db").exists()  # nothing started
