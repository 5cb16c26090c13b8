"""Where a training task keeps its epoch checkpoints and the classifier it trained: in the flow's datastore, beside
Metaflow's own tree.

    <datastore root>/reviewflow-checkpoints/<flow>/<run id>/<step>/checkpoint.pt
    <datastore root>/reviewflow-models/<flow>/<run id>/<step>/<task id>/attempt-<n>/classifier.tar

Checkpoints are written under the task's own run; read from this run first (a @retry of the step), then from the
run this one resumes (`current.origin_run_id`), so a run killed mid-training and resumed goes on from its last
epoch. The trained classifier stays where its attempt wrote it: the step's artifact names that file and its
SHA-256, a resumed run that clones the step reads the same file, and nothing deletes it.
"""
from __future__ import annotations

from metaflow import current

from flowkit.metaflow_internals import datastore_root, datastore_type

CHECKPOINTS_FOLDER = "reviewflow-checkpoints"
MODELS_FOLDER = "reviewflow-models"


def checkpoint_location(root: str, flow_name: str, run_id: str, step_name: str) -> str:
    return "/".join([root.rstrip("/"), CHECKPOINTS_FOLDER, flow_name, str(run_id), step_name])


def model_path(flow_name: str, run_id: str, step_name: str, task_id: str, attempt: int) -> str:
    """Where a train attempt keeps its classifier, relative to the datastore root."""
    return "/".join([MODELS_FOLDER, flow_name, str(run_id), step_name, str(task_id), f"attempt-{attempt}"])


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
    by then train has kept the trained classifier and Metaflow has stored the artifact that names it, which it
    does only after the train step's body returns, so a failure before that still finds the checkpoint. The
    checkpoint of a run that a resume started from is another run's and stays."""
    from steps.training.checkpoints import CheckpointStore

    flow_name, run_id, step_name = trained_by.split("/")[:3]
    location = checkpoint_location(datastore_root(flow), flow_name, run_id, step_name)
    try:
        CheckpointStore(location, endpoint_url=_s3_endpoint(flow)).clear()
    except Exception as err:  # clean-up only: the run goes on; the file can be deleted by hand
        print(f"could not delete the training checkpoint at {location}: {err}", flush=True)


def store_trained_classifier(flow, blob: bytes) -> dict:
    """Keep the packed classifier of the running task in the datastore; returns what the step stores as its
    artifact (where it is, its size and SHA-256): small, so Metaflow does not gzip the model itself."""
    from steps.training.checkpoints import store_trained

    path = model_path(current.flow_name, current.run_id, current.step_name, current.task_id, current.retry_count)
    return store_trained(blob, datastore_root(flow), path, endpoint_url=_s3_endpoint(flow))


def trained_classifier(flow, classifier) -> bytes:
    """The packed classifier that `store_trained_classifier` kept (checked against its SHA-256), or packed bytes
    as they are (a train step of a run from before it kept them beside the datastore). If the file is gone or
    changed, the error gives the command that trains it again in a new run."""
    from flowkit.step_runs import resume_command
    from steps.training.checkpoints import trained_bytes

    return trained_bytes(classifier, datastore_root(flow), endpoint_url=_s3_endpoint(flow),
                         train_again=f"train it again: {resume_command(flow, 'train')}")
