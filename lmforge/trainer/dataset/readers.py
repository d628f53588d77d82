"""Readers: a source's URI (local path/glob or S3 prefix/glob) → its files → documents.

Formats: plain text (one document per file), JSONL (one document per line, `textField`/`urlField`)
and Parquet (same fields, read in record batches); `.gz`/`.zst` are decompressed while streaming,
so no file is ever held in memory whole. A bad *document* (undecodable bytes, malformed JSON, a row
without text) is yielded with `problem` set so the caller counts and skips it; a bad *file* (missing,
corrupt Parquet or compression) raises `InvalidInput` naming the source and the file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import gzip
import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lmforge.api.dataset import Source, SourceFormat
from lmforge.store import StoreError, open_store
from lmforge.trainer.errors import InvalidInput

_GLOB_CHARS = "*?["
_TEXT_EXT = {".txt", ".text", ".md"}
_JSONL_EXT = {".jsonl", ".json", ".ndjson"}
_PARQUET_EXT = {".parquet", ".pq"}


@dataclass(frozen=True)
class InputFile:
    """One file of one source; `index` is its position in the whole dataset's file list, which makes
    document ids (and so dedup's choice of representative) independent of how files are split."""

    source: Source
    location: str
    index: int


@dataclass
class Document:
    """One document as read; `problem` is set (and `text` empty) for a row that must be skipped."""

    text: str
    url: str | None
    source: str
    file_index: int
    row: int
    nbytes: int
    problem: str | None = None


def _has_glob(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def _local_files(source: Source, path: str) -> list[str]:
    if _has_glob(path):
        found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        found = [str(p) for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")]
    elif os.path.isfile(path):
        found = [path]
    else:
        raise InvalidInput(f"source {source.name}: {source.uri}: no such file or directory ({path})")
    if not found:
        raise InvalidInput(f"source {source.name}: {source.uri}: the pattern matches no file")
    return sorted(found)


def _s3_files(source: Source, uri: str) -> list[str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    cut = min((key.find(c) for c in _GLOB_CHARS if c in key), default=len(key))
    listing_prefix = key[:cut].rpartition("/")[0] if _has_glob(key) else key
    try:
        keys = open_store(f"s3://{bucket}").list(listing_prefix)
    except StoreError as exc:
        raise InvalidInput(f"source {source.name}: {source.uri}: {exc}") from None
    if _has_glob(key):
        keys = [k for k in keys if fnmatch.fnmatchcase(k, key)]
    if not keys:
        raise InvalidInput(f"source {source.name}: {source.uri}: no object matches in bucket {bucket!r}")
    return [f"s3://{bucket}/{k}" for k in keys]


def list_files(sources: list[Source], resolved: list[str]) -> list[InputFile]:
    """Every input file of every source, in a stable global order (source order, then sorted)."""
    out: list[InputFile] = []
    for source, uri in zip(sources, resolved, strict=True):
        if uri.startswith("s3://"):
            locations = _s3_files(source, uri)
        else:
            locations = _local_files(source, uri.removeprefix("file://"))
        base = len(out)
        out.extend([InputFile(source, loc, base + i) for i, loc in enumerate(locations)])
    return out


def detect_format(location: str, declared: SourceFormat) -> tuple[SourceFormat, str | None]:
    """(format, compression) of a file from its name, unless the format is declared."""
    name = location.lower()
    compression = None
    for ext, kind in ((".gz", "gzip"), (".zst", "zstd"), (".zstd", "zstd")):
        if name.endswith(ext):
            compression, name = kind, name[: -len(ext)]
            break
    if declared != SourceFormat.AUTO:
        return declared, compression
    ext = os.path.splitext(name)[1]
    if ext in _JSONL_EXT:
        return SourceFormat.JSONL, compression
    if ext in _PARQUET_EXT:
        return SourceFormat.PARQUET, compression
    if ext in _TEXT_EXT or ext == "":
        return SourceFormat.TEXT, compression
    raise InvalidInput(f"{location}: cannot tell the format from the extension {ext!r}; set `format`")


@contextlib.contextmanager
def _local_copy(location: str, scratch: Path) -> Iterator[Path]:
    """A local path for the file: itself, or a temporary download of an S3 object."""
    if not location.startswith("s3://"):
        yield Path(location.removeprefix("file://"))
        return
    bucket, _, key = location.removeprefix("s3://").partition("/")
    scratch.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=scratch, suffix=os.path.basename(key))
    os.close(fd)
    try:
        open_store(f"s3://{bucket}").get_file(key, Path(tmp))
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        raw = open(path, "rb")  # closed with the reader (closefd)
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


def _jsonl(stream: IO[bytes], file: InputFile) -> Iterator[Document]:
    src = file.source
    seen_text = False
    rows = 0
    for row, line in enumerate(stream):
        if not line.strip():
            continue
        rows += 1
        doc = Document("", None, src.name, file.index, row, len(line))
        try:
            obj = json.loads(line)
        except UnicodeDecodeError:
            doc.problem = "undecodable"
            yield doc
            continue
        except ValueError:
            doc.problem = "malformed"
            yield doc
            continue
        text = obj.get(src.text_field) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            doc.problem = "malformed"
            yield doc
            continue
        seen_text = True
        doc.text = text
        if src.url_field and isinstance(obj.get(src.url_field), str):
            doc.url = obj[src.url_field]
        yield doc
    if rows and not seen_text:
        raise InvalidInput(f"source {src.name}: {file.location}: no row has the text field {src.text_field!r}")


def _parquet(path: Path, file: InputFile) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = file.source
    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        if src.text_field not in names:
            raise InvalidInput(
                f"source {src.name}: {file.location}: no column {src.text_field!r} "
                f"(columns: {', '.join(sorted(names))})"
            )
        columns = [src.text_field] + ([src.url_field] if src.url_field and src.url_field in names else [])
        row = 0
        for batch in pf.iter_batches(batch_size=2048, columns=columns):
            texts = batch.column(0).to_pylist()
            urls = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, url in zip(texts, urls, strict=True):
                if isinstance(text, str):
                    yield Document(text, url, src.name, file.index, row, len(text.encode("utf-8", "replace")))
                else:
                    yield Document("", None, src.name, file.index, row, 0, problem="malformed")
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"source {src.name}: {file.location}: unreadable Parquet file: {exc}") from None


def read_file(file: InputFile, scratch: Path) -> Iterator[Document]:
    """The documents of one file, streamed."""
    fmt, compression = detect_format(file.location, file.source.format)
    src = file.source
    with _local_copy(file.location, scratch) as path:
        if fmt == SourceFormat.PARQUET:
            if compression:
                raise InvalidInput(
                    f"source {src.name}: {file.location}: Parquet compresses internally; "
                    "an outer .gz/.zst is not supported"
                )
            yield from _parquet(path, file)
            return
        try:
            with _open_binary(path, compression) as stream:
                if fmt == SourceFormat.JSONL:
                    yield from _jsonl(stream, file)
                    return
                data = stream.read()
                if not data.strip():
                    return
                try:
                    yield Document(data.decode("utf-8"), None, src.name, file.index, 0, len(data))
                except UnicodeDecodeError:
                    yield Document("", None, src.name, file.index, 0, len(data), problem="undecodable")
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidInput(f"source {src.name}: {file.location}: corrupt {compression} stream: {exc}") from None
        except OSError as exc:
            raise InvalidInput(f"source {src.name}: {file.location}: {exc}") from None
        except Exception as exc:
            if type(exc).__name__ == "ZstdError":
                raise InvalidInput(f"source {src.name}: {file.location}: corrupt zstd stream: {exc}") from None
            raise


def read_text(location: str, what: str) -> str:
    """A small side file (opt-out list, word list, evaluation data) as text, local or on S3; `what`
    names the spec field in errors."""
    try:
        if location.startswith("s3://"):
            bucket, _, key = location.removeprefix("s3://").partition("/")
            data = open_store(f"s3://{bucket}").get_bytes(key)
        else:
            data = Path(location.removeprefix("file://")).read_bytes()
        if location.endswith(".gz"):
            data = gzip.decompress(data)
        elif location.endswith((".zst", ".zstd")):
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return data.decode("utf-8")
    except (OSError, StoreError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what}: cannot read {location}: {exc}") from None
