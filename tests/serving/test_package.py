"""The served model's backends (steps/serving/package.py, onnx_export.py): the ONNX graphs of a tiny classifier
(fused into onnxruntime's kernels; int8 per channel with the head in fp32) score like PyTorch, a variant that does
not is refused by its parity check, the backend is chosen by a fixed order (the same inputs are served the same way
however busy the machine), not by the speed measured, and a request's texts are scored in buckets of similar
length, in the caller's order."""
import numpy as np
import pytest

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.serving.onnx_export import export_onnx, head_nodes, model_shape, optimize_onnx, quantize_int8
from steps.serving.package import FP32_TOLERANCE, ParityRules, check_parity, choose_backend, judge_parity
from tests.fixtures import review_frame


def save_classifier(encoder_dir, target, seed: int) -> str:
    """The tiny encoder with a classification head initialized from `seed`, saved as training saves it."""
    import torch

    from steps.training.models import load_classifier, load_tokenizer

    torch.manual_seed(seed)
    load_classifier(str(encoder_dir)).save_pretrained(target)
    load_tokenizer(str(encoder_dir)).save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_model_dir) -> tuple[str, dict]:
    folder = tmp_path_factory.mktemp("served")
    model = save_classifier(tiny_model_dir, folder / "classifier", seed=0)
    plain = export_onnx(model, folder / "model.plain.onnx")
    graph = optimize_onnx(plain, folder / "model.onnx", model_shape(model))
    assert graph["optimized"] and graph["attention_fused"], graph  # the tiny DistilBERT fuses: what is tested here
    fp32 = folder / "model.onnx"
    return model, {"onnx": str(fp32), "onnx-int8": str(quantize_int8(fp32, folder / "model.int8.onnx"))}


def test_the_onnx_graphs_score_the_test_rows_like_pytorch(classifier):
    model, onnx_files = classifier
    rows = review_frame(48, seed=5)
    parity = check_parity(model, onnx_files, rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN], max_length=32)
    assert list(parity) == ["torch", "onnx", "onnx-int8"]
    assert parity["torch"]["passed"] and parity["torch"]["max_abs_diff"] == 0.0
    assert parity["onnx"]["passed"] and 0.0 <= parity["onnx"]["max_abs_diff"] <= FP32_TOLERANCE
    assert parity["onnx"]["accuracy"] == parity["torch"]["accuracy"]
    assert 0.0 < parity["onnx-int8"]["max_abs_diff"] < 0.5  # quantized: close, not equal
    assert all(figures["texts_per_s"] > 0 for figures in parity.values())


def test_an_onnx_graph_of_another_model_fails_its_parity_check(classifier, tiny_model_dir, tmp_path):
    """The check compares probabilities row by row: a graph that is not this model's is caught."""
    model, onnx_files = classifier
    other = export_onnx(save_classifier(tiny_model_dir, tmp_path / "other", seed=1), tmp_path / "other.onnx")
    rows = review_frame(48, seed=5)
    parity = check_parity(model, {**onnx_files, "onnx": str(other)}, rows[TEXT_COLUMN].tolist(),
                          rows[LABEL_COLUMN], max_length=32)
    assert not parity["onnx"]["passed"] and parity["onnx"]["max_abs_diff"] > FP32_TOLERANCE
    backend, why = choose_backend({**parity, "onnx-int8": {**parity["onnx-int8"], "passed": False}})
    assert backend == "torch" and "first of onnx-int8, onnx, torch that passed parity" in why


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> str:
    """The tiny classifier fine-tuned on reviews whose sentiment is in clear words: its predictions depend on
    the text, so an accuracy drop can be seen."""
    import torch

    from steps.training.config import TrainConfig
    from steps.training.loop import train_classifier
    from steps.training.models import load_classifier, load_tokenizer
    from steps.training.tokenize import encode

    rows = review_frame(240, seed=0)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(3)
    model = load_classifier(str(tiny_model_dir))
    train_classifier(model, encode(rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN].tolist(), tokenizer, 32), None,
                     TrainConfig(epochs=4, batch_size=16, learning_rate=8e-3, seed=3), log=lambda line: None,
                     progress="quiet")
    target = tmp_path_factory.mktemp("trained")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def test_an_int8_graph_is_judged_by_the_accuracy_and_f1_it_loses_and_the_predictions_it_flips(trained, classifier,
                                                                                              tmp_path):
    """int8 may move probabilities; it passes while it loses at most int8_max_drop of accuracy and of F1 and flips
    at most int8_max_flipped of the predictions, and a graph that predicts worse than that fails, saying why."""
    untrained_onnx = classifier[1]["onnx"]  # a head that was never trained: it does not read the reviews
    fp32 = export_onnx(trained, tmp_path / "model.onnx")
    rows = review_frame(80, seed=5)
    texts, labels = rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN]
    own = check_parity(trained, {"onnx": str(fp32), "onnx-int8": str(quantize_int8(fp32, tmp_path / "q.onnx"))},
                       texts, labels, max_length=32)
    reference = own["torch"]
    assert reference["accuracy"] >= 0.8  # the premise: the trained model reads the sentiment words
    int8, rules = own["onnx-int8"], ParityRules()
    drops = (reference["accuracy"] - int8["accuracy"], reference["f1"] - int8["f1"])
    expected = max(drops) <= rules.int8_max_drop + 1e-12 and int8["flipped"] <= rules.int8_max_flipped + 1e-12
    assert int8["passed"] == expected, (int8, reference)  # whichever way it went, the verdict follows the rule
    worse = check_parity(trained, {"onnx": str(fp32), "onnx-int8": untrained_onnx}, texts, labels, max_length=32)
    assert reference["accuracy"] - worse["onnx-int8"]["accuracy"] > rules.int8_max_drop
    assert not worse["onnx-int8"]["passed"] and worse["onnx"]["passed"]
    assert "points below PyTorch's" in worse["onnx-int8"]["failed_because"]
    assert choose_backend(worse)[0] == "onnx"


def scored(reference, other):
    return {"torch": (np.asarray(reference, dtype=float), 1.0), "onnx": (np.asarray(reference, dtype=float), 1.0),
            "onnx-int8": (np.asarray(other, dtype=float), 0.5)}


def test_int8_that_keeps_accuracy_but_flips_too_many_predictions_is_refused():
    """Two flips the other way round leave accuracy and F1 where they were, and still change 2 of 100 answers."""
    labels = np.array([1] * 50 + [0] * 50)
    reference = np.where(labels == 1, 0.9, 0.1)
    reference[[0, 50]] = [0.4, 0.6]  # one error of each kind
    moved = reference.copy()
    moved[[0, 50]] = [0.6, 0.4]  # both flipped: now right
    moved[[1, 51]] = [0.4, 0.6]  # two others flipped: now wrong
    figures = judge_parity(scored(reference, moved), labels)
    int8 = figures["onnx-int8"]
    assert int8["accuracy"] == figures["torch"]["accuracy"] and int8["f1"] == pytest.approx(figures["torch"]["f1"])
    assert int8["flipped"] == pytest.approx(0.04) and not int8["passed"]
    assert int8["failed_because"] == "4.0% of predictions flipped > 1%"
    assert judge_parity(scored(reference, moved), labels, ParityRules(int8_max_flipped=0.05))["onnx-int8"]["passed"]
    one_flip = reference.copy()
    one_flip[50] = 0.4  # an error fixed: better, and 1 of 100 flipped, within the rule
    assert judge_parity(scored(reference, one_flip), labels)["onnx-int8"]["passed"]


def test_int8_that_loses_more_than_the_allowed_accuracy_is_refused_with_the_figure():
    labels = np.array([1] * 500 + [0] * 500)
    reference = np.where(labels == 1, 0.9, 0.1)
    worse = reference.copy()
    worse[:4] = 0.2  # 4 of 1000 right answers become wrong: 0.4 point of accuracy, 0.4% flipped
    int8 = judge_parity(scored(reference, worse), labels)["onnx-int8"]
    assert not int8["passed"] and int8["failed_because"].startswith("accuracy 0.40 points below PyTorch's > 0.3")
    assert judge_parity(scored(reference, worse), labels, ParityRules(int8_max_drop=0.005))["onnx-int8"]["passed"]


def speeds(torch: float, onnx: float, int8: float, int8_passed: bool = True) -> dict:
    return {"torch": {"passed": True, "texts_per_s": torch}, "onnx": {"passed": True, "texts_per_s": onnx},
            "onnx-int8": {"passed": int8_passed, "texts_per_s": int8}}


@pytest.mark.parametrize("measured", [speeds(14040, 16345, 9459), speeds(7722, 10967, 16296)])
def test_the_backend_follows_a_fixed_order_whatever_speeds_were_measured(measured):
    """These two measurements are of one tiny model, trained twice on the same inputs on a busy machine: choosing
    the fastest served it with fp32 ONNX once and with int8 once."""
    backend, why = choose_backend(measured)
    assert backend == "onnx-int8"
    assert f"onnx-int8 {measured['onnx-int8']['texts_per_s']:.0f}" in why  # the speeds are still reported
    assert choose_backend(measured, gpu=True)[0] == "torch"  # PyTorch on a GPU; the ONNX graphs run on the CPU


def test_a_failed_check_moves_to_the_next_backend_and_an_asked_backend_is_used_and_says_so():
    assert choose_backend(speeds(40, 77, 154, int8_passed=False))[0] == "onnx"
    backend, why = choose_backend(speeds(40, 77, 154, int8_passed=False), asked="onnx-int8")
    assert backend == "onnx-int8" and why == "--serving-backend onnx-int8 (it did not pass its parity check)"
    assert choose_backend(speeds(40, 77, 154), asked="torch") == ("torch", "--serving-backend torch")


def test_probabilities_are_numbers_between_zero_and_one(classifier):
    from steps.serving.classifier_model import Scorer

    model, onnx_files = classifier
    for backend in ("torch", "onnx", "onnx-int8"):
        probs = Scorer(model, backend, onnx_files.get(backend), 32, 16).probabilities(["great", "awful, broke"])
        assert probs.shape == (2,) and np.all((probs >= 0) & (probs <= 1)), backend


def test_the_fp32_graph_is_fused_and_the_int8_graph_keeps_the_head_in_fp32(classifier):
    import onnx

    model, onnx_files = classifier
    fused = {node.op_type for node in onnx.load(onnx_files["onnx"]).graph.node}
    assert fused & {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"}  # onnxruntime's own kernels
    head = head_nodes(onnx_files["onnx"])
    assert head and all("classifier" in name for name in head)
    int8 = onnx.load(onnx_files["onnx-int8"]).graph.node
    by_name = {node.name: node.op_type for node in int8}
    kept = [by_name.get(name) or by_name.get(f"{name}_MatMul") for name in head]  # a Gemm may become MatMul + Add
    assert kept == ["MatMul"] * len(head) or kept == ["Gemm"] * len(head), kept  # fp32, not MatMulInteger
    ops = {node.op_type for node in int8}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention"}  # the encoder is quantized
    per_channel = [init for init in onnx.load(onnx_files["onnx-int8"]).graph.initializer
                   if init.name.endswith("_scale") and len(init.dims) == 1 and init.dims[0] > 1]
    assert per_channel  # a scale per output channel, not one per matrix


def test_a_graph_that_cannot_be_fused_is_kept_as_exported_and_says_why(classifier, tmp_path):
    model, _ = classifier
    plain = export_onnx(model, tmp_path / "plain.onnx")
    graph = optimize_onnx(plain, tmp_path / "fused.onnx", None)
    assert graph == {"optimized": False, "fused": {}, "attention_fused": False,
                     "note": "no head count / hidden size in config.json"}
    assert not (tmp_path / "fused.onnx").exists()
    assert model_shape(tmp_path) is None  # no config.json there


def test_buckets_cover_every_row_once_within_the_batch_size_and_the_padding_bound():
    from steps.serving.classifier_model import MAX_PADDING, buckets

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 129, size=500)
    out = buckets(lengths, 64)
    rows = np.concatenate(out)
    assert sorted(rows.tolist()) == list(range(500))
    assert all(1 <= len(b) <= 64 for b in out)
    for b in out:
        padded, real = len(b) * lengths[b].max(), lengths[b].sum()
        assert len(b) == 1 or padded <= (1 + MAX_PADDING) * real
    assert [len(b) for b in buckets([7], 64)] == [1]
    assert [len(b) for b in buckets([5] * 10, 4)] == [4, 4, 2]  # equal lengths: only the batch size cuts
    assert buckets([], 64) == []


def test_a_request_scored_in_buckets_answers_in_the_callers_order_as_each_text_alone(classifier):
    from steps.serving.classifier_model import Scorer

    model, _ = classifier
    texts = review_frame(40, seed=9)[TEXT_COLUMN].tolist() + ["ok", "", "an extremely " + "long " * 80 + "review"]
    scorer = Scorer(model, "torch", None, 32, 8)
    together = scorer.probabilities(texts)
    alone = np.array([scorer.probabilities([text])[0] for text in texts])
    assert np.allclose(together, alone, atol=1e-5)
    assert scorer.probabilities([]).shape == (0,)


def test_a_large_request_is_tokenized_a_chunk_at_a_time_in_the_callers_order(classifier, monkeypatch):
    """The tokenizer's output for a whole large request (the evaluate step's 200,000 test rows) held about a
    gigabyte: a request is tokenized and bucketed CHUNK_TEXTS texts at a time, and answers as before."""
    from steps.serving import classifier_model
    from steps.serving.classifier_model import Scorer

    model, _ = classifier
    texts = review_frame(45, seed=4)[TEXT_COLUMN].tolist() + ["ok", ""]
    scorer = Scorer(model, "torch", None, 32, 8)
    whole = scorer.probabilities(texts)
    calls, tokenize = [], scorer.tokenizer
    scorer.tokenizer = lambda batch, **kwargs: calls.append(len(batch)) or tokenize(batch, **kwargs)
    monkeypatch.setattr(classifier_model, "CHUNK_TEXTS", 10)
    chunked = scorer.probabilities(tuple(texts))
    assert calls == [10, 10, 10, 10, 7]
    assert np.allclose(chunked, whole, atol=1e-5)


def test_the_served_backends_scores_are_what_the_logged_model_predicts(trained, tracking_uri):
    """build_served_model scores the test rows once per backend and hands back the served backend's scores as the
    evaluation's; loading the logged model as anyone does and scoring the same rows gives the same numbers, row
    by row, for every backend it may serve with."""
    import mlflow
    import pandas as pd

    from steps.evaluation.evaluate import served_probabilities
    from steps.serving.package import build_served_model

    rows = review_frame(60, seed=11)
    texts, labels = rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN]
    for backend in ("auto", "onnx-int8", "torch"):
        with mlflow.start_run():
            served, scores = build_served_model(trained, texts, labels, max_length=32, trained_by=f"t-{backend}",
                                                backend=backend, log=lambda line: None)
        assert served.graph["optimized"] and set(served.parity) == {"torch", "onnx", "onnx-int8"}
        logged = mlflow.pyfunc.load_model(served.model_uri, model_config={"inference_log": False})
        assert np.array_equal(served_probabilities(logged, texts), scores), backend
        labels_only = logged.predict(pd.DataFrame({TEXT_COLUMN: texts}))
        assert (labels_only.to_numpy() == (scores >= 0.5)).all()
        assert served.scorecard().startswith("accuracy/F1 on 60 test rows: torch ")


def test_a_logged_model_is_asked_in_the_chunks_a_request_of_all_rows_is_scored_in():
    """served_probabilities sends a logged model the slices its own Scorer cuts a request of all rows into
    (CHUNK_TEXTS from the first row), so the scores are the same as one request's, in the rows' order."""
    import pandas as pd

    from steps.evaluation.evaluate import served_probabilities
    from steps.serving.classifier_model import CHUNK_TEXTS

    class Logged:
        requests = []

        def predict(self, frame, params=None):
            self.requests.append(frame[TEXT_COLUMN].tolist())
            return pd.DataFrame({"label": 0, "probability_positive": [float(t) / 1e6 for t in frame[TEXT_COLUMN]]})

    texts = [str(i) for i in range(2 * CHUNK_TEXTS + 5)]
    logged = Logged()
    scores = served_probabilities(logged, texts)
    assert [len(r) for r in logged.requests] == [CHUNK_TEXTS, CHUNK_TEXTS, 5]
    assert logged.requests[1][0] == str(CHUNK_TEXTS)
    assert np.array_equal(scores, np.arange(len(texts)) / 1e6)
    assert served_probabilities(logged, []).shape == (0,)


def test_parity_on_a_seeded_sample_of_many_test_rows_then_the_served_backend_scores_them_all(trained, tracking_uri,
                                                                                               monkeypatch):
    """With more test rows than PARITY_ROWS every backend scores the same seeded sample for parity, and only the
    chosen one scores all the rows: its scores are still exactly what the logged model predicts."""
    import mlflow

    from steps.evaluation.evaluate import served_probabilities
    from steps.serving import package

    assert package.parity_sample(2_000) is None and package.parity_sample(5, limit=10) is None
    sample = package.parity_sample(50_000)
    assert len(sample) == package.PARITY_ROWS and (np.diff(sample) > 0).all()
    assert np.array_equal(sample, package.parity_sample(50_000))  # the same rows every time
    monkeypatch.setattr(package, "PARITY_ROWS", 24)
    rows = review_frame(60, seed=11)
    texts, labels = rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN]
    said = []
    with mlflow.start_run():
        served, scores = package.build_served_model(trained, texts, labels, max_length=32, trained_by="t-sample",
                                                    backend="onnx", log=said.append)
    assert any("parity judged on a seeded sample of 24 of the 60 test rows; onnx scored all of them" in line
               for line in said)
    from steps.serving.classifier_model import Scorer

    assert {figures["rows"] for figures in served.parity.values()} == {24}  # every backend scored the sample
    assert served.scorecard().startswith("accuracy/F1 on 24 test rows: torch ")
    reference = Scorer(trained, "torch", None, 32, 8).probabilities([texts[i] for i in package.parity_sample(60)])
    assert served.parity["torch"]["accuracy"] == pytest.approx(
        float(((reference >= 0.5) == np.asarray(labels)[package.parity_sample(60)]).mean()))
    assert len(scores) == 60
    logged = mlflow.pyfunc.load_model(served.model_uri, model_config={"inference_log": False})
    assert np.array_equal(served_probabilities(logged, texts), scores)


def test_a_graph_whose_attention_does_not_fuse_says_so(classifier, tmp_path, monkeypatch):
    """Exported with the model's SDPA attention (as before the eager switch), the attention pattern is not one the
    optimizer knows: the rest fuses, and the result says that attention did not (the card and the log show it)."""
    from contextlib import nullcontext

    from steps.serving import onnx_export

    model, _ = classifier
    monkeypatch.setattr(onnx_export, "_eager_attention", nullcontext)
    plain = export_onnx(model, tmp_path / "plain.onnx")
    graph = optimize_onnx(plain, tmp_path / "fused.onnx", model_shape(model))
    assert graph["optimized"] and not graph["attention_fused"] and "LayerNormalization" not in graph["fused"]
    assert graph["note"].startswith("attention not fused")
    rows = review_frame(24, seed=3)
    parity = check_parity(model, {"onnx": str(tmp_path / "fused.onnx"), "onnx-int8": str(plain)},
                          rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN], max_length=32)
    assert parity["onnx"]["passed"]  # partly fused, same answers
