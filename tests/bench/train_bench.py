"""Training throughput benchmark: reviewflow's engine vs Hugging Face Trainer vs the lab's notebook loop.

    pip install -r requirements-bench.txt     # accelerate, which Trainer needs
    python tests/bench/train_bench.py --data ../shared/data/amazon_review_snippets.csv --epochs 1 --json

Every contender trains the same model from the same weights on the same split (GroupShuffleSplit by
reviewId, test 20%, random_state 0) with batch 16, lr 5e-5, AdamW (weight decay 0.01), linear warmup over 10%
of the steps then linear decay, gradient clipping at 1.0, all weights trained, in its own fresh process
with the same number of threads, in the same precision (`--precision`; `auto` = what reviewflow's
`--precision auto` picks for this model on this machine):

- reviewflow: steps/training/loop.py (length-bucketed batches, dynamic padding, fused AdamW, ...).
- hf_trainer: transformers.Trainer with DataCollatorWithPadding and train_sampling_strategy="group_by_length"
  (its defaults otherwise: fused AdamW); bf16=True / fp16=True for those precisions.
- lab_loop: the notebook's loop: every review padded to max_length (128), DataLoader(shuffle=True),
  torch.optim.AdamW, always fp32 (as the notebook had it).

Each prints one JSON line: contender, precision, train_samples_per_s, samples_per_cpu_s (samples per second of
the process's CPU time: on a shared machine wall time also counts other jobs), real_tokens_per_s (non-pad
tokens trained per second), gflop_per_s (the model's training FLOPs on real tokens per second, see
count_flops), peak_gflop_per_s (this machine's GEMM rate in that precision, measured in the same run with the
same threads, per second of CPU time per thread) and share_of_peak (the training FLOPs per second of CPU time per
thread, against that peak: both immune to other jobs on the machine), peak_rss_mb (the process's peak resident
memory), accuracy and f1 on the test split (scored by the same code for all). Timing covers the training loop
only (model loading, tokenization and scoring excluded). More diagnostics go to stderr.

CPU (default): the packaged MiniLM-L6. `--device cuda`: a DistilBERT-sized encoder (6 layers, dim 768, 12 heads)
with random weights (config only, nothing downloaded), MFU against the GPU's bf16 peak (`--peak-tflops` where
the GPU is not in the table).

`--profile-steps N` runs torch.profiler over N of reviewflow's optimizer steps (after 10 warm-up steps) and prints,
on stderr, a `PROFILE {...}` line: the share of the profiled CPU time per kind of operation (matrix multiplies,
fused attention, optimizer, layer norm, dropout, ...) and the costliest operations. The profiler slows the run, so
take the speed figures from a run without it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
runpy.run_path(str(ROOT / "flows" / "flowkit" / "__init__.py"))  # puts the library on sys.path, as for the flows
from tests.bench.step_profiler import StepProfiler  # noqa: E402

CONTENDERS = ("reviewflow", "hf_trainer", "lab_loop")
JSON_KEYS = ("contender", "precision", "train_samples_per_s", "samples_per_cpu_s", "real_tokens_per_s",
             "gflop_per_s", "peak_gflop_per_s", "share_of_peak", "peak_rss_mb", "accuracy", "f1")
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "GH200": 989.0,
                        "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CSV with reviewText, isPositive, reviewId")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="intra-op threads for every contender (default: $OMP_NUM_THREADS or 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--compile", action="store_true", help="reviewflow with --compile (and Trainer torch_compile)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="precision of reviewflow and Trainer (the lab loop stays fp32); auto: what "
                             "reviewflow's --precision auto picks for this model here")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--rows", type=int, default=0, help="use only the first N rows (quick checks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="profile this many of reviewflow's optimizer steps (after 10 warm-up steps): PROFILE line")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's peak (fp32 on CPU, bf16 on CUDA) in TFLOP/s, when it cannot be derived")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the contenders this many times, round-robin (order reversed every other round), "
                             "and report each one's fastest run: on a shared machine other load only slows down")
    parser.add_argument("--json", action="store_true", help="print only the JSON lines on stdout")
    parser.add_argument("--worker", choices=(*CONTENDERS, "peak"), help=argparse.SUPPRESS)
    parser.add_argument("--peaks", help=argparse.SUPPRESS)  # measured GEMM peaks, JSON, from the parent
    args = parser.parse_args(argv)
    if args.profile_steps and args.device == "cuda":
        parser.error("--profile-steps profiles CPU time per optimizer step; on CUDA the engine reports its steps in "
                     "groups of 20 and the time is spent on the GPU: use torch.profiler with CUDA activities there")
    if args.profile_steps < 0:
        parser.error("--profile-steps must be at least 1 (0: no profile)")
    return args


# --- shared by all contenders ---------------------------------------------------------------------------------
def load_split(args):
    import pandas as pd
    from sklearn.model_selection import GroupShuffleSplit

    frame = pd.read_csv(args.data)
    if args.rows:
        frame = frame.head(args.rows)
    frame = frame.dropna(subset=["reviewText"]).reset_index(drop=True)
    groups = frame.get("reviewId", frame.index)
    train_idx, test_idx = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0).split(frame, groups=groups))
    return frame.iloc[train_idx].reset_index(drop=True), frame.iloc[test_idx].reset_index(drop=True)


def load_model_and_tokenizer(args):
    import torch

    from steps.training.models import load_classifier, load_tokenizer

    tokenizer = load_tokenizer("minilm")  # BERT uncased vocabulary (30,522), the same as DistilBERT's
    torch.manual_seed(args.seed)  # the same initial head (and random encoder on CUDA) for every contender
    if args.device == "cpu":
        return load_classifier("minilm"), tokenizer
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, num_labels=2,
                              attn_implementation="sdpa")
    return DistilBertForSequenceClassification(config), tokenizer


def synchronize(args):
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()


def count_flops(model, lengths) -> float:
    """Training FLOPs on real tokens: 6 x non-embedding parameters x tokens (forward 2, backward 4 per
    parameter and token) + attention scores and mixing, 12 x layers x width x sum(length^2) (fwd + bwd)."""
    import numpy as np

    config = model.config
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    width = getattr(config, "hidden_size", None) or config.dim
    lengths = np.asarray(lengths, dtype=np.float64)
    return 6.0 * non_embedding * lengths.sum() + 12.0 * layers * width * (lengths ** 2).sum()


def measure_gemm_peaks(threads: int, seconds: float = 1.5) -> dict:
    """This machine's matrix-multiply rate per precision, in GFLOP per second of the process's CPU time divided by
    the threads (so other jobs on a shared machine do not count): the best of square GEMMs (1024, 2048) run for
    `seconds` each with `threads` threads, fp32 as is, bf16 as autocast runs it (bf16 inputs)."""
    import torch

    torch.set_num_threads(threads)
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for size in (1024, 2048):
            a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
            a @ b
            runs, started, cpu_started = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - started < seconds:
                a @ b
                runs += 1
            cpu_seconds = (time.process_time() - cpu_started) / threads
            best = max(best, 2 * size ** 3 * runs / cpu_seconds / 1e9)
        peaks[name] = round(best, 1)
    return peaks


def gpu_bf16_peak(args) -> tuple[float, str]:
    import torch

    name = torch.cuda.get_device_name()
    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"{name}: {args.peak_tflops} TFLOP/s (--peak-tflops)"
    for key, tflops in GPU_BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{name}: {tflops} TFLOP/s dense bf16 (data sheet)"
    return 0.0, f"{name}: unknown bf16 peak; pass --peak-tflops"


def score(model, tokenizer, test, args) -> dict:
    from steps.evaluation.evaluate import predict_proba
    from steps.evaluation.metrics import classification_metrics
    from steps.training.tokenize import encode

    tokens = encode(test["reviewText"].tolist(), test["isPositive"].to_numpy(), tokenizer, args.max_length)
    import torch

    probabilities = predict_proba(model, tokens, batch_size=64, device=torch.device(args.device))
    metrics = classification_metrics(tokens.labels, probabilities)
    return {"accuracy": round(metrics["accuracy"], 4), "f1": round(metrics["f1"], 4)}


# --- contenders: each returns (train seconds, extra diagnostics) ----------------------------------------------
def run_reviewflow(model, tokenizer, train, args):
    from steps.training.config import TrainConfig
    from steps.training.loop import train_classifier
    from steps.training.tokenize import encode

    tokens = encode(train["reviewText"].tolist(), train["isPositive"].to_numpy(), tokenizer, args.max_length)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                         device=args.device, compile=args.compile, precision=args.resolved_precision)
    profiler = StepProfiler(args.profile_steps) if args.profile_steps else None
    started = time.perf_counter()
    result = train_classifier(model, tokens, None, config, log=lambda m: print(m, file=sys.stderr),
                              progress="quiet", on_step=profiler.on_step if profiler else None)
    synchronize(args)
    if profiler:
        print("PROFILE " + json.dumps(profiler.summary()), file=sys.stderr, flush=True)
    return time.perf_counter() - started, {"padding_share": round(result.padding_share, 4),
                                           "precision": result.precision}


# Kinds of operation: the first kind with an exact name or a name part that matches an operator's name
# (torch.profiler's CPU op names, lower-cased), in this order.
def run_hf_trainer(model, tokenizer, train, args):
    import tempfile

    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    encoded = tokenizer(train["reviewText"].tolist(), truncation=True, max_length=args.max_length,
                        return_token_type_ids=False)
    dataset = [{"input_ids": ids, "attention_mask": mask, "labels": int(label)}
               for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], train["isPositive"])]
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            num_train_epochs=args.epochs, weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear",
            max_grad_norm=1.0, seed=args.seed, train_sampling_strategy="group_by_length",
            use_cpu=args.device == "cpu", bf16=args.resolved_precision == "bf16",
            fp16=args.resolved_precision == "fp16", torch_compile=args.compile,
            report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                          data_collator=DataCollatorWithPadding(tokenizer))
        started = time.perf_counter()
        trainer.train()
        synchronize(args)
        seconds = time.perf_counter() - started
    return seconds, {"optimizer": str(training_args.optim), "precision": args.resolved_precision}


def run_lab_loop(model, tokenizer, train, args):
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import get_linear_schedule_with_warmup

    device = torch.device(args.device)
    encoded = tokenizer(train["reviewText"].tolist(), truncation=True, padding="max_length",
                        max_length=args.max_length, return_tensors="pt", return_token_type_ids=False)
    labels = torch.tensor(train["isPositive"].to_numpy(), dtype=torch.long)
    loader = DataLoader(TensorDataset(encoded["input_ids"], encoded["attention_mask"], labels),
                        batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    total = len(loader) * args.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    started = time.perf_counter()
    for _ in range(args.epochs):
        for ids, mask, y in loader:
            ids, mask, y = ids.to(device), mask.to(device), y.to(device)
            loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    synchronize(args)
    return time.perf_counter() - started, {"precision": "fp32"}


RUNNERS = {"reviewflow": run_reviewflow, "hf_trainer": run_hf_trainer, "lab_loop": run_lab_loop}


def resolve_precision(args, model) -> str:
    """The precision reviewflow and Trainer train in: --precision, with auto resolved as reviewflow resolves it."""
    import torch

    from steps.training.device import choose_precision, precision_name

    if args.precision != "auto":
        return args.precision
    dtype, why = choose_precision(torch.device(args.device), "auto", model)
    print(f"--precision auto -> {precision_name(dtype)}: {why}", file=sys.stderr)
    return precision_name(dtype)


def worker(args) -> None:
    """One contender in this (fresh) process; prints its JSON line last on stdout."""
    import torch

    from steps.training.tokenize import encode

    torch.set_num_threads(args.threads)
    if args.worker == "peak":
        print(json.dumps(measure_gemm_peaks(args.threads)), flush=True)
        return
    train, test = load_split(args)
    model, tokenizer = load_model_and_tokenizer(args)
    args.resolved_precision = resolve_precision(args, model)
    cpu_started = time.process_time()
    seconds, extra = RUNNERS[args.worker](model, tokenizer, train, args)
    cpu_seconds = time.process_time() - cpu_started  # includes the runner's own tokenization (small)
    lengths = encode(train["reviewText"].tolist(), train["isPositive"].to_numpy(), tokenizer, args.max_length).lengths
    samples, real_tokens = len(train) * args.epochs, int(lengths.sum()) * args.epochs
    flops = count_flops(model, lengths) * args.epochs
    metrics = score(model, tokenizer, test, args)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    precision = extra.pop("precision")
    if args.device == "cuda":
        peak, peak_text = gpu_bf16_peak(args)
        extra["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    elif args.peak_tflops:
        peak, peak_text = args.peak_tflops * 1e12, f"{args.peak_tflops} TFLOP/s (--peak-tflops)"
    else:
        peak = json.loads(args.peaks)[precision] * 1e9 if args.peaks else 0.0
        peak_text = f"measured {precision} GEMM rate, {args.threads} thread(s), this run"
    achieved = flops / seconds
    achieved_per_cpu = flops / (cpu_seconds / args.threads) if args.device == "cpu" else achieved
    diagnostics = {"contender": args.worker, "precision": precision, "train_seconds": round(seconds, 2),
                   "cpu_seconds": round(cpu_seconds, 2), "threads": torch.get_num_threads(),
                   "load_average": os.getloadavg()[0], "train_rows": len(train), "test_rows": len(test),
                   "real_tokens": real_tokens, "training_gflop_on_real_tokens": round(flops / 1e9, 1),
                   "peak": peak_text, **extra}
    print("DIAGNOSTICS " + json.dumps(diagnostics), file=sys.stderr, flush=True)
    line = {"contender": args.worker, "precision": precision, "train_samples_per_s": round(samples / seconds, 2),
            "samples_per_cpu_s": round(samples / cpu_seconds, 2), "real_tokens_per_s": round(real_tokens / seconds, 1),
            "gflop_per_s": round(achieved / 1e9, 1), "peak_gflop_per_s": round(peak / 1e9, 1) if peak else None,
            "share_of_peak": round(achieved_per_cpu / peak, 3) if peak else None,
            "peak_rss_mb": round(peak_rss_mb, 1),
            **metrics}
    print(json.dumps({k: line[k] for k in JSON_KEYS}), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TQDM_DISABLE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    contenders = args.contenders.split(",")
    best, peaks = {}, {}
    for round_number in range(args.repeat):
        if args.device == "cpu" and not args.peak_tflops:  # the machine's GEMM rate now, with the same threads
            measured = subprocess.run([sys.executable, __file__, "--worker", "peak", "--data", args.data,
                                       "--threads", str(args.threads)], env=env, capture_output=True, text=True)
            if measured.returncode != 0:
                print(measured.stderr, file=sys.stderr)
                return measured.returncode
            for name, value in json.loads(measured.stdout.strip().splitlines()[-1]).items():
                peaks[name] = max(peaks.get(name, 0.0), value)  # load only slows a measurement down
            print(f"round {round_number + 1}: GEMM peak GFLOP/s {json.dumps(peaks)}", file=sys.stderr, flush=True)
        for contender in (contenders if round_number % 2 == 0 else contenders[::-1]):
            command = [sys.executable, __file__, "--worker", contender, *(argv if argv is not None else sys.argv[1:]),
                       *(["--peaks", json.dumps(peaks)] if peaks else [])]
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=None if not args.json else
                                  subprocess.PIPE, text=True)
            if done.returncode != 0:
                print(done.stderr or "", file=sys.stderr)
                print(f"{contender} failed (exit {done.returncode})", file=sys.stderr)
                return done.returncode
            if args.json and done.stderr:  # keep the diagnostics, drop the libraries' chatter
                for row in done.stderr.splitlines():
                    if row.startswith(("DIAGNOSTICS ", "PROFILE ")):
                        print(row, file=sys.stderr, flush=True)
            line = json.loads(done.stdout.strip().splitlines()[-1])
            if args.repeat > 1:
                print(f"round {round_number + 1}: {json.dumps(line)}", file=sys.stderr, flush=True)
            if contender not in best or line["train_samples_per_s"] > best[contender]["train_samples_per_s"]:
                best[contender] = line
    lines = [best[c] for c in contenders]
    for line in lines:  # against the best peak of all rounds
        if peaks and line["peak_gflop_per_s"]:
            scale = line["peak_gflop_per_s"] / peaks[line["precision"]]
            line["share_of_peak"] = round(line["share_of_peak"] * scale, 3)
            line["peak_gflop_per_s"] = peaks[line["precision"]]
    for line in lines:
        print(json.dumps(line), flush=True)
    if len(lines) > 1:
        by_name = {line["contender"]: line for line in lines}
        ours = by_name.get("reviewflow")
        for other in ("hf_trainer", "lab_loop"):
            if ours and other in by_name:
                ratio = ours["train_samples_per_s"] / by_name[other]["train_samples_per_s"]
                cpu_ratio = ours["samples_per_cpu_s"] / by_name[other]["samples_per_cpu_s"]
                print(f"reviewflow / {other}: {ratio:.2f}x samples/s ({cpu_ratio:.2f}x per CPU second), accuracy "
                      f"{100 * (ours['accuracy'] - by_name[other]['accuracy']):+.1f} points", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
