"""`train_bench.py --profile-steps N`: torch.profiler over N of the engine's optimizer steps, summarised as the
share of step time per kind of operation."""
from __future__ import annotations

OP_KINDS = (("matrix multiply", {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                                 "aten::linear", "aten::mkldnn_linear"}, ()),
            ("fused attention", set(), ("scaled_dot_product", "flash_attention")),
            ("optimizer", set(), ("adam", "optimizer.")),
            ("layer norm", set(), ("layer_norm",)),
            ("gradient clipping", set(), ("vector_norm", "_foreach_norm", "clamp", "_foreach_mul")),
            ("embedding", set(), ("embedding", "index_select", "index_add", "index_put", "index_copy",
                                  "index_fill")),
            ("dropout", set(), ("dropout", "bernoulli")),
            ("softmax / loss", set(), ("softmax", "nll_loss", "cross_entropy")),
            ("GELU", set(), ("gelu",)),
            ("zero-fill", {"aten::zero_", "aten::fill_", "aten::zeros", "aten::zeros_like"}, ()),
            ("copies and casts", {"aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous", "aten::clone"},
             ()))


def op_kind(name: str) -> str:
    name = name.lower()
    return next((kind for kind, exact, parts in OP_KINDS if name in exact or any(p in name for p in parts)), "other")


class StepProfiler:
    """torch.profiler over `steps` optimizer steps after `warmup` steps, driven by the engine's on_step callback
    (on a CPU, called after every optimizer step, numbered from 1)."""

    def __init__(self, steps: int, warmup: int = 10):
        self.first, self.last, self.profile, self.seen, self.stopped_at = warmup, warmup + steps, None, 0, None

    def on_step(self, step: int, metrics: dict) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.seen = step
        if step == self.first and self.profile is None:
            self.profile = profile(activities=[ProfilerActivity.CPU])
            self.profile.start()
        elif step == self.last and self.profile is not None and self.stopped_at is None:
            self.profile.stop()
            self.stopped_at = step

    def summary(self, top: int = 12) -> dict:
        if self.profile is None:
            return {"note": f"training ended after step {self.seen}, before step {self.first}: nothing profiled"}
        note = None
        if self.stopped_at is None:  # training ended first: what ran since the start counts
            self.profile.stop()
            self.stopped_at = self.seen
            note = f"training ended after step {self.seen}: {self.seen - self.first} steps profiled, not " \
                   f"{self.last - self.first}"
        steps = self.stopped_at - self.first
        if steps < 1:
            return {"note": f"training ended at step {self.seen}: nothing profiled"}
        events = [(e.key, e.self_cpu_time_total) for e in self.profile.key_averages()]
        total = sum(us for _, us in events) or 1.0
        kinds = {}
        for name, us in events:
            kind = op_kind(name)
            kinds[kind] = kinds.get(kind, 0.0) + us
        costliest = sorted(events, key=lambda e: -e[1])[:top]
        summary = {"steps": steps, "cpu_ms_per_step": round(total / 1e3 / steps, 1),
                   "share_by_kind": {k: round(us / total, 3) for k, us in sorted(kinds.items(), key=lambda kv: -kv[1])},
                   "costliest": [[name, round(us / total, 3)] for name, us in costliest]}
        return {**summary, "note": note} if note else summary
