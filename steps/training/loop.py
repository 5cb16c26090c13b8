"""The training loop: fine-tune a sequence classifier on tokenized reviews.

    for each epoch:                                   Trainer.run
        for each optimizer step (length-bucketed):    Trainer.train_epoch
            forward/backward its micro-batches        Trainer.optimizer_step
            clip, update, schedule
        validate, keep the best weights, maybe stop   Trainer.end_epoch
        checkpoint                                    Trainer.save_checkpoint
    restore the best epoch's weights

The engine: length-bucketed batches with dynamic padding; AdamW (fused) with linear warmup and decay; gradient
clipping and accumulation; bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing), fp32 on CPU
unless bf16 is asked for; SDPA attention where the model has it; optional torch.compile; per-epoch validation
with early stopping; `--freeze-encoder`; inverse-frequency class weights. The same code runs on CPU and CUDA.

Two things make it hard to lose progress:
- Out of memory (CUDA): the optimizer step that ran out is discarded and redone with half the micro-batch and
  twice the accumulation. The reviews of every optimizer step are fixed by the sampler, so the effective batch,
  the data order and the learning-rate schedule are unchanged.
- Checkpoints: after every epoch the whole training state (steps/training/state.py) goes to a CheckpointStore.
  A retried or resumed job given the same store continues after the last finished epoch; on CPU with a fixed
  seed the continuation is bit-identical to a run that was never interrupted.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager

from steps.runtime import faults, threads
from steps.runtime.errors import ReviewflowError
from steps.training import setup
from steps.training.batching import bucketed_batches, collate, micro_batches, sorted_batches
from steps.training.config import TrainConfig, TrainResult
from steps.training.device import (
    choose_precision,
    free_memory,
    is_out_of_memory,
    pick_device,
    precision_name,
    seed_everything,
)
from steps.training.embedding_grads import RowGradients
from steps.training.first_token import first_token_only
from steps.training.state import TrainingState, cpu_state_dict, resume_key
from steps.training.validation import epoch_score, evaluate_loss

REBALANCE_STEPS = 10  # optimizer steps between looks at how many tasks share the cores (steps/runtime/threads.py)


def train_classifier(
    model,
    train_tokens,
    val_tokens,
    config: TrainConfig,
    on_step: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
    checkpoints=None,
    after_epoch: Callable[[int], None] | None = None,
    before_micro_batch: Callable[[int, int], None] | None = None,
    progress: str | None = None,
    on_epoch: Callable[[dict, bool], None] | None = None,
) -> TrainResult:
    """Fine-tune `model` in place and return what happened; the best epoch's weights are kept.

    checkpoints: a steps.training.checkpoints.CheckpointStore; training resumes from it and saves to it every epoch.
    on_step(step, metrics): per optimizer step (train_loss, learning_rate, micro_batch_size).
    after_epoch(epoch): after an epoch is finished and checkpointed.
    before_micro_batch(step, rows): before every forward pass (tests inject out-of-memory errors here).
    progress: "bar", "lines" (a line every ~10 s) or "quiet" (the epoch lines only); default: steps/runtime/progress.py.
    on_epoch(metrics, last): after each epoch is validated and ranked; `last`: training ends after it anyway (a
    tuner's pruner reads it; raising stops training).
    `val_tokens` may be None: then no validation, no early stopping, and the last epoch is kept.
    """
    config.validate()
    if config.epochs < 1:  # the setting's 0 names a recipe, which only the caller that knows the model can read
        raise ReviewflowError("epochs 0 means the model's recipe: resolve it before training "
                              "(steps.training.auto_model.recipe_values)")
    seed_everything(config.seed)
    trainer = Trainer(model, train_tokens, val_tokens, config, log=log, checkpoints=checkpoints, on_step=on_step,
                      after_epoch=after_epoch, before_micro_batch=before_micro_batch, progress=progress,
                      on_epoch=on_epoch)
    return trainer.run()


class Trainer:
    """One training job: the model, its optimizer and schedule, and where it stands (a TrainingState)."""

    def __init__(self, model, train_tokens, val_tokens, config: TrainConfig, log=print, checkpoints=None,
                 on_step=None, after_epoch=None, before_micro_batch=None, progress=None, on_epoch=None):
        import torch

        self.model, self.train, self.val, self.config = model, train_tokens, val_tokens, config
        self.log, self.checkpoints, self.progress = log, checkpoints, progress
        self.on_step, self.after_epoch, self.before_micro_batch = on_step, after_epoch, before_micro_batch
        self.on_epoch = on_epoch
        self.device = pick_device(config.device)
        self.dtype, self.precision_reason = choose_precision(self.device, config.precision, model)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        if config.freeze_encoder:
            setup.freeze_encoder(model)
        model.to(self.device)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        num_labels = int(getattr(model.config, "num_labels", 2))
        self.class_weights = (setup.inverse_frequency_weights(train_tokens.labels, num_labels)
                              if config.class_weights == "auto" else None)
        self.loss_weight = torch.tensor(self.class_weights, device=self.device) if self.class_weights else None
        self.compiled = config.compile
        self.forward = torch.compile(model, dynamic=True) if config.compile else model
        self.steps_per_epoch = math.ceil(len(train_tokens) / config.effective_batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.budgeted = bool(config.max_steps) and config.max_steps < self.total_steps
        self.budget_seen = 0  # reviews the epoch cut by the budget had trained on (0: it ended on an epoch's end)
        if self.budgeted:  # the budget: the learning-rate schedule ends there too
            self.total_steps = config.max_steps
        self.warmup_steps = int(config.warmup_ratio * self.total_steps)
        self.optimizer = setup.optimizer(model, config, self.device)
        self.scheduler = setup.linear_warmup_decay(self.optimizer, self.warmup_steps, self.total_steps)
        self.state = TrainingState(micro_batch_size=config.batch_size)
        self.row_grads = None  # RowGradients while run() trains on CPU
        self.notes = []  # what the engine did to make steps cheaper, for the log

    # --- the job ---------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        if self.checkpoints is not None:
            self.resume()  # replaces self.state with the checkpoint's
        with self.cheaper_steps():
            self.train_epochs()
        self.model.to("cpu")
        return self.result()

    @contextmanager
    def cheaper_steps(self):
        """Shortcuts for the duration of training: the last layer computes only the token the classifier
        reads (steps/training/first_token.py: the same function; with dropout the same distribution of masks, but
        fewer drawn, so a seed gives another run than an engine without it); on CPU the word embedding's gradient is
        kept as rows (steps/training/embedding_grads.py: exact to float rounding)."""
        probe_rows = sorted_batches(self.train.lengths, 4)[-1]  # the longest reviews: padding is checked too
        ids, mask, _ = collate(self.train, probe_rows, self.device)
        with first_token_only(self.model, {"input_ids": ids, "attention_mask": mask}) as why_not:
            self.notes.append("last layer: first token only" if why_not is None
                              else f"last layer: all tokens ({why_not})")
            why_not = RowGradients.applicable(self.model, self.device, self.compiled)
            self.row_grads = RowGradients(self.model) if why_not is None else None
            self.notes.append("word-embedding gradient: rows" if why_not is None
                              else f"word-embedding gradient: dense ({why_not})")
            try:
                yield
            finally:
                if self.row_grads is not None:
                    self.row_grads.close()
                    self.row_grads = None

    def train_epochs(self) -> None:
        config, state = self.config, self.state
        self.describe()
        while state.epoch < config.epochs and not state.stopped_early and state.steps < self.total_steps:
            started = time.perf_counter()
            metrics = self.train_epoch()
            self.end_epoch(metrics, started)
            if self.checkpoints is not None:
                self.save_checkpoint()
            if self.after_epoch:
                self.after_epoch(state.epoch)
            faults.inject(f"train/after_epoch_{state.epoch}")  # test hook; nothing unless a test sets it
        if self.budgeted and state.steps >= self.total_steps and not state.stopped_early:
            where = (f"after {self.budget_seen} of its {len(self.train)} reviews" if self.budget_seen
                     else "at its end")
            self.log(f"step budget reached: {state.steps} optimizer steps (--max-steps) in epoch {state.epoch} of "
                     f"{config.epochs}, {where}")
        if state.best_weights is not None and state.best_epoch != state.epoch:
            best = state.history[state.best_epoch - 1]
            self.log(f"restoring the weights of epoch {state.best_epoch} (the best {self.selection}: "
                     + ", ".join(f"{k} {best[k]:.4f}" for k in ("val_f1", "val_loss") if k in best) + ")")
            self.model.load_state_dict(state.best_weights)

    def train_epoch(self) -> dict:
        """One pass over the training rows in length-bucketed optimizer steps; returns the epoch's metrics."""
        import torch

        from steps.runtime.progress import Progress

        state, config, lengths = self.state, self.config, self.train.lengths
        epoch = state.epoch + 1
        self.model.train()
        batches = bucketed_batches(lengths, config.effective_batch, seed=config.seed + epoch)
        planned = min(len(batches), self.total_steps - state.steps) if self.budgeted else len(batches)
        progress = Progress(f"train epoch {epoch}/{config.epochs}", planned, "steps", rate_unit="samples",
                            log=self.log, mode=self.progress, finish_line=False)  # end_epoch logs the epoch
        # Step losses stay on the device and are read in groups: one sync per group, not per step, on CUDA.
        group = 1 if self.device.type == "cpu" else 20
        pending, loss_sum, started = [], 0.0, time.perf_counter()

        def report():
            nonlocal loss_sum
            values = torch.stack([loss for _, loss, _, _ in pending]).tolist()
            for (step, _, lr, rows), value in zip(pending, values):
                loss_sum += value * rows
                state.step_history.add(step, value, lr, state.micro_batch_size)
                if self.on_step:
                    self.on_step(step, {"train_loss": value, "learning_rate": lr,
                                        "micro_batch_size": state.micro_batch_size})
            progress.update(len(pending), rated=sum(p[3] for p in pending),
                            note=f"loss {sum(values) / len(values):.4f}")
            pending.clear()

        seen = 0
        try:
            for rows in batches:
                if state.steps >= self.total_steps:  # --max-steps: this epoch ends where the budget does
                    self.budget_seen = seen
                    break
                seen += len(rows)
                step = state.steps + 1
                lr = self.scheduler.get_last_lr()[0]
                loss = self.optimizer_step(rows, step)
                state.steps = step
                state.samples += len(rows)
                state.real_tokens += int(lengths[rows].sum())
                pending.append((step, loss, lr, len(rows)))
                if len(pending) >= group:
                    report()
                if self.device.type == "cpu" and step % REBALANCE_STEPS == 0:
                    threads.rebalance()  # another task came or went: this one's share of the cores changed
            if pending:
                report()
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        state.epoch = epoch
        return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                "epoch_samples_per_s": round(seen / seconds, 2) if seconds else 0.0}

    def optimizer_step(self, rows, step: int):
        """Forward/backward over the micro-batches of one optimizer step, then clip and update.

        Returns the step's loss (a 0-dim tensor: no device sync here). On out-of-memory the step's gradients
        are dropped, the micro-batch is halved and the same rows are run again.
        """
        import torch

        weights = self.class_weights
        denominator = float(sum(weights[y] for y in self.train.labels[rows])) if weights else float(len(rows))
        while True:
            try:
                loss = self.accumulate(rows, denominator, step)
                break
            except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(err):
                    raise
                failed = self.state.micro_batch_size
            self.back_off(failed, step)  # outside `except`: the traceback (and its tensors) is gone by now
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.row_grads is not None:
            self.row_grads.clip(self.trainable, self.config.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss

    def accumulate(self, rows, denominator: float, step: int):
        """Forward and backward each micro-batch of the step's rows; gradients add up in the parameters."""
        import torch

        total = torch.zeros((), device=self.device)
        pad = 8 if self.compiled else 1
        for part in micro_batches(rows, self.state.micro_batch_size):
            if self.before_micro_batch:
                self.before_micro_batch(step, len(part))
            ids, mask, labels = collate(self.train, part, self.device, pad_to_multiple_of=pad)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.forward(input_ids=ids, attention_mask=mask).logits
            # Summed over the micro-batch, divided by the whole step's rows (or class weights): the gradients
            # add up to those of one batch of all the step's rows, whatever the micro-batch.
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=self.loss_weight,
                                                     reduction="sum") / denominator
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
            self.state.padded_tokens += ids.numel()
        return total

    def back_off(self, failed: int, step: int) -> None:
        """After out-of-memory: drop the step's gradients and halve the micro-batch (more accumulation)."""
        self.optimizer.zero_grad(set_to_none=True)
        free_memory(self.device)
        if failed <= 1:
            raise ReviewflowError(
                f"out of memory on {self.device} at optimizer step {step} with a micro-batch of 1 review: the model "
                "does not fit even one review. Use a smaller --max-length or --model, or --freeze-encoder.")
        state = self.state
        state.micro_batch_size = failed // 2
        state.oom_events.append({"epoch": state.epoch + 1, "step": step, "from": failed, "to": state.micro_batch_size})
        self.log(f"out of memory at step {step} with micro-batch {failed}: continuing with micro-batch "
                 f"{state.micro_batch_size} x {self.accumulation} accumulation (effective batch "
                 f"{self.config.effective_batch} and the learning-rate schedule unchanged); redoing step {step}")

    def end_epoch(self, metrics: dict, started: float) -> None:
        """Validate, keep the best weights, decide on early stopping."""
        config, state = self.config, self.state
        if self.val is not None and len(self.val):
            metrics.update(evaluate_loss(self.model, self.val, state.micro_batch_size * 2, self.device, self.dtype,
                                         self.class_weights, progress=dict(log=self.log, mode=self.progress)))
        metrics["epoch_seconds"] = round(time.perf_counter() - started, 2)
        state.history.append(metrics)
        shown = ("train_loss", "val_loss", "val_accuracy", "val_f1")
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in shown)
        self.log(f"epoch {metrics['epoch']}/{config.epochs}: {text}  {metrics['epoch_samples_per_s']:.1f} samples/s  "
                 f"({metrics['epoch_seconds']:.0f} s)")
        score = self.score(metrics)
        if state.best_score is None or score < state.best_score:
            state.best_score, state.stale, state.best_epoch = score, 0, metrics["epoch"]
            state.best_weights = cpu_state_dict(self.model)
        else:
            state.stale += 1
            if config.patience and state.stale >= config.patience:
                state.stopped_early = True
                self.log(f"early stopping: the {self.selection} has not improved for {state.stale} epoch(s)")
        if self.on_epoch:
            last = state.stopped_early or state.epoch >= config.epochs or state.steps >= self.total_steps
            self.on_epoch(dict(metrics), last)

    @property
    def selection(self) -> str:
        """What picks the best epoch, in words."""
        if self.val is None or not len(self.val):
            return "last epoch (no validation rows)"
        binary = int(getattr(self.model.config, "num_labels", 2)) == 2
        return "validation F1, then loss" if self.config.best_epoch_by == "f1" and binary else "validation loss"

    def score(self, metrics: dict) -> list:
        return epoch_score(metrics, self.config.best_epoch_by)

    # --- checkpoints -----------------------------------------------------------------------------------------
    def resume_key(self) -> dict:
        trajectory = self.config.trajectory()
        trajectory.pop("max_steps", None)  # a budget at or above the epochs' steps changes nothing ...
        if self.budgeted:  # ... one below them does (checkpoints from before the setting existed still match)
            trajectory["max_steps"] = self.total_steps
        return resume_key(trajectory, self.train, self.model)

    def save_checkpoint(self) -> None:
        """Save the state; a failed save (storage down, disk full) is logged and training goes on."""
        started, epoch = time.perf_counter(), self.state.epoch
        try:
            self.checkpoints.save(self.state.checkpoint(self.resume_key(), self.model, self.optimizer, self.scheduler,
                                                        self.scaler, self.device))
        except Exception as err:  # noqa: BLE001 - a checkpoint is insurance; losing one must not stop training
            self.log(f"could not save the checkpoint of epoch {epoch} to {self.checkpoints.location} "
                     f"({type(err).__name__}: {err}); training goes on, a restart now would begin from the "
                     "previous checkpoint")
            return
        self.log(f"checkpoint of epoch {epoch} saved to {self.checkpoints.location} "
                 f"({time.perf_counter() - started:.1f} s)")

    def resume(self) -> None:
        """Continue from the newest compatible checkpoint, if there is one."""
        try:
            found = self.checkpoints.load()
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint must not kill the job
            self.log(f"cannot read the checkpoint in {self.checkpoints.location} ({err}); starting from epoch 0")
            return
        if found is None:
            return
        checkpoint, location = found
        expected, theirs = self.resume_key(), checkpoint.get("resume_key") or {}
        if theirs != expected:
            differs = sorted(k for k in expected if theirs.get(k) != expected[k])
            self.log(f"ignoring the checkpoint in {location}: it was made with different {', '.join(differs)}; "
                     "starting from epoch 0")
            return
        self.state = state = TrainingState.restore(checkpoint, self.model, self.optimizer, self.scheduler,
                                                   self.scaler, self.device)
        self.log(f"resuming from checkpoint epoch {state.epoch} ({location}): step {state.steps} of "
                 f"{self.total_steps}, best epoch so far {state.best_epoch}, micro-batch {state.micro_batch_size}")

    # --- what happened ---------------------------------------------------------------------------------------
    @property
    def accumulation(self) -> int:
        return math.ceil(self.config.effective_batch / self.state.micro_batch_size)

    def describe(self) -> None:
        c, s = self.config, self.state
        total = sum(p.numel() for p in self.model.parameters())
        if c.precision == "auto":
            self.log(f"precision auto -> {precision_name(self.dtype)}: {self.precision_reason}")
        self.log(f"training on {self.device} ({precision_name(self.dtype)}, attention {self.attention}"
                 f"{', torch.compile' if self.compiled else ''}): {len(self.train)} reviews, {c.epochs} epoch(s) of "
                 f"{self.steps_per_epoch} steps; batch {c.effective_batch} = micro-batch {s.micro_batch_size} x "
                 f"{self.accumulation} accumulation; {self.warmup_steps} warmup steps of {self.total_steps}"
                 f"{' (the --max-steps budget)' if self.budgeted else ''}; "
                 + "; ".join(self.notes))
        if c.freeze_encoder:
            self.log(f"--freeze-encoder: training only the classification head "
                     f"({sum(p.numel() for p in self.trainable):,} of {total:,} parameters)")
        if self.class_weights:
            self.log("class weights (inverse frequency): " + ", ".join(
                f"{self._label_name(i)} {w:.4f}" for i, w in enumerate(self.class_weights)))

    @property
    def attention(self) -> str:
        return str(getattr(self.model.config, "_attn_implementation", "") or "eager")

    def _label_name(self, index: int) -> str:
        names = getattr(self.model.config, "id2label", None) or {}
        return str(names.get(index, names.get(str(index), index)))

    def result(self) -> TrainResult:
        s, seconds = self.state, self.state.train_seconds
        return TrainResult(
            device=str(self.device), precision=precision_name(self.dtype), history=s.history,
            best_epoch=s.best_epoch, steps=s.steps, train_seconds=seconds,
            samples_per_s=s.samples / seconds if seconds else 0.0,
            real_tokens_per_s=s.real_tokens / seconds if seconds else 0.0,
            padding_share=1 - s.real_tokens / s.padded_tokens if s.padded_tokens else 0.0,
            micro_batch_size=s.micro_batch_size, grad_accum=self.accumulation, oom_backoffs=s.oom_backoffs,
            oom_events=s.oom_events, step_history=s.step_history.as_dict(), resumed_from_epoch=s.resumed_from_epoch,
            resumed_at_step=s.resumed_at_step, stopped_early=s.stopped_early,
            budget_reached=self.budgeted and s.steps >= self.total_steps,
            class_weights=self.class_weights,
            trainable_parameters=sum(p.numel() for p in self.trainable), attention=self.attention,
            compiled=self.compiled, selection=self.selection)
