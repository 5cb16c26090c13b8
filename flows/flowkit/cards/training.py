"""The train step's card: what happened per epoch and per step, out-of-memory back-offs, resumed epochs."""
from __future__ import annotations

from flowkit.cards import fmt, one_decimal


def training_card(result, config, plots: dict) -> list:
    """Components for the train step's card: what happened, per epoch and per step, from a TrainResult."""
    from metaflow.cards import Image, Markdown, Table

    s = result.summary()
    parts = [Markdown(f"# Training: {s['epochs_run']} of {config.epochs} epoch(s) on {result.device} "
                      f"({result.precision})")]
    figures = ", ".join(f"{name} {s[key]:.4f}" for name, key in (("F1", "best_val_f1"), ("loss", "best_val_loss"),
                                                                  ("accuracy", "best_val_accuracy")) if key in s)
    best = (f"best epoch **{s['best_epoch']}**" + (f" by {result.selection} ({figures})" if "best_val_loss" in s
                                                   else "") + ", its weights kept")
    stop = (f"stopped early (no better {result.selection})" if result.stopped_early
            else f"stopped at the step budget (--max-steps {config.max_steps})" if result.budget_reached
            else "ran all epochs")
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
        rows.append([h["epoch"], fmt(h["train_loss"]), fmt(h.get("val_loss")), fmt(h.get("val_accuracy")),
                     fmt(h.get("val_f1")), one_decimal(h.get("epoch_samples_per_s")),
                     one_decimal(h.get("epoch_seconds")), note])
    parts.append(Table(rows, headers=["epoch", "training loss", "validation loss", "validation accuracy",
                                      "validation F1", "samples/s", "seconds", ""]))
    for name, png in plots.items():
        parts.append(Image(src=png, label=name.removesuffix(".png").replace("_", " ")))
    parts.append(Markdown("**Settings**: " + ", ".join(f"{k} `{v}`" for k, v in config.as_params().items())))
    return parts


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"

