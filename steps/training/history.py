"""The per-optimizer-step curve (loss, learning rate, micro-batch) people look at, kept bounded in size."""
from __future__ import annotations

STEP_HISTORY_POINTS = 1000


class StepHistory:
    """Loss and learning rate per optimizer step, for the curves people look at; bounded in size.

    Every point covers `stride` consecutive steps: the mean loss, the learning rate and micro-batch of its last
    step. When more than `max_points` points would be kept, neighbours are merged and the stride doubles, so a
    run of a million steps keeps between max_points / 2 and max_points points (a few tens of KB).
    """

    def __init__(self, max_points: int = STEP_HISTORY_POINTS):
        self.max_points = max(2, max_points)
        self.stride = 1
        self.step, self.loss, self.learning_rate, self.micro_batch_size = [], [], [], []
        self._open = []  # (step, loss, lr, micro) of the steps not yet folded into a point

    def add(self, step: int, loss: float, learning_rate: float, micro_batch_size: int) -> None:
        self._open.append((step, loss, learning_rate, micro_batch_size))
        if len(self._open) == self.stride:
            self._fold()
        if len(self.step) > self.max_points:
            self._merge_pairs()

    def _fold(self) -> None:
        steps, losses, lrs, micros = zip(*self._open)
        self.step.append(steps[-1])
        self.loss.append(sum(losses) / len(losses))
        self.learning_rate.append(lrs[-1])
        self.micro_batch_size.append(min(micros))
        self._open = []

    def _merge_pairs(self) -> None:
        n = len(self.step) // 2 * 2  # an odd last point stays as it is
        merged_loss = [(self.loss[i] + self.loss[i + 1]) / 2 for i in range(0, n, 2)]
        self.step = self.step[1:n:2] + self.step[n:]
        self.learning_rate = self.learning_rate[1:n:2] + self.learning_rate[n:]
        self.micro_batch_size = [min(self.micro_batch_size[i:i + 2]) for i in range(0, n, 2)] + \
            self.micro_batch_size[n:]
        self.loss = merged_loss + self.loss[n:]
        self.stride *= 2

    def as_dict(self) -> dict:
        """Plain lists (a Metaflow artifact, a checkpoint entry): step, loss, learning_rate, micro_batch_size, stride.
        Steps not yet making up a whole point are included as one shorter point."""
        out = {"step": list(self.step), "loss": list(self.loss), "learning_rate": list(self.learning_rate),
               "micro_batch_size": list(self.micro_batch_size), "stride": self.stride}
        if self._open:
            steps, losses, lrs, micros = zip(*self._open)
            out["step"].append(steps[-1])
            out["loss"].append(sum(losses) / len(losses))
            out["learning_rate"].append(lrs[-1])
            out["micro_batch_size"].append(min(micros))
        return out

    def state(self) -> dict:
        return {**self.as_dict(), "open": [list(o) for o in self._open], "max_points": self.max_points,
                "points": len(self.step)}

    @classmethod
    def from_state(cls, state: dict) -> StepHistory:
        history = cls(state["max_points"])
        points = state["points"]
        history.step, history.loss = state["step"][:points], state["loss"][:points]
        history.learning_rate = state["learning_rate"][:points]
        history.micro_batch_size = state["micro_batch_size"][:points]
        history.stride, history._open = state["stride"], [tuple(o) for o in state["open"]]
        return history
