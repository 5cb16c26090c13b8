"""reviewflow's library: plain functions the Metaflow flows call, one module per pipeline stage.

Nothing here imports Metaflow, and heavy libraries (torch, transformers, mlflow, great_expectations)
are imported inside the functions that need them, so importing a module is cheap.
"""
