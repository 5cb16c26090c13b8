"""The train step's job: load the encoder with a fresh head, train it (steps/training/loop.py), log what happened,
and pack the trained classifier (weights + tokenizer) into one tar file (the flow keeps it in the datastore)."""
from __future__ import annotations


def fine_tune(run, model: str, tokens: dict, config, checkpoints=None):
    """(TrainResult, the classifier as tar bytes, training plots {file name: PNG}) for `model` on `tokens`."""
    import tempfile

    from steps.training.device import seed_everything
    from steps.training.loop import REBALANCE_STEPS, train_classifier
    from steps.training.models import load_classifier, load_tokenizer, pack_directory
    from steps.training.plots import training_plots

    if config.epochs == 0:  # --epochs 0: the model's recipe
        from dataclasses import replace

        from steps.training.auto_model import recipe_values

        config = replace(config, epochs=recipe_values(model, {"epochs": 0})["epochs"])
    from steps.runtime import threads

    run.params({**config.as_params(), "threads": threads.share()})
    print(f"Cores: {threads.describe()}; re-read every {REBALANCE_STEPS} steps.", flush=True)
    seed_everything(config.seed)  # the new classification head's initial weights come from the seed
    classifier = load_classifier(model)
    result = train_classifier(classifier, tokens["train"], tokens["validation"], config,
                              on_step=lambda step, metrics: run.metrics(metrics, step=step), checkpoints=checkpoints)
    for epoch in result.history:
        run.metrics(epoch, step=epoch["epoch"])
    run.metrics({k: v for k, v in result.summary().items() if isinstance(v, (int, float))})
    if result.class_weights:
        run.params({f"class_weight_{i}": w for i, w in enumerate(result.class_weights)})
    plots = training_plots(result)
    for name, png in plots.items():
        run.image(png, f"plots/{name}")
    with tempfile.TemporaryDirectory() as tmp:
        classifier.save_pretrained(tmp)
        load_tokenizer(model).save_pretrained(tmp)
        packed = pack_directory(tmp)
    return result, packed, plots
