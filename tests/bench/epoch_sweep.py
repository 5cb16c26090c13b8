"""Which epoch to keep, and which recipe: validation and test figures after every epoch, per training recipe and seed.

    python tests/bench/epoch_sweep.py --seeds 42,1,2,3                       # the default recipe
    python tests/bench/epoch_sweep.py --recipes "epochs=3,batch-size=32,learning-rate=1e-4" --seeds 42,1,2,3
    python tests/bench/epoch_sweep.py --recipes "epochs=3;epochs=4,learning-rate=2e-5"   # several, `;` between

The data, split and tokens are the default ReviewFlow run's (`--data`, default sample:amazon, read, validated
(quarantine applied) and split with the flow's seed 42 whatever the training seed: the test rows stay the same);
each recipe is the default training settings with the given ones changed (settings of the `training` group). Every
(recipe, training seed) trains once with the engine (steps/training/loop.py, no early stopping) and scores the test
rows after every epoch (inside the engine's after-epoch hook, so with its last-layer shortcut on: the same logits
to rounding) with PyTorch as the evaluate step's predict_proba does (fp32 on a CPU, bf16 autocast on a GPU), then
says which epoch each --best-epoch-by rule keeps. One JSON line per run on stdout: recipe, seed, per-epoch val_loss
/ val_accuracy / val_f1 / test_accuracy / test_f1, and for "f1" and "loss" the kept epoch with its figures. Not part
of the test suite: a run of the default recipe takes about a minute per seed on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SPLIT_SEED = 42  # ReviewFlow's default --seed: the split every recipe is scored on


def parse_recipe(text: str) -> dict:
    """"epochs=3,learning-rate=1e-4" -> {"epochs": 3, "learning-rate": 0.0001}: CompareFlow's candidate syntax,
    parsed and checked by the same code (steps/evaluation/compare.py); only settings of the `training` group (the
    tokens are made once, at the default max length)."""
    from steps import settings
    from steps.evaluation.compare import parse_candidates

    overrides = parse_candidates(f"minilm[{text}]" if text.strip() else "minilm")[0].overrides
    training = {s.name for s in settings.in_groups("training")}
    others = sorted(set(overrides) - training)
    if others:
        raise SystemExit(f"--recipes: {', '.join(others)} is not a training setting; this sweep tokenizes once, "
                         f"at --max-length {settings.default('max-length')}")
    return overrides


def kept(history: list[dict], rule: str) -> int:
    """The epoch the engine keeps under --best-epoch-by `rule`, from the unrounded history."""
    from steps.training.validation import epoch_score

    return min(history, key=lambda h: epoch_score(h, rule))["epoch"]


def default_split(data: str):
    """The default run's split of `data`: read, validated (quarantine applied) and split as ReviewFlow does with
    its default seed, whatever the training seed. Its lines go to stderr (stdout: only JSON)."""
    from steps import settings
    from steps.data.ingest import load_reviews
    from steps.data.split import split_reviews
    from steps.data.validate import validate_reviews

    with contextlib.redirect_stdout(sys.stderr):
        ingested = load_reviews(data, seed=SPLIT_SEED)
        clean = validate_reviews(ingested.frame, settings.default("max-bad-fraction"), ingested.origin,
                                 ingested.rejected).clean
        return split_reviews(clean, seed=SPLIT_SEED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample:amazon")
    parser.add_argument("--recipes", default="", help="`;`-separated recipes; an empty one is the default settings")
    parser.add_argument("--seeds", default="42", help="training seeds, comma-separated")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from schemas import LABEL_COLUMN
    from steps import settings
    from steps.evaluation.evaluate import predict_proba
    from steps.evaluation.metrics import classification_metrics
    from steps.training.config import TrainConfig
    from steps.training.device import seed_everything
    from steps.training.loop import train_classifier
    from steps.training.models import load_classifier, load_tokenizer
    from steps.training.tokenize import tokenize_split

    model_name, max_length = settings.default("model"), settings.default("max-length")
    parts = default_split(args.data)
    with contextlib.redirect_stdout(sys.stderr):  # tokenize lines; stdout: only JSON lines
        tokens = tokenize_split(parts.frames(), load_tokenizer(model_name), max_length, "quiet")
    test_labels = parts.test[LABEL_COLUMN].to_numpy().astype(int)

    def test_figures(model) -> dict:
        figures = classification_metrics(test_labels, predict_proba(model, tokens["test"]))
        return {"test_accuracy": round(figures["accuracy"], 4), "test_f1": round(figures["f1"], 4)}

    for recipe in args.recipes.split(";"):
        changed = parse_recipe(recipe)
        for seed in (int(s) for s in args.seeds.split(",")):
            config = TrainConfig.from_values({**changed, "seed": seed, "patience": 0})
            seed_everything(seed)
            model = load_classifier(model_name)
            scores = {}
            started = time.perf_counter()
            def after_epoch(epoch, model=model, scores=scores):
                scores[epoch] = test_figures(model)

            result = train_classifier(model, tokens["train"], tokens["validation"], config, progress="quiet",
                                      log=lambda message: None, after_epoch=after_epoch)
            history = [{"epoch": h["epoch"], **{k: round(h[k], 4) for k in ("val_loss", "val_accuracy", "val_f1")},
                        **scores[h["epoch"]]} for h in result.history]
            print(json.dumps({"recipe": recipe or "default", "seed": seed, "epochs": history,
                              **{f"kept_by_{rule}": history[kept(result.history, rule) - 1] for rule in ("f1", "loss")},
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()
