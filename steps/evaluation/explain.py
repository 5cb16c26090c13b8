"""Which words drove a prediction: token attributions with Layer Integrated Gradients (captum) over the embedding
layer, batched; and exact per-feature contributions for the linear TF-IDF baseline.

For a review x the explained output is the logit difference f(x) = logit(positive) - logit(negative): a positive
score pushes toward "positive", a negative one toward "negative". The reference input x' keeps the special tokens
([CLS], [SEP]), the attention mask and the review's token positions, and replaces every other token by the
padding token. Integrated Gradients integrates the gradient of f along the straight line from x' to x in
embedding space (`n_steps` points, Gauss-Legendre); the attributions of a review's tokens then sum to
f(x) - f(x'), up to the convergence delta that is reported with every explanation (smaller with more steps).
Word scores are the sums of their word-piece scores; words are cut from the review text itself (tokenizer
offsets), so what is shown is what was written.

Used by the evaluate step (heatmaps of the most confident errors and a sample of correct predictions on its card,
JSON in MLflow) and by PredictFlow `--explain K` (the K most influential words of every review).
"""
from __future__ import annotations

import time

BATCH_REVIEWS = 8  # reviews per attribution call; each is expanded to n_steps interpolated inputs
INTERNAL_BATCH = 256  # interpolated inputs per forward/backward pass, at most
# ... and at most about this many tokens (inputs x padded length): a pass keeps every layer's activations for its
# backward pass, about 0.2 MB a token for MiniLM-L6 (256 inputs of 128 tokens: 5 GB; 2,048 tokens: 0.5 GB)
PASS_TOKENS = 2048
# The evaluate card explains the most confident errors and a seeded sample of correct predictions. Each review costs
# about as much as training on `n_steps` reviews (a forward and a backward pass per step), so a few of each.
CONFIDENT_ERRORS = 5
CORRECT_SAMPLE = 3


def _logit_difference(model):
    def forward(input_ids, attention_mask, position_ids=None):
        extra = {} if position_ids is None else {"position_ids": position_ids}
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.float()
        return logits[:, 1] - logits[:, 0]

    return forward


def _scored_with_positions(model, forward, ids, mask):
    """(f of the review itself, the position ids the model gave it), from one forward pass: the positions, read
    off its position table, are to be given to every input on the integration path and to the reference; None
    for a model whose forward takes no position ids or that has no position table (DistilBERT, rotary encoders).
    RoBERTa-style encoders (MPNet, RoBERTa, XLM-R) number positions by counting non-padding tokens, so a reference
    of padding tokens would otherwise be scored with every word at the padding position: the path would not start
    at the reference, and the delta would not shrink with more steps (a tiny MPNet: 1.08 at 4, 20 and 100 steps)."""
    import inspect

    import torch

    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    hooked = isinstance(table, torch.nn.Embedding) and "position_ids" in inspect.signature(model.forward).parameters
    seen = []
    handle = table.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach())) if hooked else None
    try:
        with torch.no_grad():
            actual = forward(ids, mask)
    finally:
        if handle is not None:
            handle.remove()
    return actual, (seen[0].expand(ids.shape[0], -1).clone() if seen else None)


def explain_texts(model, tokenizer, texts, max_length: int, n_steps: int = 50, batch_size: int = BATCH_REVIEWS,
                  device=None) -> list[dict]:
    """One explanation per text, in input order: {"text", "tokens": [{"token", "score"}], "words": [{"text",
    "start", "end", "score"}], "logit_difference", "reference_logit_difference", "delta", "probability_positive"}.
    """
    import numpy as np
    import torch
    from captum.attr import LayerIntegratedGradients

    from steps.runtime.errors import ReviewflowError
    from steps.training.device import pick_device

    if n_steps < 2:
        raise ReviewflowError(f"--explain-steps must be at least 2 to explain anything, got {n_steps}")
    texts = [" ".join(str(t).split()) for t in texts]
    device = device or pick_device()
    model.to(device).eval()
    forward = _logit_difference(model)
    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fast = bool(getattr(tokenizer, "is_fast", False))
    out: list[dict | None] = [None] * len(texts)
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad less
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch_texts = [texts[i] for i in rows]
        encoded = tokenizer(batch_texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt",
                            return_special_tokens_mask=True, return_token_type_ids=False,
                            **({"return_offsets_mapping": True} if fast else {}))
        ids = encoded["input_ids"].to(device)
        mask = encoded["attention_mask"].to(device)
        special = encoded["special_tokens_mask"].to(device).bool() | (mask == 0)
        reference = torch.where(special, ids, torch.full_like(ids, pad_id))
        actual, positions = _scored_with_positions(model, forward, ids, mask)
        extra = (mask,) if positions is None else (mask, positions)
        per_pass = _internal_batch(len(rows), ids.shape[1])
        attributions, delta = lig.attribute(ids, baselines=reference, additional_forward_args=extra,
                                            n_steps=n_steps, internal_batch_size=per_pass,
                                            return_convergence_delta=True)
        with torch.no_grad():
            at_reference = forward(reference, *extra)
        scores = attributions.sum(dim=-1).detach().float().cpu().numpy()
        for j, row in enumerate(rows):
            length = int(mask[j].sum())
            pieces = tokenizer.convert_ids_to_tokens(ids[j, :length].tolist())
            is_special = special[j, :length].cpu().numpy()
            tokens = [{"token": piece, "score": float(scores[j, k])}
                      for k, piece in enumerate(pieces) if not is_special[k]]
            if fast:
                words = _words(batch_texts[j], encoded.word_ids(j)[:length], encoded["offset_mapping"][j, :length],
                               scores[j, :length], is_special)
            else:
                words = [{"text": t["token"], "start": None, "end": None, "score": t["score"]} for t in tokens]
            out[row] = {
                "text": batch_texts[j], "tokens": tokens, "words": words,
                "logit_difference": float(actual[j]), "reference_logit_difference": float(at_reference[j]),
                "delta": float(delta[j]), "probability_positive": float(torch.sigmoid(actual[j])),
            }
    return out


def _internal_batch(reviews: int, length: int) -> int:
    """Interpolated inputs per forward/backward pass for `reviews` reviews padded to `length` tokens: INTERNAL_BATCH,
    fewer for long reviews (PASS_TOKENS), never fewer than the reviews (one integration step of each a pass)."""
    return max(reviews, min(INTERNAL_BATCH, PASS_TOKENS // max(length, 1)))


def _words(text: str, word_ids, offsets, scores, is_special) -> list[dict]:
    """Word-piece scores summed per word; each word's text is its span of the review."""
    words: dict[int, dict] = {}
    for k, word in enumerate(word_ids):
        if word is None or is_special[k]:
            continue
        begin, end = int(offsets[k][0]), int(offsets[k][1])
        entry = words.setdefault(word, {"start": begin, "end": end, "score": 0.0})
        entry["start"], entry["end"] = min(entry["start"], begin), max(entry["end"], end)
        entry["score"] += float(scores[k])
    return [{"text": text[w["start"]:w["end"]], **w} for _, w in sorted(words.items())]


def explain_linear(pipeline, texts) -> list[dict]:
    """Exact explanations of the TF-IDF + logistic regression baseline: each present n-gram contributes
    tf-idf value x weight to the log-odds of "positive"; they sum to the log-odds minus the intercept (delta 0)."""
    import numpy as np

    texts = [" ".join(str(t).split()) for t in texts]
    vectorizer, logreg = pipeline.named_steps["tfidf"], pipeline.named_steps["logreg"]
    features = vectorizer.transform(texts).tocsr()
    names = vectorizer.get_feature_names_out()
    weights, intercept = logreg.coef_[0], float(logreg.intercept_[0])
    out = []
    for i, text in enumerate(texts):
        row = features.getrow(i)
        contributions = row.data * weights[row.indices]
        order = np.argsort(row.indices)
        tokens = [{"token": str(names[row.indices[k]]), "score": float(contributions[k])} for k in order]
        logit = intercept + float(contributions.sum())
        out.append({"text": text, "tokens": tokens, "words": [{"text": t["token"], "start": None, "end": None,
                                                               "score": t["score"]} for t in tokens],
                    "logit_difference": logit, "reference_logit_difference": intercept, "delta": 0.0,
                    "probability_positive": float(1 / (1 + np.exp(-logit)))})
    return out


def top_words(explanation: dict, k: int) -> list[dict]:
    """The k words with the largest |score|, largest first: [{"token", "score"}] with signed scores."""
    ranked = sorted(explanation["words"], key=lambda w: -abs(w["score"]))[:k]
    return [{"token": w["text"], "score": round(w["score"], 4)} for w in ranked]


# --- the evaluate step ---------------------------------------------------------------------------------------
def pick_reviews(labels, probs, confident_errors: list[dict], seed: int = 0, correct: int = CORRECT_SAMPLE,
                 errors: int = CONFIDENT_ERRORS):
    """Test rows to explain: the `errors` most confident errors (as listed by evaluate, most confident first), then
    a seeded random sample of `correct` correctly predicted rows. [(row, "error" | "correct")]."""
    import numpy as np

    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probs, dtype=float) >= 0.5).astype(int)
    right = np.flatnonzero(predicted == labels)
    sample = np.random.default_rng(seed).choice(right, size=min(correct, len(right)), replace=False) \
        if len(right) else []
    return [(int(e["row"]), "error") for e in confident_errors[:errors]] + [(int(i), "correct") for i in sorted(sample)]


def explain_test_reviews(run, classifier, test_rows, probabilities, confident_errors: list[dict],
                         max_length: int, n_steps: int, seed: int = 0) -> dict:
    """The evaluate step's explanations: the most confident errors and a sample of correct predictions, with
    the cost (seconds per explained review) and the largest convergence delta; logged on `run` as metrics and as
    explanations/explanations.json. Returns that JSON's content ({"reviews": [] } when n_steps is 0).
    `classifier`: the trained model loaded once (steps.training.models.loaded) or packed (bytes)."""
    from schemas import LABEL_COLUMN, TEXT_COLUMN
    from steps.training.models import loaded

    if not n_steps:
        return {"reviews": [], "n_steps": 0, "note": "no explanations (--explain-steps 0)"}
    labels = test_rows[LABEL_COLUMN].to_numpy()
    picked = pick_reviews(labels, probabilities, confident_errors, seed)
    texts = test_rows[TEXT_COLUMN].astype(str).tolist()
    with loaded(classifier) as model:
        started = time.perf_counter()
        explained = explain_texts(model.model, model.tokenizer, [texts[row] for row, _ in picked], max_length,
                                  n_steps)
        seconds = time.perf_counter() - started
    reviews = []
    for (row, kind), explanation in zip(picked, explained):
        reviews.append({"row": row, "kind": kind, "label": int(labels[row]),
                        "predicted": int(probabilities[row] >= 0.5),
                        "probability_positive": round(float(probabilities[row]), 4), **explanation})
    result = {"method": "Layer Integrated Gradients (captum) over the input embeddings; output logit(positive) "
                        "- logit(negative); reference: special tokens, mask and positions kept, others replaced by "
                        "padding",
              "n_steps": n_steps, "reviews": reviews,
              "seconds_per_review": round(seconds / len(reviews), 4) if reviews else 0.0,
              "max_abs_delta": max((abs(r["delta"]) for r in reviews), default=0.0)}
    run.json(result, "explanations/explanations.json")
    run.metrics({"explain_reviews": len(reviews), "explain_seconds_per_review": result["seconds_per_review"],
                 "explain_max_abs_delta": result["max_abs_delta"], "explain_steps": n_steps})
    print(f"Explained {len(reviews)} test reviews ({n_steps} integration steps): "
          f"{result['seconds_per_review']:.2f} s per review, largest convergence delta {result['max_abs_delta']:.4f}")
    return result


# --- PredictFlow ----------------------------------------------------------------------------------------------
def explainer_for(pyfunc_model):
    """A function texts -> explanations for a loaded MLflow pyfunc: the registered transformer (Layer Integrated
    Gradients) or the TF-IDF baseline (exact linear contributions)."""
    from steps.runtime.errors import ReviewflowError

    inner = pyfunc_model.unwrap_python_model() if hasattr(pyfunc_model, "unwrap_python_model") else pyfunc_model
    if hasattr(inner, "pipeline"):
        return lambda texts, n_steps: explain_linear(inner.pipeline, texts)
    if hasattr(inner, "torch_classifier"):  # steps/serving/classifier_model.py, whatever backend it serves with
        def explain(texts, n_steps):
            model, tokenizer, max_length = inner.torch_classifier()
            return explain_texts(model, tokenizer, texts, max_length, n_steps)
        return explain
    if hasattr(inner, "model") and hasattr(inner, "tokenizer"):
        return lambda texts, n_steps: explain_texts(inner.model, inner.tokenizer, texts,
                                                    int(getattr(inner, "max_length", 128)), n_steps)
    raise ReviewflowError(f"--explain: {type(inner).__name__} is neither a reviewflow transformer nor the TF-IDF "
                          "baseline; only those two can be explained")


def explain_frame(pyfunc_model, texts, k: int, n_steps: int, chunk: int = 64, log=None) -> tuple[list[str], dict]:
    """For every text, the k most influential words with signed scores as a JSON list
    ([{"token": "great", "score": 1.23}, ...], positive = toward "positive"), and the cost
    ({"seconds_per_review", "max_abs_delta", "explained"})."""
    import json

    from steps.runtime.errors import ReviewflowError
    from steps.runtime.progress import Progress

    if k < 1:
        raise ReviewflowError(f"--explain must be at least 1 to add explanations, got {k}")
    explain = explainer_for(pyfunc_model)
    texts = [str(t) for t in texts]
    column, worst = [], 0.0
    started = time.perf_counter()
    with Progress("explain", len(texts), "reviews", **({"log": log} if log is not None else {})) as progress:
        for start in range(0, len(texts), chunk):
            for explanation in explain(texts[start:start + chunk], n_steps):
                column.append(json.dumps(top_words(explanation, k)))
                worst = max(worst, abs(explanation["delta"]))
            progress.update(min(chunk, len(texts) - start))
    seconds = time.perf_counter() - started
    return column, {"explained": len(texts), "seconds_per_review": round(seconds / len(texts), 4) if texts else 0.0,
                    "max_abs_delta": round(worst, 6)}
