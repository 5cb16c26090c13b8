"""Sharded batch scoring (PredictFlow `--shards K`): which records each shard scores, the Parquet parts it writes
while it streams them, and how the parts become the output: a directory of parts with a manifest, or one file.

- **Plan** (`plan_shards`, PredictFlow's start): with at least K input files, each shard takes whole files, the
  largest first to the least loaded shard, so no file is read twice. With fewer files (one big CSV), every shard
  reads every file and scores every K-th chunk of `READ_ROWS` records (chunk g goes to shard g mod K): the reading
  is repeated, the scoring is not.
- **A shard** (`score_shard`) never holds more than one chunk: read, score, append to its current part. Rows keep a
  stable id to join back on: `source_file` and `source_row` (the record's 1-based number in its file, header not
  counted, as in ingest). A shard starts a new part once its part holds `PART_ROWS` rows (so a part may pass it by
  less than a chunk) or when the columns change (a later file with more columns); parts are named after the shard,
  so a shard run again (@retry, `resume`) overwrites its own.
- **The output** (`finish_output`, PredictFlow's join): for a directory, the parts stay where the shards wrote them
  and `manifest.json` is written last (rows, counts, model version, each part's rows, bytes and sha256): a
  directory without a manifest is unfinished. For one file, the parts (staged beside it) are streamed into it in
  input order, converted to its format, and removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from schemas import TEXT_COLUMN, canonical_columns
from steps.runtime import storage
from steps.runtime.errors import ReviewflowError

READ_ROWS = 20_000  # records a shard reads, scores and writes at a time: its memory bound besides the model
SCORE_ROWS = 1_024  # records handed to the model at a time (progress and the inference log follow it)
PART_ROWS = 1_000_000  # rows per part file before a shard starts its next part
ROW_ID = ["source_file", "source_row"]
PREDICTED = ["label", "probability_positive", "unscored_reason", "model_name", "model_version", "top_tokens"]
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "reviewflow-predictions/1"


# ------------------------------------------------------------------------------------------------------- plan


def plan_shards(data: str, count: int) -> list[dict]:
    """The foreach items of PredictFlow: per shard, the inputs it reads and whether it takes every K-th chunk."""
    from steps.data.ingest import text_sources

    if count < 1:
        raise ReviewflowError(f"--shards must be at least 1, got {count}")
    sources = text_sources(data)
    names = [str(s) for s in sources]
    if len(sources) < count:
        return [{"index": k, "of": count, "sources": names, "files": list(range(len(names))), "striped": True}
                for k in range(count)]
    sizes = [s.stat().st_size if isinstance(s, Path) else 1 for s in sources]  # S3 listings: balance by count
    files: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for i in sorted(range(len(sources)), key=lambda i: -sizes[i]):
        k = loads.index(min(loads))
        files[k].append(i)
        loads[k] += sizes[i]
    return [{"index": k, "of": count, "sources": names, "files": sorted(files[k]), "striped": False}
            for k in range(count)]


def _source(name: str):
    if name.startswith("s3://"):
        return storage.S3Object(name)
    return name if name.startswith("sample:") else Path(name)


def shard_chunks(shard: dict, options, read_rows: int = READ_ROWS):
    """The shard's records as ((file index, chunk number), frame): the frame's canonical columns with the row id
    (`source_file`, `source_row`) in front and `unscored_reason` set for records that repeat the header."""
    import pandas as pd

    from steps.data.ingest import text_chunks

    chunk = 0  # counted across files, so that striping spreads small files too
    for i in shard["files"]:
        name = shard["sources"][i]
        for n, (first_row, frame) in enumerate(text_chunks(_source(name), options, read_rows)):
            mine = not shard["striped"] or chunk % shard["of"] == shard["index"]
            chunk += 1
            if mine:
                ids = pd.DataFrame({"source_file": pd.array([name] * len(frame), dtype="string"),
                                    "source_row": range(first_row, first_row + len(frame))})
                yield (i, n), pd.concat([ids, frame.reset_index(drop=True)], axis=1)


def first_chunk_check(data: str, options) -> None:
    """Before any work: the first local input (or the sample) has the text column and readable labels. Inputs on
    S3 are checked by the shards, which read them anyway."""
    from steps.data.ingest import text_chunks, text_sources

    first = text_sources(data)[0]
    if not isinstance(first, storage.S3Object):
        next(text_chunks(first, options, 100), None)


# ------------------------------------------------------------------------------------------------------ parts


def parts_folder(output: str, kind: str, run_id: str) -> str:
    """Where the shards write: the output directory itself, or for one file a staging folder beside it."""
    if kind == "directory":
        return output if output.endswith("/") else output + "/"
    if storage.is_s3(output):
        location = storage.parse_s3(output)
        parent = PurePosixPath(location.key).parent
        key = f"{'' if str(parent) == '.' else str(parent) + '/'}.{PurePosixPath(location.key).name}.parts-{run_id}/"
        return f"s3://{location.bucket}/{key}"
    target = Path(output).expanduser().resolve()
    return str(target.parent / f".{target.name}.parts-{run_id}") + "/"


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PartWriter:
    """A shard's Parquet parts in `folder` (a local directory or an s3:// prefix ending in /), written as its
    chunks arrive: part-<shard>-<n>.parquet, a new one every `part_rows` rows or when the columns change."""

    def __init__(self, folder: str, shard: int, part_rows: int | None = None):
        self.folder, self.shard, self.part_rows = folder, shard, part_rows or PART_ROWS
        self.remote = storage.is_s3(folder)
        self.tmp = tempfile.TemporaryDirectory(prefix="reviewflow-parts-") if self.remote else None
        if not self.remote:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ReviewflowError(f"--output {folder}: cannot write there: {err.strerror or err}") from None
        self.parts: list[dict] = []
        self.writer = self.schema = self.local = None
        self.rows = 0
        self.files: list[str] = []

    def write(self, frame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is not None and (self.rows >= self.part_rows
                                        or not table.schema.equals(self.schema, check_metadata=False)):
            self._close_part()
        if self.writer is None:
            name = f"part-{self.shard:05d}-{len(self.parts):04d}.parquet"
            folder = self.tmp.name if self.remote else self.folder
            self.local = os.path.join(folder, name + ("" if self.remote else ".writing"))
            self.schema, self.rows, self.files = table.schema, 0, []
            self.writer = pq.ParquetWriter(self.local, table.schema)
            self.parts.append({"name": name, "shard": self.shard})
        self.writer.write_table(table)
        self.rows += len(frame)
        for name in frame["source_file"].unique() if len(frame) else ():
            if name not in self.files:
                self.files.append(str(name))

    def _close_part(self) -> None:
        self.writer.close()
        self.writer = None
        part = self.parts[-1]
        part.update(rows=self.rows, bytes=os.path.getsize(self.local), sha256=_sha256(self.local),
                    columns=list(self.schema.names), files=list(self.files),
                    schema=self.schema.remove_metadata().serialize().to_pybytes())  # for the join: no re-read
        target = self.folder + part["name"]
        if self.remote:
            storage.upload_file(self.local, target)
            os.remove(self.local)
        else:
            os.replace(self.local, target)
        part["path"] = target

    def close(self) -> list[dict]:
        if self.writer is not None:
            self._close_part()
        if self.tmp is not None:
            self.tmp.cleanup()
        return self.parts


def score_shard(model, shard: dict, options, resolved, folder: str, text_name: str = "", inference_log=None,
                explain: tuple[int, int] | None = None, read_rows: int = READ_ROWS, log=None) -> dict:
    """Score one shard's records chunk by chunk into Parquet parts in `folder`; returns what the join needs:
    parts, chunk keys with row counts (for input order), `tally` counts, timing and peak memory."""
    import resource

    from steps.lifecycle.predict import add_tallies, score_rows, tally
    from steps.runtime.progress import Progress

    writer, chunks, counts, explain_cost = PartWriter(folder, shard["index"]), [], {}, {}
    started = time.time()
    with Progress(f"predict shard {shard['index'] + 1}/{shard['of']}", None, "reviews",
                  **({"log": log} if log is not None else {})) as progress:
        for key, frame in shard_chunks(shard, options, read_rows):
            pieces = []
            for start in range(0, len(frame), SCORE_ROWS):
                pieces.append(score_rows(model, frame.iloc[start:start + SCORE_ROWS], resolved, inference_log))
                progress.update(len(pieces[-1]))
            scored = _concat(pieces) if pieces else score_rows(model, frame, resolved)
            if explain:
                scored, explain_cost = _explained(model, scored, explain, explain_cost)
            counts = add_tallies(counts, tally(scored))
            if text_name and text_name != TEXT_COLUMN:
                scored = scored.rename(columns={TEXT_COLUMN: text_name})
            writer.write(scored)
            chunks.append([*key, len(scored)])
    return {"index": shard["index"], "parts": writer.close(), "chunks": chunks, "counts": counts,
            "scoring_started": started, "scoring_finished": time.time(), "explain": explain_cost,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _explained(model, scored, explain: tuple[int, int], cost: dict):
    """`scored` with top_tokens for its scored rows (<NA> for the others), and the explanation cost so far."""
    import pandas as pd

    from steps.evaluation.explain import explain_frame

    k, steps = explain
    rows = scored["unscored_reason"].isna().to_numpy()
    column = pd.Series(pd.NA, index=scored.index, dtype="string")
    if rows.any():
        words, this = explain_frame(model, scored.loc[rows, TEXT_COLUMN].astype(str).tolist(), k, steps)
        column[rows] = words
        done = cost.get("explained", 0) + this["explained"]
        cost = {"explained": done, "max_abs_delta": max(cost.get("max_abs_delta", 0.0), this["max_abs_delta"]),
                "seconds_per_review": round((cost.get("seconds_per_review", 0.0) * cost.get("explained", 0)
                                             + this["seconds_per_review"] * this["explained"]) / done, 4)}
    return scored.assign(top_tokens=column), cost


# ----------------------------------------------------------------------------------------------------- output


def output_columns(parts: list[dict], text_name: str = "") -> list[str]:
    """Every column of the parts, in a fixed order: row id, the contract's columns, the predictions."""
    text_name = text_name or TEXT_COLUMN
    seen = {c for part in parts for c in part["columns"]}
    contract = [text_name if c == TEXT_COLUMN else c for c in canonical_columns()]
    return [c for c in ROW_ID + contract + PREDICTED if c in seen]


@contextmanager
def _local(path: str):
    """A local path for reading a part that may live on S3."""
    if storage.is_s3(path):
        with storage.S3Object(path).local_copy() as local:
            yield local
    else:
        yield path


def _batches(parts: list[dict]):
    """A shard's rows as Arrow record batches, part after part."""
    import pyarrow.parquet as pq

    for part in parts:
        with _local(part["path"]) as local:
            yield from pq.ParquetFile(local).iter_batches(batch_size=READ_ROWS)


class _Rows:
    """Take n rows at a time from a stream of record batches."""

    def __init__(self, batches):
        self.batches, self.held = batches, []

    def take(self, n: int):
        import pyarrow as pa

        taken, have = [], 0
        while have < n:
            batch = self.held.pop(0) if self.held else next(self.batches)
            if have + len(batch) > n:
                self.held.insert(0, batch.slice(n - have))
                batch = batch.slice(0, n - have)
            taken.append(batch)
            have += len(batch)
        return pa.Table.from_batches(taken) if taken else None


def in_input_order(results: list[dict]):
    """All shards' rows as Arrow tables, one per chunk, in the order of the input's records."""
    streams = {r["index"]: _Rows(_batches(r["parts"])) for r in results}
    order = sorted((file, n, r["index"], rows) for r in results for file, n, rows in r["chunks"])
    for _, _, shard, rows in order:
        if rows:
            yield streams[shard].take(rows)


def _conform(table, schema):
    """`table` with `schema`'s columns in its order (absent ones as nulls)."""
    import pyarrow as pa

    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _unified_schema(results: list[dict], columns: list[str]):
    import pyarrow as pa

    schemas = [pa.ipc.read_schema(pa.py_buffer(p["schema"])) for r in results for p in r["parts"]]
    unified = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    return pa.schema([unified.field(c) for c in columns])


def _open_text(path: Path):
    """A text handle for CSV/JSON Lines output, compressed by the name's suffix."""
    import bz2
    import gzip
    import io
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)
    return io.TextIOWrapper(opener(path, "wb"), encoding="utf-8", newline="")


def write_single_file(results: list[dict], kind: str, target: Path, columns: list[str]) -> int:
    """Stream every shard's parts into one local file of `kind`, in input order; returns the rows written."""
    import pyarrow.parquet as pq

    schema = _unified_schema(results, columns)
    rows = 0
    if kind == "parquet":
        with pq.ParquetWriter(target, schema) as writer:
            for table in in_input_order(results):
                writer.write_table(_conform(table, schema))
                rows += len(table)
        return rows
    with _open_text(target) as handle:
        if kind == "csv":
            schema.empty_table().to_pandas().to_csv(handle, index=False)  # the header, quoted as the rows are
        for table in in_input_order(results):
            frame = _conform(table, schema).to_pandas(types_mapper=_pandas_type)
            if kind == "csv":
                frame.to_csv(handle, index=False, header=False)
            elif len(frame):
                handle.write(frame.to_json(orient="records", lines=True, force_ascii=False).rstrip("\n") + "\n")
            rows += len(frame)
    return rows


def _pandas_type(arrow_type):
    """Nullable pandas dtypes for integers, so a label of <NA> stays an empty cell and not 1.0/NaN."""
    import pandas as pd
    import pyarrow as pa

    return pd.Int64Dtype() if pa.types.is_integer(arrow_type) else None


def finish_output(results: list[dict], output: str, kind: str, manifest: dict, text_name: str = "") -> dict:
    """The output from the shards' parts: for a directory, `manifest.json` beside them; for one file, the file
    (parts removed). Returns the manifest, completed with the parts or the file."""
    results = sorted(results, key=lambda r: r["index"])
    parts = [p for r in results for p in r["parts"]]
    columns = output_columns(parts, text_name)
    manifest = {"format": MANIFEST_FORMAT, **manifest, "columns": columns,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if kind == "directory":
        manifest["parts"] = [{k: p[k] for k in ("name", "shard", "rows", "bytes", "sha256", "columns", "files")}
                             for p in parts]
        manifest["output"] = output
        _put_text(json.dumps(manifest, indent=2) + "\n", output.rstrip("/") + "/" + MANIFEST)
        return manifest
    if storage.is_s3(output):
        with tempfile.TemporaryDirectory(prefix="reviewflow-output-") as tmp:
            local = Path(tmp) / PurePosixPath(storage.parse_s3(output).key).name
            manifest["file"] = _file_entry(write_single_file(results, kind, local, columns), local)
            manifest["output"] = storage.upload_file(local, output)
    else:  # written beside the target under a hidden name, then renamed: a reader never sees half a file
        target = Path(output).expanduser().resolve()
        staged = target.with_name(f".{target.name}.writing{''.join(target.suffixes[-1:])}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            manifest["file"] = _file_entry(write_single_file(results, kind, staged, columns), staged)
            os.replace(staged, target)
        except OSError as err:
            if err.filename and str(err.filename) not in (str(staged), str(target), str(target.parent)):
                raise  # a part that cannot be read: not a problem of --output
            raise ReviewflowError(f"--output {output}: cannot write there: {err.strerror or err}") from None
        finally:
            staged.unlink(missing_ok=True)  # whatever stopped the writing, no half-written file stays
        manifest["output"] = str(target)
    remove_parts(parts)
    return manifest


def _file_entry(rows: int, path: Path) -> dict:
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def _put_text(text: str, target: str) -> None:
    if storage.is_s3(target):
        with tempfile.TemporaryDirectory(prefix="reviewflow-manifest-") as tmp:
            local = Path(tmp) / MANIFEST
            local.write_text(text)
            storage.upload_file(local, target)
        return
    staged = Path(target).with_name(f".{MANIFEST}.writing")
    staged.write_text(text)
    os.replace(staged, target)


def remove_parts(parts: list[dict]) -> None:
    """Delete staged parts (and their local staging folders, once empty)."""
    folders = set()
    for part in parts:
        if storage.is_s3(part["path"]):
            storage.delete_object(part["path"])
        else:
            Path(part["path"]).unlink(missing_ok=True)
            folders.add(Path(part["path"]).parent)
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass
