"""What reviewflow's flows are built from; the only code besides the flows themselves that imports Metaflow.

    launch.py              run a flow (the process environment Metaflow and the libraries need)
    parameters.py          the settings of steps/settings.py as Metaflow Parameters, and their values
    packaging.py           steps/ and schemas/ in the code package that remote tasks run
    step_runs.py           one MLflow run per step, retries that cannot help, resume hints, fault points
    checkpoints.py         where a training task keeps its epoch checkpoints
    data_steps.py          ingest and validate as ReviewFlow's, for CompareFlow and TuneFlow
    events.py              Argo events, and ReviewFlow run from another flow (Runner)
    metaflow_internals.py  the calls into Metaflow that have no public equivalent (tested by name)
    cards/                 the cards people look at

A flow is run as a script (`python flows/review_flow.py run`), so its own folder is on sys.path but the project
root, where the library lives, is not: this is the one place that adds it.
"""
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))
