"""`--precision auto`: bf16 on CPUs with bf16 matrix units for models wide enough to gain, fp32 elsewhere."""
import pytest
import torch

from steps.runtime.errors import ReviewflowError
from steps.training import device as device_module
from steps.training.config import TrainConfig
from steps.training.device import choose_precision, cpu_bf16_units, cpu_flags, model_width
from steps.training.loop import train_classifier

CPU = torch.device("cpu")


class Wide:
    def __init__(self, width):
        self.config = type("Config", (), {"hidden_size": width})()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(str(tmp_path / "arm")) == {"fp", "asimd", "bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("flags, capability, width, expected, reason", [
    ({"avx512f", "avx512_bf16"}, "AVX512", 384, "bf16", "this CPU has avx512_bf16 and the model is 384 wide (bench:"),
    ({"avx512f", "amx_bf16", "avx512_bf16"}, "AVX512", 768, "bf16", "this CPU has amx_bf16 and the model is 768"),
    ({"avx512f", "avx512_bf16"}, "AVX512", 32, "fp32", "but the model is 32 wide: bf16 pays off on a CPU from 256"),
    ({"avx2", "fma"}, "AVX2", 384, "fp32", "this CPU has no bf16 matrix units (no amx_bf16 or avx512_bf16 flag"),
    (set(), "DEFAULT", 384, "fp32", "no CPU flags readable from /proc/cpuinfo"),
    ({"avx512_bf16"}, "AVX2", 384, "fp32", "this CPU has avx512_bf16, but PyTorch runs its AVX2 kernels"),
])
def test_auto_on_cpu_follows_the_bf16_units_and_the_model_width(monkeypatch, flags, capability, width, expected,
                                                                  reason):
    monkeypatch.setattr(device_module, "cpu_flags", lambda path="/proc/cpuinfo": flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    dtype, why = choose_precision(CPU, "auto", Wide(width))
    assert (dtype == torch.bfloat16 if expected == "bf16" else dtype is None) and reason in why
    assert choose_precision(CPU, "auto")[0] is None  # without a model (evaluation): fp32 on CPU, as before
    assert choose_precision(CPU, "fp32", Wide(width))[0] is None
    assert choose_precision(CPU, "bf16", Wide(width))[0] == torch.bfloat16
    with pytest.raises(ReviewflowError, match="fp16 needs a CUDA GPU"):
        choose_precision(CPU, "fp16", Wide(width))


def test_model_width_of_bert_and_distilbert_configs(tiny_model_dir):
    from steps.training.models import load_classifier

    assert model_width(load_classifier(str(tiny_model_dir))) == 32  # DistilBERT: config.dim
    assert model_width(Wide(384)) == 384 and model_width(object()) is None


def test_the_engine_logs_what_auto_chose_and_why(tiny_model_dir, tiny_tokenizer):
    """On this machine, whatever its CPU: a 256-wide model trains in bf16 exactly where the CPU has bf16 units, the
    tiny 32-wide one in fp32; the log line says which and why."""
    from transformers import BertConfig, BertForSequenceClassification

    from steps.data.split import split_reviews
    from steps.training.tokenize import tokenize_split
    from tests.fixtures import review_frame

    tokens = tokenize_split(split_reviews(review_frame(80), seed=0).frames(), tiny_tokenizer, max_length=16)
    units, about = cpu_bf16_units()
    torch.manual_seed(0)
    wide = BertForSequenceClassification(BertConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=256,
                                                    num_hidden_layers=1, num_attention_heads=4,
                                                    intermediate_size=512, max_position_embeddings=32))
    for model, width in ((wide, 256), (None, 32)):
        if model is None:
            from steps.training.models import load_classifier

            model = load_classifier(str(tiny_model_dir))
        messages = []
        result = train_classifier(model, tokens["train"], None, TrainConfig(epochs=1, batch_size=16, seed=0),
                                  log=messages.append)
        expected = "bf16" if units and width >= 256 else "fp32"
        line = next(m for m in messages if m.startswith("precision auto -> "))
        assert result.precision == expected and line.startswith(f"precision auto -> {expected}: {about}")
