"""`tests/gpu/check.py --quick` on this machine: every check that can run without a GPU runs and passes (the engine
in two precisions, kill-and-resume bit for bit, ONNX export and the serving choice), and each CUDA-only check is
skipped with its reason, so the script is known to work before a GPU machine is at hand."""
import json
import subprocess
import sys

import pytest
import torch

from tests.flow_runs import ROOT

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine check.py runs in full")


def test_the_gpu_check_runs_what_a_cpu_can_and_says_why_it_skips_the_rest():
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "gpu" / "check.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    status = {}
    for line in lines:
        status.setdefault(line["check"], []).append(line["status"])
    assert status == {"device": ["passed"], "engine": ["passed", "passed"], "compile": ["skipped"],
                      "oom": ["skipped"], "resume": ["passed"], "onnx": ["passed"], "pytest": ["skipped"],
                      "summary": ["passed"]}
    by_check = {line["check"]: line for line in lines}
    assert by_check["resume"]["identical"] and by_check["resume"]["resumed_at_step"] > 0
    assert by_check["onnx"]["max_abs_logit_diff"] < 1e-3 and by_check["onnx"]["serving_choice"] == "onnx-int8"
    assert "needs a CUDA GPU" in by_check["oom"]["reason"] and "needs a CUDA GPU" in by_check["pytest"]["reason"]
    assert {line["precision"] for line in lines if line["check"] == "engine"} == {"fp32", "bf16"}
