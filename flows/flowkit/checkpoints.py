"""Where a training task keeps its epoch checkpoints: in the flow's datastore, beside Metaflow's own tree.

    <datastore root>/reviewflow-checkpoints/<flow>/<run id>/<step>

Written under the task's own run; read from this run first (a @retry of the step), then from the run this one
resumes (`current.origin_run_id`), so a run killed mid-training and resumed goes on from its last epoch.
"""
from __future__ import annotations

from metaflow import current

from flowkit.metaflow_internals import datastore_root, datastore_type

CHECKPOINTS_FOLDER = "reviewflow-checkpoints"


def checkpoint_location(root: str, flow_name: str, run_id: str, step_name: str) -> str:
    return "/".join([root.rstrip("/"), CHECKPOINTS_FOLDER, flow_name, str(run_id), step_name])


def _s3_endpoint(flow) -> str | None:
    if datastore_type(flow) != "s3":
        return None
    from metaflow.metaflow_config import S3_ENDPOINT_URL

    return S3_ENDPOINT_URL


def training_checkpoints(flow):
    """The CheckpointStore of the running task."""
    from steps.training.checkpoints import CheckpointStore

    root = datastore_root(flow)
    own = checkpoint_location(root, current.flow_name, current.run_id, current.step_name)
    origin = current.origin_run_id
    resume_from = [checkpoint_location(root, current.flow_name, origin, current.step_name)] if origin else []
    return CheckpointStore(own, resume_from=resume_from, endpoint_url=_s3_endpoint(flow))


def clear_training_checkpoints(flow, trained_by: str) -> None:
    """Delete the epoch checkpoint of the train task `trained_by` (its pathspec). Called by the step after train:
    by then Metaflow has stored the trained model as train's artifact, which it does only after the train step's
    body returns, so a failure to store it still finds the checkpoint. The checkpoint of a run that a resume
    started from is another run's and stays."""
    from steps.training.checkpoints import CheckpointStore

    flow_name, run_id, step_name = trained_by.split("/")[:3]
    location = checkpoint_location(datastore_root(flow), flow_name, run_id, step_name)
    try:
        CheckpointStore(location, endpoint_url=_s3_endpoint(flow)).clear()
    except Exception as err:  # clean-up only: the run goes on; the file can be deleted by hand
        print(f"could not delete the training checkpoint at {location}: {err}", flush=True)
