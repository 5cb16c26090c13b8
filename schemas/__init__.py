"""The data contract: canonical review columns and the Great Expectations suite that checks them.

Both files live beside this module; code and the suite read them from here and nowhere else.
The contract (reviews_contract.json) is the one source of truth for column names, dtypes, label values and
size bounds. The suite names the contract's columns and takes every value it shares with the contract
(`{"$PARAMETER": name}`) from `suite_parameters()`, which reads the contract; tests/data/test_contract.py checks that
the two agree.
"""
import json
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTRACT_PATH = HERE / "reviews_contract.json"
SUITE_PATH = HERE / "reviews_suite.json"


@cache
def load_contract() -> dict:
    """The canonical schema: column names, dtypes, which are required, allowed label values."""
    return json.loads(CONTRACT_PATH.read_text())


# The canonical column names, read from the contract: code names columns through these, never literally.
TEXT_COLUMN: str = load_contract()["text_column"]
LABEL_COLUMN: str = load_contract()["label_column"]
GROUP_COLUMN: str = load_contract()["group_column"]


def load_suite() -> dict:
    """The Great Expectations suite (GX 1.x JSON form) that validates canonical review rows."""
    return json.loads(SUITE_PATH.read_text())


def required_columns() -> list[str]:
    return [name for name, spec in load_contract()["columns"].items() if spec["required"]]


def canonical_columns() -> list[str]:
    return list(load_contract()["columns"])


def label_values() -> list[int]:
    """The label values the contract allows (0 = negative, 1 = positive)."""
    contract = load_contract()
    return list(contract["columns"][contract["label_column"]]["values"])


def missing_markers() -> frozenset[str]:
    """Cell values (trimmed, case-folded) that mean 'missing' in a text or label column."""
    return frozenset(load_contract()["missing_markers"])


def derived_columns() -> dict[str, str]:
    """Columns the suite checks that the validate step computes from canonical columns (name -> meaning)."""
    return dict(load_suite()["meta"].get("derived_columns", {}))


def suite_parameters() -> dict:
    """Values for the suite's `$PARAMETER` placeholders, all read from the contract."""
    contract = load_contract()
    return {"label_values": label_values(), "max_text_chars": contract["max_text_chars"]}
