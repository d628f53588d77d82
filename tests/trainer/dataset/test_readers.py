"""Readers: each format, compression, S3, and bad input (counted rows vs. clear file errors)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.api.dataset import Source
from lmforge.trainer.dataset.readers import list_files, read_file, read_text
from lmforge.trainer.errors import InvalidInput

ROWS = [{"text": f"document number {i} about rivers", "url": f"https://a.example.com/{i}"} for i in range(5)]


def _jsonl(rows: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _read(tmp_path: Path, pattern: str, **kw: object) -> list:
    src = Source(name="s", uri=pattern, license="CC0-1.0", **kw)  # type: ignore[arg-type]
    files = list_files([src], [str(tmp_path / pattern)])
    return [d for f in files for d in read_file(f, tmp_path / "scratch")]


@pytest.mark.parametrize(
    "name,writer",
    [
        ("a.jsonl", lambda p, b: p.write_bytes(b)),
        ("a.jsonl.gz", lambda p, b: p.write_bytes(gzip.compress(b))),
        ("a.jsonl.zst", lambda p, b: p.write_bytes(zstandard.ZstdCompressor().compress(b))),
    ],
)
def test_jsonl_plain_gzip_zstd(tmp_path: Path, name: str, writer: object) -> None:
    writer(tmp_path / name, _jsonl(ROWS))  # type: ignore[operator]
    docs = _read(tmp_path, name, url_field="url")
    assert [d.text for d in docs] == [r["text"] for r in ROWS]
    assert [d.url for d in docs] == [r["url"] for r in ROWS]
    assert all(d.problem is None for d in docs)


def test_text_files_one_document_each_and_glob(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    for i in range(3):
        (tmp_path / "t" / f"{i}.txt").write_text(f"text file {i}\nsecond line")
    (tmp_path / "t" / "skip.md.gz").write_bytes(gzip.compress(b"gz text"))
    docs = _read(tmp_path, "t/*.txt")
    assert [d.text for d in docs] == [f"text file {i}\nsecond line" for i in range(3)]
    assert [d.file_index for d in docs] == [0, 1, 2]


def test_parquet_with_custom_fields(tmp_path: Path) -> None:
    table = pa.table({"body": [r["text"] for r in ROWS], "link": [r["url"] for r in ROWS]})
    pq.write_table(table, tmp_path / "p.parquet")
    docs = _read(tmp_path, "p.parquet", text_field="body", url_field="link")
    assert [d.text for d in docs] == [r["text"] for r in ROWS]
    assert docs[2].url == ROWS[2]["url"]


def test_bad_rows_are_counted_not_fatal(tmp_path: Path) -> None:
    data = _jsonl(ROWS[:2]) + b'{"text": "caf\xe9 latin-1"}\n' + b"{not json\n" + b'{"other": 1}\n' + _jsonl(ROWS[2:3])
    (tmp_path / "bad.jsonl").write_bytes(data)
    docs = _read(tmp_path, "bad.jsonl")
    assert [d.problem for d in docs] == [None, None, "undecodable", "malformed", "malformed", None]


def test_empty_file_gives_no_documents(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert _read(tmp_path, "empty.jsonl") == []


@pytest.mark.parametrize(
    "setup,pattern,needle",
    [
        (lambda p: None, "missing/*.jsonl", "matches no file"),
        (lambda p: None, "nothing.jsonl", "no such file"),
        (lambda p: (p / "x.parquet").write_bytes(b"PAR1 this is not parquet"), "x.parquet", "unreadable Parquet"),
        (lambda p: (p / "x.jsonl.gz").write_bytes(b"\x1f\x8b\x08garbage"), "x.jsonl.gz", "corrupt"),
        (lambda p: (p / "x.jsonl.zst").write_bytes(b"garbage" * 5), "x.jsonl.zst", "corrupt zstd"),
        (lambda p: (p / "x.jsonl").write_bytes(_jsonl([{"body": "a"}])), "x.jsonl", "no row has the text field"),
    ],
)
def test_bad_files_raise_invalid_input_naming_the_source(
    tmp_path: Path, setup: object, pattern: str, needle: str
) -> None:
    setup(tmp_path)  # type: ignore[operator]
    with pytest.raises(InvalidInput) as exc:
        _read(tmp_path, pattern)
    assert "source s" in str(exc.value) and needle in str(exc.value)


def test_s3_source_glob_and_missing_bucket(s3_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s3_server.apply_env(monkeypatch)
    bucket = s3_server.create_bucket()
    client = s3_server.client()
    client.put_object(
        Bucket=bucket, Key="corpus/part-0.jsonl.zst", Body=zstandard.ZstdCompressor().compress(_jsonl(ROWS))
    )
    client.put_object(Bucket=bucket, Key="corpus/part-1.jsonl", Body=_jsonl(ROWS[:2]))
    client.put_object(Bucket=bucket, Key="corpus/notes.txt", Body=b"not matched")
    client.put_object(Bucket=bucket, Key="optout.txt", Body=b"bad.example.org\n")
    src = Source(name="s3src", uri=f"s3://{bucket}/corpus/*.jsonl*", license="CC0-1.0")
    files = list_files([src], [src.uri])
    assert [f.location for f in files] == [
        f"s3://{bucket}/corpus/part-0.jsonl.zst",
        f"s3://{bucket}/corpus/part-1.jsonl",
    ]
    docs = [d for f in files for d in read_file(f, tmp_path)]
    assert len(docs) == 7 and docs[0].text == ROWS[0]["text"]
    assert read_text(f"s3://{bucket}/optout.txt", "optOut.files") == "bad.example.org\n"
    missing = Source(name="gone", uri="s3://no-such-bucket-lmforge/x/*.jsonl", license="CC0-1.0")
    with pytest.raises(InvalidInput, match="source gone"):
        list_files([missing], [missing.uri])
