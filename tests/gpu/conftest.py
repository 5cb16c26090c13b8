"""The GPU machine runs this folder alone (`tests/gpu/check.py`: `pytest --confcutdir tests/gpu -m cuda`), without
the suite's conftest and its MLflow/Metaflow-dependent fixtures: only what that bare, offline machine has."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
