"""ONNX variants of a trained classifier: fp32 (the same graph as PyTorch's) and a dynamically quantized int8.

The fp32 graph comes from PyTorch's TorchScript-based ONNX exporter (no extra packages, no network), with
dynamic batch and sequence axes; the int8 one from onnxruntime's dynamic quantization (weights int8, activations
quantized per batch at run time), which suits transformer encoders on CPU: most of their time is in MatMul.
Both take `input_ids` and `attention_mask` (int64) and return `logits`.
"""
from __future__ import annotations

from pathlib import Path

OPSET = 17
INPUTS = ("input_ids", "attention_mask")


def export_onnx(classifier_dir: str, target: str | Path) -> Path:
    """The classifier in `classifier_dir` (a save_pretrained directory) as an fp32 ONNX graph at `target`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    example = tokenizer(["an example review", "another, slightly longer example review"], padding=True,
                        return_tensors="pt", return_token_type_ids=False)
    target = Path(target)
    dynamic = {"batch": 0, "sequence": 1}
    with torch.inference_mode():
        torch.onnx.export(model, (example["input_ids"], example["attention_mask"]), str(target),
                          input_names=list(INPUTS), output_names=["logits"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": _axes(dynamic), "attention_mask": _axes(dynamic),
                                        "logits": {0: "batch"}})
    return target


def _axes(dynamic: dict) -> dict:
    return {index: name for name, index in dynamic.items()}


def quantize_int8(source: str | Path, target: str | Path) -> Path:
    """A dynamically quantized (int8 weights) copy of the fp32 graph `source`."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()  # onnxruntime suggests a pre-processing step on the root logger; not needed here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        quiet.setLevel(level)
    return Path(target)
