"""The word-embedding matrix's gradient as rows, not as a dense matrix, while training on CPU.

The vocabulary matrix is half of MiniLM's parameters (30,522 x 384 = 11.7M of 22.7M), but a batch of 16
reviews touches a few hundred of its rows. PyTorch's dense embedding backward allocates and zero-fills the
whole 47 MB matrix every step (page faults included), gradient clipping reads it, and zero_grad frees it: on
a CPU that was ~10% of an fp32 step and more of a bf16 one. Here the embedding produces a sparse gradient
(`nn.Embedding(sparse=True)`: only the rows of the batch's tokens); clipping measures and scales those rows
only; then they are written into one dense gradient buffer that lives for the whole job (only the rows of the
previous step are reset), which the fused AdamW reads as usual. The update is AdamW's, unchanged: every row
still gets its moment decay and weight decay.
"""
from __future__ import annotations


class RowGradients:
    """Sparse gradient for the input embedding of `model`; `clip(params, max_norm)` replaces clip_grad_norm_."""

    def __init__(self, model):
        import torch

        self.module = model.get_input_embeddings()
        self.weight = self.module.weight
        self.was_sparse = self.module.sparse
        self.module.sparse = True
        self.buffer = torch.zeros_like(self.weight)  # the dense gradient AdamW reads
        self.rows = None  # rows of the buffer that are not zero

    @classmethod
    def applicable(cls, model, device, compiled: bool) -> str | None:
        """None when row gradients can be used, else why not."""
        import torch

        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if device.type != "cpu":
            return "dense gradients on GPU (cheap there)"
        if compiled:
            return "torch.compile traces the dense embedding backward"
        if not isinstance(embedding, torch.nn.Embedding) or embedding.max_norm is not None:
            return "the input embedding is not a plain nn.Embedding"
        if not embedding.weight.requires_grad:
            return "the input embedding is frozen"
        return None

    def clip(self, params, max_norm: float):
        """Clip all gradients to a total norm of `max_norm` (as torch.nn.utils.clip_grad_norm_), the embedding's
        as rows, then hand the embedding its dense gradient. Returns the total norm before clipping."""
        import torch

        sparse = self.weight.grad
        grads = [p.grad for p in params if p.grad is not None and p is not self.weight]
        if sparse is not None:
            sparse = sparse.coalesce()  # duplicate token rows summed
            rows, values = sparse.indices()[0], sparse.values()
            grads.append(values)
        total = torch.nn.utils.get_total_norm(grads, 2.0)
        coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coefficient)
        if sparse is not None:
            if self.rows is not None:
                self.buffer.index_fill_(0, self.rows, 0.0)
            self.buffer.index_copy_(0, rows, values)
            self.rows = rows
            self.weight.grad = self.buffer
        return total

    def close(self) -> None:
        self.module.sparse = self.was_sparse
        if self.weight.grad is self.buffer:
            self.weight.grad = None
        self.buffer = None
