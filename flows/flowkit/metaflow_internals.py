"""The calls into Metaflow internals that reviewflow needs and Metaflow has no public API for. Only here.

Each is pinned to the Metaflow version in requirements.txt; tests/flows/test_metaflow_internals.py runs a real
flow through every one of them and fails naming the call when an upgrade changes it. Before moving the pin,
look for a public replacement first.

- the datastore a running task writes to (its type, local or s3, and its root): for the resume command a crashed
  step prints, and to keep training checkpoints beside Metaflow's own artifacts. Public code sees only the
  configured default, not a `--datastore` given on the command line.
- how many times @retry reruns the running step (the decorators Metaflow keeps on a step function): a crashed
  step says whether @retry will run it again or prints the resume command.
- a choice type for a Parameter (rejected at parse time, with the allowed values): Metaflow builds its command
  line with its vendored click, whose Choice is the one type `metaflow.Runner` and Argo Workflows both accept.
- where a local run's datastore is: Metaflow looks for a `.metaflow` folder from the current directory upwards
  and creates one in the current directory if there is none; two flows started at once in a fresh directory
  both try to create it and one dies (FileExistsError). Creating it first, idempotently, removes the race.
- rendering a card synchronously: Metaflow renders a task's cards when the task succeeds, and
  `current.card.refresh()` renders in a background process that Metaflow kills when the task fails. A step
  that explains a failure in its card (validate, on bad data) must write it before it raises.
- how a failed step's exception is printed: Metaflow prints any exception that is not its own as "Internal error"
  with a traceback. A ReviewflowError is a problem the user can fix, and its message says what to do; it is
  printed as that message alone. Every other exception keeps Metaflow's "Internal error" and its traceback.
- how artifacts are stored: pickled with protocol 4 (its pickle serializer) and content-addressed. A step that
  reads an artifact stores it again (it is set on the flow then), which costs nothing when the bytes are the same;
  but a pandas frame's pickle changes in its first round trip (same data, other bytes), so a frame stored as built
  was stored twice, the second time by the first step that read it. `settled` stores it as it will be read back
  (tests/flows/test_review_flow.py checks that the reviews are stored once).
"""
from __future__ import annotations

from metaflow import current

PINNED_METAFLOW = "2.19.39"
PICKLE_PROTOCOL = 4  # metaflow/plugins/datastores/serializers/pickle_serializer.py


def datastore_type(flow) -> str:
    """'local' or 's3': the datastore this task writes its artifacts to."""
    return flow._datastore.TYPE


def datastore_root(flow) -> str:
    """Where this run's Metaflow artifacts are: the datastore root (a directory, or s3://...)."""
    return flow._datastore._storage_impl.datastore_root


def render_card_now(card_id: str) -> None:
    """Write the card `card_id` of the running task now, and wait until it is written."""
    current.card[card_id]._card_proc("render_runtime", sync=True)


def retries_of_current_step(flow) -> int:
    """How many times @retry reruns the current step (0 without @retry)."""
    step_function = getattr(type(flow), current.step_name)
    return max([int(d.attributes.get("times", 0)) for d in getattr(step_function, "decorators", [])
                if d.name == "retry"] or [0])


def choice_type(values):
    """A Parameter type that accepts only `values` (strings) when the command line is parsed."""
    from metaflow._vendor import click

    choice = click.Choice(list(values))
    choice.__name__ = "str"  # Argo Workflows records a Parameter's type by its __name__
    return choice


def ensure_local_datastore() -> None:
    """Create the `.metaflow` folder Metaflow would create in the current directory, before it races to.

    Only where Metaflow would create it: no METAFLOW_DATASTORE_SYSROOT_LOCAL, and no `.metaflow` folder in
    this directory or above.
    """
    import os
    from pathlib import Path

    from metaflow.metaflow_config import DATASTORE_LOCAL_DIR, DATASTORE_SYSROOT_LOCAL

    if DATASTORE_SYSROOT_LOCAL:
        return
    here = Path.cwd().resolve()
    if any((folder / DATASTORE_LOCAL_DIR).is_dir() for folder in (here, *here.parents)):
        return
    os.makedirs(here / DATASTORE_LOCAL_DIR, exist_ok=True)


def print_user_errors_plainly(flow_class, record=None) -> None:
    """Print a ReviewflowError that ends this process as its message, without "Internal error" and traceback
    (Metaflow's CLI prints any other exception as before); `record(message)` is called with it too."""
    from metaflow import parameters

    while hasattr(flow_class, "_flow_cls"):  # a flow decorator (FlowMutator) stands in for the FlowSpec class
        flow_class = flow_class._flow_cls
    with parameters.flow_context(flow_class):  # Metaflow's CLI builds its options for the flow it is imported for
        import metaflow.cli as metaflow_cli

    from steps.runtime.errors import ReviewflowError

    original = getattr(metaflow_cli.print_unknown_exception, "__wrapped__", metaflow_cli.print_unknown_exception)

    def print_unknown_exception(ex):
        if not isinstance(ex, ReviewflowError):
            return original(ex)
        message = str(ex)
        metaflow_cli.echo_always(message, indent=True, bold=False, padding_bottom=True)
        if record is not None:
            record(message)

    print_unknown_exception.__wrapped__ = original
    metaflow_cli.print_unknown_exception = print_unknown_exception


def settled(obj):
    """`obj` as a later step reads it back from the datastore (pickled and unpickled once, as Metaflow does), so
    that the bytes Metaflow stores again when that step reads it are the bytes it stored first: one blob."""
    import pickle

    return pickle.loads(pickle.dumps(obj, protocol=PICKLE_PROTOCOL))
