"""`--data s3://...`: objects and prefixes read through boto3 from a real S3 server (SeaweedFS on 127.0.0.1)."""
import gzip
import io
import uuid

import pytest

from steps.data.ingest import load_reviews
from steps.data.mapping import IngestOptions
from steps.runtime import storage
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame


@pytest.fixture
def uploaded(s3_env, tmp_path):
    """The same 120 reviews as a local CSV and, split four ways, as CSV, gzipped CSV, Parquet and JSONL in S3."""
    frame = review_frame(120)
    local = tmp_path / "all.csv"
    frame.to_csv(local, index=False)
    prefix = f"ingest-{uuid.uuid4().hex[:8]}"
    client = storage.s3_client()
    parts = [frame.iloc[i * 30:(i + 1) * 30] for i in range(4)]
    bodies = {
        "a.csv": parts[0].to_csv(index=False).encode(),
        "b.csv.gz": gzip.compress(parts[1].to_csv(index=False).encode()),
        "c.jsonl": parts[3].to_json(orient="records", lines=True).encode(),
        "notes.txt": b"not data",
    }
    buffer = io.BytesIO()
    parts[2].to_parquet(buffer)
    bodies["b2.parquet"] = buffer.getvalue()
    for name, body in bodies.items():
        client.put_object(Bucket=s3_env.bucket, Key=f"{prefix}/{name}", Body=body)
    return f"s3://{s3_env.bucket}/{prefix}", local, frame


def test_a_prefix_of_mixed_files_reads_like_the_local_file(uploaded):
    prefix, local, frame = uploaded
    from_s3 = load_reviews(prefix + "/")
    assert from_s3.files == [f"{prefix}/{n}" for n in ("a.csv", "b.csv.gz", "b2.parquet", "c.jsonl")]
    assert from_s3.fingerprint == load_reviews(str(local)).fingerprint
    assert from_s3.frame["reviewText"].tolist() == frame["reviewText"].tolist()
    assert from_s3.origin["source_file"].astype(str).iloc[-1] == f"{prefix}/c.jsonl"


def test_one_object_and_its_errors(uploaded, s3_env):
    prefix, local, frame = uploaded
    assert len(load_reviews(f"{prefix}/a.csv").frame) == 30
    assert len(load_reviews(f"{prefix}/b2.parquet").frame) == 30
    with pytest.raises(ReviewflowError, match=r"unsupported file type '\.txt'"):
        load_reviews(f"{prefix}/notes.txt")
    with pytest.raises(ReviewflowError, match="no .* objects .* under this prefix"):
        load_reviews(f"s3://{s3_env.bucket}/nothing-here/")
    with pytest.raises(ReviewflowError, match="bucket 'missing-bucket' does not exist"):
        load_reviews("s3://missing-bucket/reviews.csv")


def test_undecodable_bytes_in_an_object_are_reported_with_the_line(s3_env):
    key = f"enc-{uuid.uuid4().hex[:8]}/latin1.csv"
    body = "reviewText,isPositive\nfine,1\ncaf\u00e9 was bad,0\n".encode("latin-1")
    storage.s3_client().put_object(Bucket=s3_env.bucket, Key=key, Body=body)
    with pytest.raises(ReviewflowError, match=r"latin1\.csv: line 3: bytes e9 are not valid utf-8"):
        load_reviews(f"s3://{s3_env.bucket}/{key}")
    decoded = load_reviews(f"s3://{s3_env.bucket}/{key}", options=IngestOptions(encoding="latin-1"))
    assert decoded.frame["reviewText"].tolist() == ["fine", "caf\u00e9 was bad"]


def test_texts_to_score_can_come_from_s3(uploaded):
    from steps.data.ingest import text_chunks, text_sources

    prefix, local, frame = uploaded
    [source] = text_sources(f"{prefix}/a.csv")
    [(first_row, texts)] = list(text_chunks(source))
    assert first_row == 1 and texts["reviewText"].tolist() == frame["reviewText"].iloc[:30].tolist()
