"""The train step's CUDA path, proven in one command the day a GPU machine is at hand.

    python tests/gpu/check.py              # on the GPU machine: every check (<= 8 minutes on one H100)
    python tests/gpu/check.py --quick      # tiny sizes, any machine: what can run on a CPU runs (CI does this)

One JSON line per check on stdout ({"check", "status": passed | failed | skipped, figures or "reason"}), and a
non-zero exit if any check failed. It needs only what that machine has: python3 with torch, transformers, onnx,
onnxruntime and pytest, plus this repository (no MLflow, Metaflow, Great Expectations, Hub or packaged weights:
the encoders are random-initialised here, in real sizes).

1. engine      reviewflow's engine fine-tunes MiniLM-L6-, BERT-base- and BERT-large-shaped encoders on synthetic
               token batches (sequence 128) in bf16 and fp16: samples/s, MFU against this card's measured bf16
               matmul peak, peak memory. Target: BERT-base bf16 >= 40% MFU (eager or compiled, the better).
2. compile     the same with --compile (TrainConfig.compile), BERT-base and MiniLM, bf16.
3. oom         a micro-batch far too large for the card: the back-off halves it, keeps the effective batch, finishes.
4. resume      a run killed (SIGKILL) after epoch 1 resumes from its CUDA checkpoint with the same losses, bit for bit,
               as a run never interrupted (deterministic algorithms on).
5. onnx        a classifier trained on CUDA exports to ONNX and scores like PyTorch; the serving choice on a GPU
               puts PyTorch first.
6. pytest      the unit tests marked `cuda` (tests/gpu/test_cuda.py); on a CPU they skip, with their reason.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "flows")]

SHAPES = {  # BertConfig fields: MiniLM-L6 (all-MiniLM-L6-v2's shape), BERT-base, BERT-large
    "minilm-l6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "bert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "bert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
TINY = {"tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}}
ROWS = {"minilm-l6": 16384, "bert-base": 8192, "bert-large": 4096, "tiny": 256}  # ~2-4 s an epoch on an H100
VOCAB, SEQUENCE, BATCH = 30522, 128, 64
MFU_TARGET = 0.40  # BERT-base-shaped, sequence 128, bf16 (published BERT fine-tuning runs: 40-45%)
results: list[dict] = []


def emit(check: str, status: str, **figures) -> None:
    line = {"check": check, "status": status, **figures}
    results.append(line)
    print(json.dumps(line), flush=True)


def quiet(_message: str) -> None:
    pass


def encoder(shape: dict, vocab: int = VOCAB, seed: int = 0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, max_position_embeddings=512, num_labels=2, **shape)
    return BertForSequenceClassification(config)


def synthetic(rows: int, sequence: int, vocab: int = VOCAB, seed: int = 0):
    """Token rows of one length; the label is whether token 5 is in the row's first half (learnable, not trivial)."""
    import numpy as np

    from steps.data.tokens import TokenizedReviews

    rng = np.random.default_rng(seed)
    ids = rng.integers(6, vocab, size=(rows, sequence), dtype=np.int32)
    labels = rng.integers(0, 2, size=rows)
    ids[labels == 1, rng.integers(1, sequence // 2)] = 5
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return TokenizedReviews(ids=ids.ravel(), offsets=np.arange(rows + 1, dtype=np.int64) * sequence,
                            labels=labels.astype(np.int64), pad_token_id=0)


def flops_per_sample(model, sequence: int) -> float:
    """Training FLOPs of one sequence: 6 x non-embedding parameters x tokens + 12 x layers x width x tokens^2."""
    config = model.config
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    return 6.0 * non_embedding * sequence + 12.0 * config.num_hidden_layers * config.hidden_size * sequence ** 2


def matmul_peak(device) -> float:
    """This device's measured matmul FLOP/s (bf16 on CUDA, fp32 on a CPU), the best of a few timed rounds."""
    import torch

    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        sync(device)
        start, count = time.perf_counter(), 10
        for _ in range(count):
            torch.mm(a, b)
        sync(device)
        best = max(best, 2 * size ** 3 * count / (time.perf_counter() - start))
    return best


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def train(shape: dict, rows: int, precision: str, device, compile_: bool = False, epochs: int = 2,
          sequence: int = SEQUENCE, **extra):
    import torch

    from steps.training.config import TrainConfig
    from steps.training.loop import train_classifier

    model = encoder(shape)
    config = TrainConfig(epochs=epochs, batch_size=extra.pop("batch_size", BATCH), learning_rate=5e-5, seed=0,
                         precision=precision, device=device.type, compile=compile_, patience=0, **extra)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    messages = []
    result = train_classifier(model, synthetic(rows, sequence), None, config, log=messages.append, progress="quiet")
    return model, result, messages


def check_engine(args, device, peak: float, compile_: bool = False) -> dict:
    """Train each shape in each precision; the epoch-2 rate (past cuDNN/compile warm-up) per row."""
    import torch

    name = "compile" if compile_ else "engine"
    shapes = TINY if args.quick else ({k: SHAPES[k] for k in ("minilm-l6", "bert-base")} if compile_ else SHAPES)
    precisions = ("bf16",) if compile_ or device.type != "cuda" else ("bf16", "fp16")
    if args.quick and device.type != "cuda":
        precisions = ("fp32", "bf16")
    best = {}
    for shape_name, shape in shapes.items():
        for precision in precisions:
            try:
                model, result, _ = train(shape, ROWS[shape_name], precision, device, compile_)
            except Exception as err:  # noqa: BLE001 - reported as a failed check, the rest still run
                emit(name, "failed", shape=shape_name, precision=precision, reason=f"{type(err).__name__}: {err}")
                continue
            rate = result.history[-1]["epoch_samples_per_s"]
            mfu = flops_per_sample(model, SEQUENCE) * rate / peak
            losses = [h["train_loss"] for h in result.history]
            ok = all(loss == loss and loss < 10 for loss in losses)  # finite, not diverged
            memory = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
            emit(name, "passed" if ok else "failed", shape=shape_name, precision=result.precision, samples_per_s=rate,
                 mfu=round(mfu, 4), peak_memory_gib=memory and round(memory, 2), train_losses=losses,
                 **({} if ok else {"reason": "a training loss is not finite or diverged"}))
            if ok:
                best[(shape_name, precision)] = mfu
    return best


def check_oom(args, device) -> None:
    if device.type != "cuda":
        return emit("oom", "skipped", reason="a real out-of-memory needs a CUDA GPU (on a CPU the back-off is "
                                             "simulated by tests/training/test_train_engine.py)")
    rows, batch = 2048, 2048  # BERT-large at 512 tokens: ~0.4 GB of activations a row, ~800 GB for the batch
    try:
        _, result, messages = train(SHAPES["bert-large"], rows, "bf16", device, epochs=1, sequence=512,
                                    batch_size=batch)
    except Exception as err:  # noqa: BLE001
        return emit("oom", "failed", reason=f"{type(err).__name__}: {err}")
    halved = [e for e in result.oom_events if e["to"] == e["from"] // 2]
    ok = bool(result.oom_events) and len(halved) == len(result.oom_events) and result.steps == rows // batch
    emit("oom", "passed" if ok else "failed", oom_events=result.oom_events, optimizer_steps=result.steps,
         final_micro_batch=result.oom_events[-1]["to"] if result.oom_events else batch,
         log=[m for m in messages if "out of memory" in m][:3],
         **({} if ok else {"reason": "no back-off, or it changed the effective batch"}))


def resume_worker(args) -> None:
    """One process of the resume check: train 2 epochs with checkpoints in args.checkpoints; SIGKILL itself after
    epoch 1 when asked; write the per-step losses to args.out."""
    import torch

    from steps.training.checkpoints import CheckpointStore
    from steps.training.config import TrainConfig
    from steps.training.loop import train_classifier

    torch.use_deterministic_algorithms(True)
    device = torch.device(args.device)
    shape, rows = (TINY["tiny"], 256) if args.quick else (SHAPES["minilm-l6"], 2048)
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=5e-5, seed=0, device=device.type,
                         precision="bf16" if device.type == "cuda" else "fp32", patience=0)

    def after_epoch(epoch: int) -> None:
        if epoch == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    # Deterministic algorithms refuse the fused attention kernels' backward on CUDA: the math kernel is exact.
    with sdpa_kernel([SDPBackend.MATH]) if device.type == "cuda" else nullcontext():
        result = train_classifier(encoder(shape), synthetic(rows, SEQUENCE), synthetic(128, SEQUENCE, seed=1),
                                  config, log=quiet, progress="quiet", checkpoints=CheckpointStore(args.checkpoints),
                                  after_epoch=after_epoch)
    Path(args.out).write_text(json.dumps({"steps": result.step_history.get("step", []),
                                          "losses": result.step_history.get("loss", []),
                                          "resumed_at_step": result.resumed_at_step,
                                          "val_loss": [h.get("val_loss") for h in result.history]}))


def check_resume(args, device) -> None:
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-resume-") as tmp:
        def worker(checkpoints: str, out: str, kill_after: int = 0):
            cmd = [sys.executable, __file__, "--worker", "resume", "--device", device.type, "--checkpoints",
                   checkpoints, "--out", out, "--kill-after", str(kill_after), *(["--quick"] if args.quick else [])]
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

        whole, resumed = Path(tmp, "whole.json"), Path(tmp, "resumed.json")
        first = worker(str(Path(tmp, "a")), str(whole))
        killed = worker(str(Path(tmp, "b")), str(resumed), kill_after=1)
        again = worker(str(Path(tmp, "b")), str(resumed))
        if first.returncode or again.returncode or killed.returncode != -signal.SIGKILL:
            return emit("resume", "failed", reason="a worker failed: " + (first.stderr or killed.stderr
                                                                           or again.stderr)[-1500:])
        a, b = json.loads(whole.read_text()), json.loads(resumed.read_text())
    after = b["resumed_at_step"]
    same = {s: loss for s, loss in zip(a["steps"], a["losses"]) if s > after}
    theirs = {s: loss for s, loss in zip(b["steps"], b["losses"]) if s > after}
    ok = after > 0 and same == theirs and a["val_loss"] == b["val_loss"]
    emit("resume", "passed" if ok else "failed", resumed_at_step=after, steps_compared=len(theirs),
         identical=same == theirs, val_loss=[a["val_loss"], b["val_loss"]],
         **({} if ok else {"reason": "the resumed run's losses differ from the uninterrupted run's"}))


def check_onnx(args, device) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import BertTokenizer

    from steps.serving.onnx_export import export_onnx
    from steps.serving.package import choose_backend

    with tempfile.TemporaryDirectory(prefix="gpu-check-onnx-") as tmp:
        words = [f"w{i}" for i in range(994)]
        Path(tmp, "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        tokenizer = BertTokenizer(vocab=str(Path(tmp, "vocab.txt")))  # transformers 5: not vocab_file=
        shape = TINY["tiny"] if args.quick else SHAPES["minilm-l6"]
        model = encoder(shape, vocab=len(tokenizer))
        from steps.training.config import TrainConfig
        from steps.training.loop import train_classifier

        train_classifier(model, synthetic(256, 32, vocab=len(tokenizer)), None,
                         TrainConfig(epochs=1, batch_size=32, seed=0, device=device.type), log=quiet, progress="quiet")
        model.eval()
        on = next(model.parameters()).device.type
        path = export_onnx(model, Path(tmp, "model.onnx"), tokenizer)
        batch = tokenizer([" ".join(words[i:i + 7 + i % 5]) for i in range(16)], padding=True, return_tensors="np",
                          return_token_type_ids=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {k: v.astype(np.int64) for k, v in batch.items()})[0]
        with torch.inference_mode():
            torch_logits = model(**{k: torch.from_numpy(v).to(device) for k, v in batch.items()}).logits.float().cpu()
    diff = float(np.abs(onnx_logits - torch_logits.numpy()).max())
    parity = {b: {"passed": True, "texts_per_s": 1.0} for b in ("onnx-int8", "onnx", "torch")}
    chosen, why = choose_backend(parity, "auto", gpu=device.type == "cuda")
    expected = "torch" if device.type == "cuda" else "onnx-int8"
    ok = on == device.type and diff < 1e-3 and chosen == expected
    emit("onnx", "passed" if ok else "failed", trained_on=on, max_abs_logit_diff=diff, serving_choice=chosen,
         why=why, **({} if ok else {"reason": f"expected training on {device.type}, diff < 1e-3, {expected} served"}))


def check_pytest() -> None:
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "--confcutdir",
           str(ROOT / "tests" / "gpu"), "-m", "cuda", "-rs", "-q", str(ROOT / "tests" / "gpu")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    if done.returncode == 0 and "passed" not in tail and skipped:
        return emit("pytest", "skipped", summary=tail, reason=skipped[0])
    emit("pytest", "passed" if done.returncode == 0 else "failed", summary=tail,
         **({} if done.returncode == 0 else {"reason": done.stdout[-2000:]}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the script on any machine")
    parser.add_argument("--only", default="", help="comma-separated checks (engine,compile,oom,resume,onnx,pytest)")
    parser.add_argument("--worker", choices=("resume",), help=argparse.SUPPRESS)
    for hidden in ("--device", "--checkpoints", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--kill-after", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        resume_worker(args)
        return 0
    import torch

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name(0) if device.type == "cuda" else "no CUDA GPU: CPU"
    wanted = set(filter(None, args.only.split(","))) or {"engine", "compile", "oom", "resume", "onnx", "pytest"}
    peak = matmul_peak(device)
    emit("device", "passed", card=card, torch=torch.__version__, peak_tflops=round(peak / 1e12, 2),
         peak_dtype="bf16" if device.type == "cuda" else "fp32")
    best = check_engine(args, device, peak) if "engine" in wanted else {}
    if "compile" in wanted:
        if device.type == "cuda":
            best.update({(k[0], "compiled"): v for k, v in check_engine(args, device, peak, compile_=True).items()})
        else:
            emit("compile", "skipped", reason="--compile is measured on CUDA; on a CPU torch.compile needs a C++ "
                                              "toolchain and minutes of compiling for no figure that matters here")
    if device.type == "cuda" and not args.quick and {"engine", "compile"} & wanted:
        mfu = max((v for (shape, kind), v in best.items() if shape == "bert-base" and kind != "fp16"), default=0.0)
        emit("target", "passed" if mfu >= MFU_TARGET else "failed", what="BERT-base bf16 MFU (eager or compiled)",
             mfu=round(mfu, 4), target=MFU_TARGET, **({} if mfu else {"reason": "no BERT-base bf16 run passed"}))
    for name, check in (("oom", check_oom), ("resume", check_resume), ("onnx", check_onnx)):
        if name in wanted:
            check(args, device)
    if "pytest" in wanted:
        check_pytest()
    failed = [r for r in results if r["status"] == "failed"]
    emit("summary", "failed" if failed else "passed", seconds=round(time.perf_counter() - started, 1),
         failed=[f"{r['check']} {r.get('shape', '')}".strip() for r in failed])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
