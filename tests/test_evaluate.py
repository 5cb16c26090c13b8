import numpy as np
import pytest

from steps.evaluate import classification_metrics, predict_proba
from steps.models import load_classifier
from steps.tokenize import encode


def test_metrics_on_a_hand_checked_example():
    labels = [1, 1, 1, 0, 0]
    probs = [0.9, 0.6, 0.4, 0.3, 0.7]  # predictions 1 1 0 0 1: TP 2, FN 1, TN 1, FP 1
    m = classification_metrics(labels, probs)
    assert (m["true_positives"], m["false_negatives"], m["true_negatives"], m["false_positives"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(4 / 6)  # 4 of 6 positive/negative pairs ranked right
    expected_loss = -np.mean(np.log([0.9, 0.6, 0.4, 0.7, 0.3]))
    assert m["log_loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_probabilities_are_softmax_in_row_order(tiny_model_dir, tiny_tokenizer):
    import torch

    model = load_classifier(str(tiny_model_dir))
    texts = ["great phone", "the battery was very poor and the screen was junk", "love it"]
    tokens = encode(texts, [1, 0, 1], tiny_tokenizer, max_length=32)
    probs = predict_proba(model, tokens, batch_size=2)
    assert probs.shape == (3,) and ((probs > 0) & (probs < 1)).all()
    with torch.inference_mode():
        batch = tiny_tokenizer(texts[1], return_tensors="pt", return_token_type_ids=False)
        expected = torch.softmax(model(**batch).logits, -1)[0, 1].item()
    assert probs[1] == pytest.approx(expected, abs=1e-5)
