"""The code package: remote tasks (Argo Workflows, Kubernetes) import steps/ and schemas/, so they travel with it."""
from metaflow import FlowMutator

from flowkit import PROJECT_ROOT

LIBRARY_PACKAGES = ("steps", "schemas")


class ship_library(FlowMutator):
    """Put steps/ and schemas/ into the flow's code package (Metaflow packages the flow's own folder already)."""

    def add_to_package(self):
        for package in LIBRARY_PACKAGES:
            root = PROJECT_ROOT / package
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    yield str(path), f"{package}/{path.relative_to(root).as_posix()}"
