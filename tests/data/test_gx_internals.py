"""The one Great Expectations internal reviewflow uses (steps/data/gx_internals.py) is still there, and works."""
import great_expectations


def test_the_pinned_gx_is_the_one_installed_and_its_batch_hash_threshold_exists():
    from great_expectations.execution_engine import pandas_execution_engine

    from steps.data.gx_internals import PINNED_GX, skip_batch_hashing
    from tests.flow_runs import ROOT

    assert f"great-expectations=={PINNED_GX}" in (ROOT / "requirements.txt").read_text().splitlines()
    assert great_expectations.__version__ == PINNED_GX, "re-check steps/data/gx_internals.py, then move PINNED_GX"
    assert hasattr(pandas_execution_engine, "HASH_THRESHOLD"), (
        "great_expectations.execution_engine.pandas_execution_engine.HASH_THRESHOLD is gone: "
        "steps/data/gx_internals.skip_batch_hashing no longer skips the batch hash")
    skip_batch_hashing()
    assert pandas_execution_engine.HASH_THRESHOLD == 0
