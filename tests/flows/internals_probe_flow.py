"""A tiny flow that goes through every call of flows/flowkit/metaflow_internals.py (test_metaflow_internals.py)."""
from metaflow import FlowSpec, card, current, retry, step

from flowkit.metaflow_internals import datastore_root, datastore_type, render_card_now, retries_of_current_step


class InternalsProbeFlow(FlowSpec):
    @retry(times=2)
    @step
    def start(self):
        self.datastore_type = datastore_type(self)
        self.datastore_root = datastore_root(self)
        self.retries = retries_of_current_step(self)
        self.next(self.end)

    @card(type="blank", id="probe")
    @step
    def end(self):
        from metaflow.cards import Markdown

        current.card["probe"].append(Markdown("# written before the task failed"))
        render_card_now("probe")
        raise RuntimeError("failing on purpose: only the synchronous render can have written the card")


if __name__ == "__main__":
    InternalsProbeFlow()
