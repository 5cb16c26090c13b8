"""`--model auto`: the rule on fake capabilities (CUDA, AMX, neither), an explicit model winning, each packaged
encoder's recipe for `--epochs 0`, what detection reads from the machine, and the retrain identity of `auto` on two
capability sets (the same machine: unchanged; other hardware: a retrain that says why)."""
import pytest

from steps.lifecycle import retrain
from steps.runtime.errors import ReviewflowError
from steps.training import auto_model
from steps.training.auto_model import AUTO, Capabilities, choose_model, detect_capabilities, recipe_values
from steps.training.models import DEFAULT_MODEL, MPNET_MODEL

GPU = Capabilities(gpu="NVIDIA H100 80GB HBM3")
AMX = Capabilities(amx=True, about="no CUDA GPU; AMX: bf16 matrix multiplies 9.0x fp32")
PLAIN = Capabilities(about="no CUDA GPU; no amx_bf16 CPU flag (avx512_bf16 only)")


@pytest.mark.parametrize("caps, model, words", [(GPU, MPNET_MODEL, "a CUDA GPU (NVIDIA H100 80GB HBM3)"),
                                                (AMX, MPNET_MODEL, "AMX bf16 matrix units"),
                                                (PLAIN, DEFAULT_MODEL, "no CUDA GPU and no AMX")])
def test_auto_picks_mpnet_where_it_trains_in_minutes_and_minilm_elsewhere(caps, model, words):
    choice = choose_model(AUTO, caps)
    assert (choice.requested, choice.model, choice.automatic) == (AUTO, model, True)
    assert words in choice.why and choice.machine == caps.describe()


@pytest.mark.parametrize("caps", [GPU, AMX, PLAIN])
def test_an_explicit_model_always_wins(caps):
    for given in ("minilm", "mpnet", "distilbert-base-uncased", "/models/mine"):
        choice = choose_model(given, caps)
        assert (choice.model, choice.automatic, choice.why) == (given, False, f"--model {given} given")


def test_epochs_zero_is_the_models_recipe_and_any_other_value_is_kept():
    values = {"epochs": 0, "learning-rate": 5e-5}
    assert recipe_values(MPNET_MODEL, values) == {"epochs": 1, "learning-rate": 5e-5}
    assert recipe_values("mpnet", values)["epochs"] == 1
    assert recipe_values(DEFAULT_MODEL, values)["epochs"] == recipe_values("minilm", values)["epochs"] == 2
    assert recipe_values("distilbert-base-uncased", values)["epochs"] == auto_model.DEFAULT_EPOCHS
    assert recipe_values(MPNET_MODEL, {"epochs": 3})["epochs"] == 3
    assert values == {"epochs": 0, "learning-rate": 5e-5}  # not changed in place


def test_the_engine_refuses_an_unresolved_recipe(tiny_model_dir):
    from steps.training.config import TrainConfig
    from steps.training.loop import train_classifier
    from steps.training.models import load_classifier

    with pytest.raises(ReviewflowError, match="epochs 0 means the model's recipe"):
        train_classifier(load_classifier(str(tiny_model_dir)), None, None, TrainConfig(epochs=0))


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return str(path)


def test_detection_reads_the_cpu_flags_and_measures_amx(tmp_path, monkeypatch):
    monkeypatch.setattr(auto_model, "_cuda_possible", lambda: False)
    plain = detect_capabilities(cpuinfo(tmp_path, "avx512f avx512_bf16"))
    assert (plain.gpu, plain.amx) == (None, False) and "avx512_bf16 only" in plain.about
    monkeypatch.setattr(auto_model, "bf16_speedup", lambda: 8.5)
    amx = detect_capabilities(cpuinfo(tmp_path, "amx_bf16 amx_tile"))
    assert amx.amx and "8.5x fp32" in amx.about
    monkeypatch.setattr(auto_model, "bf16_speedup", lambda: 1.1)  # the flag, but the units are not usable
    hidden = detect_capabilities(cpuinfo(tmp_path, "amx_bf16 amx_tile"))
    assert not hidden.amx and "only 1.1x fp32" in hidden.about


def test_detection_asks_torch_for_a_gpu_only_where_one_is_possible(tmp_path, monkeypatch):
    monkeypatch.setattr(auto_model, "_cuda_possible", lambda: True)
    monkeypatch.setattr(auto_model, "_cuda_gpu", lambda: "NVIDIA L4")
    assert detect_capabilities(cpuinfo(tmp_path, "")) == Capabilities(gpu="NVIDIA L4", about="CUDA GPU NVIDIA L4")
    monkeypatch.setattr(auto_model, "_cuda_gpu", lambda: None)  # a CUDA build with a driver, but no usable GPU
    assert detect_capabilities(cpuinfo(tmp_path, "")).gpu is None


def test_this_machine_is_looked_at_without_importing_torch_where_no_gpu_or_amx_can_be(tmp_path):
    import subprocess
    import sys

    from tests.flow_runs import ROOT

    code = ("import sys; from steps.training.auto_model import detect_capabilities, _cuda_possible; "
            f"caps = detect_capabilities({cpuinfo(tmp_path, 'avx2')!r}); "
            "print(_cuda_possible(), caps.amx, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    cuda_possible, amx, torch_imported = out.stdout.split()
    assert amx == "False" and torch_imported == cuda_possible  # torch only where a GPU could be


def test_bf16_speedup_is_a_real_measurement():
    assert auto_model.bf16_speedup(size=64, seconds=0.005, rounds=2) > 0


def identity(caps: Capabilities, fingerprint: str = "data-1") -> dict:
    choice = choose_model(AUTO, caps)
    values = {"model": choice.model, "max-length": 128, **recipe_values(choice.model, {"epochs": 0}),
              "learning-rate": 5e-5}
    return retrain.training_inputs(fingerprint, values)


class Champion:
    """The registry's answer for a champion trained with `inputs` (the tags ReviewFlow's register writes)."""

    def __init__(self, inputs):
        self.tags = retrain.version_tags(inputs)

    def get_model_version_by_alias(self, name, alias):
        return type("Version", (), {"version": "1"})()

    def get_model_version(self, name, version):
        return type("Version", (), {"tags": {**self.tags, "metaflow_run": "ReviewFlow/1"}})()


def test_the_retrain_identity_of_auto_follows_the_hardware_and_says_why(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    on_plain, on_amx = identity(PLAIN), identity(AMX)
    assert on_plain == identity(PLAIN)  # the same machine: the same identity
    assert on_plain["model"].startswith(DEFAULT_MODEL) and on_amx["model"].startswith(MPNET_MODEL)
    assert (on_plain["epochs"], on_amx["epochs"]) == (2, 1)
    same = retrain.should_retrain(Champion(on_plain), "m", identity(PLAIN), why={"model": "unused"})
    assert not same.retrain and same.reason.startswith("unchanged")
    why = choose_model(AUTO, AMX).why
    moved = retrain.should_retrain(Champion(on_plain), "m", on_amx, why={"model": why})
    assert moved.retrain
    assert f"model: {DEFAULT_MODEL}@" in moved.reason and f"-> {MPNET_MODEL}@sha256:" in moved.reason
    assert f"({why})" in moved.reason and "epochs: 2 -> 1" in moved.reason
