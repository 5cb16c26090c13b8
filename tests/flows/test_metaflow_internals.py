"""Every call into Metaflow internals (flows/flowkit/metaflow_internals.py), through a real flow run: a Metaflow
upgrade that changes one fails here, naming the call."""
import inspect

import pytest

from tests.flow_runs import ROOT, components_in_html, open_run, run_flow

pytestmark = pytest.mark.flow
PROBE = "tests/flows/internals_probe_flow.py"


def test_the_pinned_metaflow_is_the_one_installed():
    import metaflow

    from flowkit.metaflow_internals import PINNED_METAFLOW

    pinned = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("metaflow==")]
    assert pinned == [f"metaflow=={PINNED_METAFLOW}"], "flows/flowkit/metaflow_internals.py names another version"
    assert metaflow.__version__ == PINNED_METAFLOW, (
        f"Metaflow {metaflow.__version__} is installed, the internals were checked against {PINNED_METAFLOW}: "
        "run this file's tests and update PINNED_METAFLOW")


def test_the_card_render_call_keeps_its_signature():
    from metaflow.plugins.cards.component_serializer import CardComponentManager

    assert hasattr(CardComponentManager, "_card_proc"), "current.card[id]._card_proc is gone (render_card_now)"
    params = list(inspect.signature(CardComponentManager._card_proc).parameters)
    assert params[:3] == ["self", "mode", "sync"], f"current.card[id]._card_proc(mode, sync) changed: {params}"


def test_the_exception_printer_is_still_looked_up_at_call_time():
    """print_user_errors_plainly replaces metaflow.cli.print_unknown_exception, which cli.main must call by name;
    tests/flows/test_user_errors.py runs it for real."""
    import importlib.util
    from pathlib import Path

    from metaflow import parameters

    assert hasattr(parameters, "flow_context"), "metaflow.parameters.flow_context is gone (print_user_errors_plainly)"
    source = Path(importlib.util.find_spec("metaflow.cli").origin).read_text()  # importing it needs a flow
    assert "def print_unknown_exception(ex)" in source and "print_unknown_exception(x)" in source, (
        "metaflow.cli.main no longer calls print_unknown_exception (print_user_errors_plainly)")


def test_every_internal_call_works_in_a_real_run(tmp_path):
    from metaflow.cards import get_cards

    run, executing = run_flow(str(ROOT / PROBE), tmp_path)
    assert executing.status == "failed", "the probe's end step fails on purpose"
    run = open_run(run.pathspec, tmp_path)
    start = run["start"].task.data
    assert start.datastore_type == "local", "flow._datastore.TYPE (datastore_type) no longer says 'local'"
    assert start.datastore_root == str(tmp_path / ".metaflow"), (
        f"flow._datastore._storage_impl.datastore_root (datastore_root) gave {start.datastore_root!r}")
    assert start.retries == 2, "the @retry decorator on a step function (retries_of_current_step) is no longer read"
    cards = get_cards(run["end"].task, id="probe")
    texts = [c.get("source", "") for c in components_in_html(cards[0].get())] if len(cards) == 1 else []
    assert "# written before the task failed" in texts, (
        "_card_proc('render_runtime', sync=True) (render_card_now) no longer writes the card of a failing task")
