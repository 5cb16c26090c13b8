"""The data contract: canonical review columns and the Great Expectations suite that checks them.

Both files live beside this module; code and the suite read them from here and nowhere else.
"""
import json
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTRACT_PATH = HERE / "reviews_contract.json"
SUITE_PATH = HERE / "reviews_suite.json"


@lru_cache(maxsize=None)
def load_contract() -> dict:
    """The canonical schema: column names, dtypes, which are required, allowed label values."""
    return json.loads(CONTRACT_PATH.read_text())


def load_suite() -> dict:
    """The Great Expectations suite (GX 1.x JSON form) that validates canonical review rows."""
    return json.loads(SUITE_PATH.read_text())


def required_columns() -> list[str]:
    return [name for name, spec in load_contract()["columns"].items() if spec["required"]]


def canonical_columns() -> list[str]:
    return list(load_contract()["columns"])
