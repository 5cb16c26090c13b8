"""Skip-if-unchanged: the training signature and the decision against the champion's."""
import json

from mlflow import MlflowClient

from steps.evaluation import gate
from steps.lifecycle import registry, retrain
from steps.lifecycle.identity import code_version, model_identity
from steps.runtime import tracking
from tests.fixtures import served_model_uri

PARAMS = {"data": "reviews.csv", "max-rows": 0, "model": "distilbert-base-uncased", "epochs": 2, "batch-size": 16,
          "learning-rate": 5e-5, "max-length": 128, "seed": 42, "registered-model": "review-classifier",
          "promote": "auto", "min-f1": 0.75, "force-retrain": False, "deploy": {"schedule": "17 3 * * *"}}


def test_inputs_keep_training_settings_and_drop_the_rest():
    inputs = retrain.training_inputs("f" * 64, PARAMS)
    assert inputs == {"data_fingerprint": "f" * 64, "model": "distilbert-base-uncased", "epochs": 2,
                      "batch-size": 16, "learning-rate": 5e-5, "max-length": 128, "seed": 42,
                      "code": code_version()}
    moved = {**PARAMS, "data": "/elsewhere/copy.csv", "min-f1": 0.9, "promote": "never", "max-rows": 0}
    assert retrain.training_signature(retrain.training_inputs("f" * 64, moved)) == retrain.training_signature(inputs)
    for key, value in (("epochs", 3), ("learning-rate", 1e-4), ("seed", 1), ("model", "roberta-base")):
        changed = retrain.training_inputs("f" * 64, {**PARAMS, key: value})
        assert retrain.training_signature(changed) != retrain.training_signature(inputs), key
    assert retrain.training_signature(retrain.training_inputs("e" * 64, PARAMS)) != retrain.training_signature(inputs)


def test_a_local_model_directory_is_identified_by_content_not_path(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_identity(str(copy)) == model_identity(str(tiny_model_dir))
    assert model_identity(str(copy)).startswith("local:")
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"n_layers": 2', '"n_layers": 3'))
    assert model_identity(str(copy)) != model_identity(str(tiny_model_dir))
    assert model_identity("minilm") == model_identity("sentence-transformers/all-MiniLM-L6-v2")


def test_one_changed_byte_of_the_weights_is_another_model(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("REVIEWFLOW_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    before = model_identity(str(copy))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight: same names, same sizes, same config
    weights.write_bytes(bytes(data))
    assert model_identity(str(copy)) != before
    inputs = [retrain.training_inputs("f" * 64, {**PARAMS, "model": str(path)}) for path in (tiny_model_dir, copy)]
    assert retrain.training_signature(inputs[0]) != retrain.training_signature(inputs[1])


def test_file_hashes_are_reused_while_path_size_and_mtime_are_unchanged(tiny_model_dir, tmp_path, monkeypatch):
    import json as json_module

    from steps.lifecycle.identity import cache_file

    monkeypatch.setenv("REVIEWFLOW_CACHE_DIR", str(tmp_path / "cache"))
    first = model_identity(str(tiny_model_dir))
    cache = json_module.loads(cache_file().read_text())
    weights = str((tiny_model_dir / "model.safetensors").resolve())
    cache[weights][1] = "0" * 64  # a rerun must take the cached digest, not read the weights again
    cache_file().write_text(json_module.dumps(cache))
    assert model_identity(str(tiny_model_dir)) != first


def _register(uri, classifier_dir, run_id, inputs):
    parent = tracking.start_flow_run(uri, "ReviewFlow", run_id, {})
    with tracking.step_run(uri, parent, "register", f"ReviewFlow/{run_id}/register/8") as run:
        return registry.register(run.client, "review-classifier", served_model_uri(classifier_dir),
                                 f"ReviewFlow/{run_id}", retrain.version_tags(inputs), verdict=gate.judge(0.8))


def test_decision_against_the_champion(tracking_uri, classifier_dir):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    inputs = retrain.training_inputs("f" * 64, PARAMS)
    first = retrain.should_retrain(client, "review-classifier", inputs)
    assert first.retrain and "no champion yet" in first.reason

    _register(tracking_uri, classifier_dir, "1", inputs)
    version = client.get_model_version("review-classifier", "1")
    assert version.tags["training_signature"] == retrain.training_signature(inputs)
    assert json.loads(version.tags["training_inputs"]) == inputs

    same = retrain.should_retrain(client, "review-classifier", inputs)
    assert not same.retrain and same.route == "unchanged" and same.champion_version == 1
    assert same.reason.startswith("unchanged: the data (fingerprint ffffffffffff)")
    assert "ReviewFlow/1" in same.reason and "--force-retrain" in same.reason

    forced = retrain.should_retrain(client, "review-classifier", inputs, force=True)
    assert forced.retrain and forced.reason == "--force-retrain"

    changed = retrain.should_retrain(client, "review-classifier", {**inputs, "epochs": 3, "data_fingerprint": "a" * 64})
    assert changed.retrain and changed.route == "train"
    assert changed.differences == ["data_fingerprint: ffffffffffff… -> aaaaaaaaaaaa…", "epochs: 2 -> 3"]
    assert "changed since champion v1" in changed.reason


def test_a_champion_without_a_signature_is_retrained(tracking_uri, classifier_dir):
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    inputs = retrain.training_inputs("f" * 64, PARAMS)
    _register(tracking_uri, classifier_dir, "1", inputs)
    client.delete_model_version_tag("review-classifier", "1", "training_signature")
    decision = retrain.should_retrain(client, "review-classifier", inputs)
    assert decision.retrain and "carries no training_signature" in decision.reason


def test_new_weights_under_the_same_path_are_trained_on_and_the_reason_says_why(tracking_uri, classifier_dir,
                                                                                 tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    import shutil

    monkeypatch.setenv("REVIEWFLOW_CACHE_DIR", str(tmp_path / "cache"))
    encoder = tmp_path / "encoder"
    shutil.copytree(tiny_model_dir, encoder)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    before = retrain.training_inputs("f" * 64, {**PARAMS, "model": str(encoder)})
    _register(tracking_uri, classifier_dir, "1", before)
    assert not retrain.should_retrain(client, "review-classifier", before).retrain
    weights = encoder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the encoder retrained in place: same directory, same file names and sizes
    weights.write_bytes(bytes(data))
    after = retrain.training_inputs("f" * 64, {**PARAMS, "model": str(encoder)})
    decision = retrain.should_retrain(client, "review-classifier", after)
    assert decision.retrain and decision.differences == [f"model: {before['model']} -> {after['model']}"]
    assert "changed since champion v1: model: local:" in decision.reason
