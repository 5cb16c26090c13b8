"""The one Great Expectations internal reviewflow relies on, pinned to the version in requirements.txt.

GX hashes every in-memory pandas batch smaller than `pandas_execution_engine.HASH_THRESHOLD` bytes to make a batch
marker, converting every cell to a Python object: about 0.7 GB and 2 s per million reviews, for a value nobody
reads (ingest fingerprints the data already). GX has no setting for it; a threshold of 0 skips the hash, as GX
itself does for batches above 1 GB. tests/data/test_gx_internals.py fails, naming the attribute, on a GX version
without it.
"""
from __future__ import annotations

PINNED_GX = "1.24.1"


def skip_batch_hashing() -> None:
    """Stop GX from hashing in-memory batches (module-wide; idempotent)."""
    from great_expectations.execution_engine import pandas_execution_engine

    if not hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        raise RuntimeError("great_expectations.execution_engine.pandas_execution_engine.HASH_THRESHOLD is gone "
                           f"(checked against GX {PINNED_GX}); see steps/data/gx_internals.py")
    pandas_execution_engine.HASH_THRESHOLD = 0
