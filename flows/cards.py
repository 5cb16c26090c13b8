"""Metaflow card content of reviewflow's steps: built from steps/ results, shown with `card view`."""
from __future__ import annotations


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def evaluation_card(evaluation, verdict=None) -> list:
    """Components for the evaluate step's card: metrics, champion comparison, slices and the plots."""
    from metaflow.cards import Image, Markdown, Table

    from steps.evaluate import COMPARED

    m = evaluation.metrics
    parts = [Markdown(f"# Test evaluation\n{m['rows']} test reviews, {m['positive_share']:.1%} positive. "
                      "All numbers come from softmax probabilities of the positive class, threshold 0.5.")]
    if evaluation.comparison:
        c = evaluation.comparison
        rows = [[k, _fmt(m[k]), _fmt(c["champion"][k]), f"{c['delta'][k]:+.4f}"] for k in COMPARED]
        parts.append(Markdown(f"## This model vs champion v{c['champion_version']} (same test rows)"))
        parts.append(Table(rows, headers=["metric", "this model", f"champion v{c['champion_version']}", "delta"]))
        mc = c["mcnemar"]
        parts.append(Markdown(f"{mc['method']}: this model alone right on {mc['challenger_only_right']} rows, "
                              f"champion alone right on {mc['champion_only_right']}; p = {mc['p_value']:.4g}."))
    else:
        parts.append(Table([[k, _fmt(m[k])] for k in COMPARED], headers=["metric", "this model"]))
        parts.append(Markdown(
            f"Champion v{evaluation.champion_version} could not be scored: {evaluation.champion_error}"
            if evaluation.champion_error else "No champion yet: nothing to compare with."))
    if verdict is not None:
        parts.append(Markdown(f"**Promotion gate: {verdict.tags()['gate']}** ({'; '.join(verdict.reasons)})"))
    parts.append(Markdown("## Confusion matrix"))
    parts.append(Table([["actual negative", m["true_negatives"], m["false_positives"]],
                        ["actual positive", m["false_negatives"], m["true_positives"]]],
                       headers=["", "predicted negative", "predicted positive"]))
    parts.append(Markdown("## Accuracy by slice"))
    parts.append(Table([[s["slice"], s["bucket"], s["rows"], f"{s['positive_share']:.2f}", _fmt(s["accuracy"])]
                        for s in evaluation.slices],
                       headers=["slice", "bucket", "rows", "positive share", "accuracy"]))
    for name, png in evaluation.plots.items():
        parts.append(Image(src=png, label=name.removesuffix(".png").replace("_", " ")))
    parts.extend(confident_errors_section(evaluation.confident_errors))
    return parts


ERROR_TEXT_CHARS = 300


def confident_errors_section(errors: list[dict]) -> list:
    from metaflow.cards import Markdown, Table

    names = {0: "negative", 1: "positive"}
    if not errors:
        return [Markdown("## Most confident errors\nNo test review was misclassified.")]
    rows = [[i + 1, e["row"], names.get(e["label"], e["label"]), names.get(e["predicted"], e["predicted"]),
             f"{e['confidence']:.3f}", _short(e["text"], ERROR_TEXT_CHARS)] for i, e in enumerate(errors)]
    return [Markdown(f"## Most confident errors\nThe {len(errors)} misclassified test reviews the model was surest "
                     "of (confidence = the probability it gave its wrong answer). Read these first: wrong labels, "
                     "sarcasm, negation and product words the model over-trusts show up here."),
            Table(rows, headers=["#", "test row", "true label", "predicted", "confidence", "review text"])]


def _short(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def training_card(result, config, plots: dict) -> list:
    """Components for the train step's card: what happened, per epoch and per step, from a TrainResult."""
    from metaflow.cards import Image, Markdown, Table

    s = result.summary()
    parts = [Markdown(f"# Training: {s['epochs_run']} of {config.epochs} epoch(s) on {result.device} "
                      f"({result.precision})")]
    best = (f"best epoch **{s['best_epoch']}**"
            + (f" (validation loss {s['best_val_loss']:.4f}, accuracy {s['best_val_accuracy']:.4f})"
               if "best_val_loss" in s else "") + ", its weights kept")
    stop = "stopped early (no better validation loss)" if result.stopped_early else "ran all epochs"
    parts.append(Markdown(
        f"{best}; {stop}. {s['steps']} optimizer steps in {s['train_seconds']:.0f} s of training: "
        f"**{s['samples_per_s']:.1f} samples/s**, {s['real_tokens_per_s']:,.0f} real tokens/s, "
        f"{s['padding_share']:.1%} padding. Batch {config.effective_batch} = micro-batch "
        f"{s['micro_batch_size']} x {s['grad_accum']} accumulation; {s['trainable_parameters']:,} trainable "
        f"parameters; attention {result.attention}{', torch.compile' if result.compiled else ''}."))
    if result.resumed_from_epoch:
        done, ran = result.resumed_from_epoch, s["epochs_run"]
        parts.append(Markdown(
            f"**Resumed**: {_epochs(1, done)} ({result.resumed_at_step} steps) came from the checkpoint of an "
            f"earlier attempt (a @retry or `resume`); this attempt trained {_epochs(done + 1, ran)} (the earlier "
            "epochs are shaded grey in the plots)." if ran > done else
            f"**Resumed**: all {_epochs(1, done)} came from the checkpoint of an earlier attempt."))
    else:
        parts.append(Markdown("Started from scratch (no checkpoint of an earlier attempt)."))
    if result.oom_events:
        parts.append(Markdown(f"## Out-of-memory back-offs: {len(result.oom_events)}\nEach one redid its "
                              "optimizer step with half the micro-batch and twice the accumulation: the effective "
                              "batch and the learning-rate schedule stayed the same."))
        parts.append(Table([[e["epoch"], e["step"], e["from"], e["to"]] for e in result.oom_events],
                           headers=["epoch", "step", "micro-batch before", "micro-batch after"]))
    else:
        parts.append(Markdown("No out-of-memory back-offs."))
    parts.append(Markdown("## Per epoch"))
    rows = []
    for h in result.history:
        note = ", ".join(n for n in ("best" if h["epoch"] == result.best_epoch else "",
                                     "from checkpoint" if h["epoch"] <= result.resumed_from_epoch else "") if n)
        rows.append([h["epoch"], _fmt(h["train_loss"]), _fmt(h.get("val_loss")), _fmt(h.get("val_accuracy")),
                     _one_decimal(h.get("epoch_samples_per_s")), _one_decimal(h.get("epoch_seconds")), note])
    parts.append(Table(rows, headers=["epoch", "training loss", "validation loss", "validation accuracy",
                                      "samples/s", "seconds", ""]))
    for name, png in plots.items():
        parts.append(Image(src=png, label=name.removesuffix(".png").replace("_", " ")))
    parts.append(Markdown("**Settings**: " + ", ".join(f"{k} `{v}`" for k, v in config.as_params().items())))
    return parts


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _one_decimal(value) -> str:
    return "" if value is None else f"{value:,.1f}"


def history_card(name: str, entries: list[dict], champion: int | None) -> list:
    """Components for PromoteFlow's card: the champion and the audit trail, newest first."""
    from metaflow.cards import Markdown, Table

    rows = [[e.get("seq"), e.get("time"), e.get("user"), e.get("action"),
             "-" if e.get("from_version") is None else f"v{e['from_version']}", f"v{e.get('to_version')}",
             e.get("gate", ""), e.get("metaflow_run", ""), e.get("reason", "")] for e in reversed(entries)]
    return [Markdown(f"# {name}: champion {'none' if champion is None else f'v{champion}'}"),
            Table(rows, headers=["#", "time (UTC)", "user", "action", "from", "to", "gate", "Metaflow run",
                                 "reason"])]
