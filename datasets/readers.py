"""Log readers: JSONL (also .gz), Parquet and CSV, in bounded chunks, to typed frames.

Every reader yields :class:`Chunk` objects: ``rows`` holds the records that parsed and have
the contract's types (plus ``_line``, the 1-based line or row number in the source file);
``rejected`` holds the records that did not, each with its reason. Value checks (sizes,
ranges, NaN) happen later, in :mod:`datasets.validate`, on typed columns.

JSONL has a fast path and an exact path. The fast path parses a whole block with polars
against the contract schema; it is taken only when the block provably holds nothing the
schema would silently swallow (an unknown key, a blank line). Anything else - a syntax
error, NaN, a wrong type, an unknown field - sends the block down the exact path, which
parses line by line and says what is wrong with each bad line. A false alarm only costs
speed; a bad record never slips through.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from datasets.schema import ALL_COLUMNS, REQUIRED_COLUMNS, DatasetSpec
from datasets.storage import FileSystem

BLOCK_BYTES = 32 << 20
"""JSONL bytes parsed at once: big enough to amortize, small enough to bound memory."""
ROWS_PER_BATCH = 65_536
"""Rows per batch for Parquet and CSV sources."""
RAW_LIMIT = 2_000
"""Characters of an offending record kept in the quarantine table."""

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES

REJECT_SCHEMA = {"_line": pl.Int64, "reason": pl.String, "raw": pl.String}


def source_format(uri: str) -> str | None:
    """``jsonl``, ``parquet`` or ``csv`` from the file name; None for other files."""
    name = uri.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    return None


def input_schema(spec: DatasetSpec) -> dict[str, pl.DataType]:
    """Polars dtypes the readers produce; value ranges are checked later."""
    return {
        "episode_id": pl.String(),
        "step": pl.Int64(),
        "agent_id": pl.String(),
        "obs": pl.List(pl.Float32()),
        "action": pl.Int64() if spec.action.discrete else pl.List(pl.Float32()),
        "reward": pl.Float64(),
        "terminated": pl.Boolean(),
        "truncated": pl.Boolean(),
        "state": pl.List(pl.Float32()),
        "action_mask": pl.List(pl.Boolean()),
        "policy_id": pl.String(),
        "timestamp": pl.Float64(),
        "info": pl.String(),
    }


@dataclass
class Chunk:
    """Records of one block of one source: typed ``rows`` and ``rejected`` ones."""

    rows: pl.DataFrame
    """Contract columns with :func:`input_schema` types, plus ``_line``."""
    rejected: pl.DataFrame
    """``_line``, ``reason``, ``raw`` (the record as text, truncated)."""

    @property
    def read(self) -> int:
        return self.rows.height + self.rejected.height


def _rejects(lines: list[int], reasons: list[str], raws: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"_line": lines, "reason": reasons, "raw": [r[:RAW_LIMIT] for r in raws]},
        schema=REJECT_SCHEMA,
    )


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECT_SCHEMA)


class HashingReader(io.RawIOBase):
    """Passes bytes through while hashing them, so a file is checksummed as it is parsed."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        self.nbytes += len(data)
        return data

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_source(fs: FileSystem, uri: str) -> HashingReader:
    return HashingReader(fs.open_read(uri))


# -- JSONL ---------------------------------------------------------------------------------


def iter_jsonl(stream: BinaryIO, spec: DatasetSpec, gz: bool) -> Iterator[Chunk]:
    """Chunks of a JSON-lines stream; line numbers count every line, blank ones included."""
    reader: BinaryIO = gzip.GzipFile(fileobj=stream) if gz else stream  # type: ignore[assignment]
    schema = input_schema(spec)
    first_line = 1
    tail = b""
    while True:
        data = reader.read(BLOCK_BYTES)
        if not data:
            break
        block = tail + data
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # no newline yet: keep reading (one very long line)
            tail = block
            continue
        block, tail = block[:cut], block[cut:]
        n_lines = block.count(b"\n")
        yield _parse_block(block, n_lines, first_line, schema, spec)
        first_line += n_lines
    if tail.strip():
        yield _parse_block(tail + b"\n", 1, first_line, schema, spec)


def _parse_block(
    block: bytes, n_lines: int, first_line: int, schema: dict[str, pl.DataType], spec: DatasetSpec
) -> Chunk:
    fast = _parse_block_fast(block, n_lines, schema)
    if fast is not None:
        fast = fast.with_columns(
            pl.int_range(first_line, first_line + n_lines, dtype=pl.Int64).alias("_line")
        )
        return Chunk(fast, empty_rejects())
    return _parse_block_exact(block, first_line, schema, spec)


def _parse_block_fast(block: bytes, n_lines: int, schema: dict) -> pl.DataFrame | None:
    """Parse with polars, or None when the block needs the line-by-line path."""
    try:
        frame = pl.read_ndjson(io.BytesIO(block), schema=schema)
    except Exception:  # syntax error, NaN, a value of the wrong type: go exact
        return None
    if frame.height != n_lines:  # blank lines: the exact path keeps line numbers right
        return None
    # Polars drops keys that are not in the schema. Every key in JSON is a string directly
    # followed by ':' (optionally after whitespace), so count '":' and compare with the
    # values polars found; more colons than values means an unknown key (or a ':' inside
    # a string value, a harmless false alarm), and the block goes the exact path.
    buf = np.frombuffer(block, dtype=np.uint8)
    colons = np.flatnonzero(buf == 58)  # ':'
    colons = colons[colons > 0]
    before = buf[colons - 1]
    if np.any((before == 32) | (before == 9) | (before == 13)):  # whitespace before ':'
        return None
    keys = int(np.count_nonzero(before == 34))  # '"'
    values = frame.height * frame.width - sum(frame.null_count().row(0))
    if keys == values:
        return frame
    # Explicit nulls are keys without a value; count them before giving up.
    explicit_nulls = sum(block.count(f'"{c}":null'.encode()) for c in ALL_COLUMNS)
    if keys == values + explicit_nulls:
        return frame
    return None


_EXPECTED = {
    "episode_id": "a string",
    "step": "an integer",
    "agent_id": "a string",
    "obs": "a list of numbers",
    "reward": "a number",
    "terminated": "true or false",
    "truncated": "true or false",
    "state": "a list of numbers or null",
    "action_mask": "a list of booleans or null",
    "policy_id": "a string or null",
    "timestamp": "a number (unix seconds) or null",
    "info": "a JSON object, a string or null",
}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_number_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_number(x) for x in v)


def _coerce_field(name: str, value: Any, discrete: bool) -> tuple[bool, Any]:
    """(ok, value in the column's Python type) for one JSON value of a known field."""
    if name in ("episode_id", "agent_id"):
        if isinstance(value, str):
            return True, value
        if isinstance(value, int) and not isinstance(value, bool):
            return True, str(value)
        return False, None
    if name == "step":
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if name in ("obs", "state"):
        if value is None and name == "state":
            return True, None
        return _is_number_list(value), value
    if name == "action":
        if discrete:
            return (isinstance(value, int) and not isinstance(value, bool)), value
        return _is_number_list(value), value
    if name in ("reward", "timestamp"):
        if value is None and name == "timestamp":
            return True, None
        return _is_number(value), value
    if name in ("terminated", "truncated"):
        return isinstance(value, bool), value
    if name == "action_mask":
        if value is None:
            return True, None
        ok = isinstance(value, list) and all(isinstance(x, bool) or x in (0, 1) for x in value)
        return ok, [bool(x) for x in value] if ok else None
    if name == "policy_id":
        return (value is None or isinstance(value, str)), value
    if name == "info":
        if value is None or isinstance(value, str):
            return True, value
        if isinstance(value, dict | list):
            try:
                return True, json.dumps(value, allow_nan=False)
            except ValueError:
                return False, None
        return False, None
    raise AssertionError(name)


def _finite_float(v: float) -> float:
    return v if math.isfinite(v) else float("nan")


def _parse_block_exact(
    block: bytes, first_line: int, schema: dict[str, pl.DataType], spec: DatasetSpec
) -> Chunk:
    """Line by line: every bad line gets its own reason; good lines become typed rows."""
    discrete = spec.action.discrete
    known = set(ALL_COLUMNS)
    columns: dict[str, list] = {name: [] for name in ALL_COLUMNS}
    good_lines: list[int] = []
    bad_lines: list[int] = []
    reasons: list[str] = []
    raws: list[str] = []

    def reject(line_no: int, reason: str, raw: str) -> None:
        bad_lines.append(line_no)
        reasons.append(reason)
        raws.append(raw)

    for offset, raw_line in enumerate(block.split(b"\n")[:-1]):
        line_no = first_line + offset
        text = raw_line.decode("utf-8", errors="replace").strip()
        if not text:
            continue  # a blank line is not a record
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            reject(line_no, f"unparseable JSON: {exc.msg} at column {exc.colno}", text)
            continue
        if not isinstance(record, dict):
            reject(line_no, f"not a JSON object (got {type(record).__name__})", text)
            continue
        unknown = sorted(set(record) - known)
        if unknown:
            reject(line_no, f"unknown field(s): {', '.join(unknown)}", text)
            continue
        missing = [c for c in REQUIRED_COLUMNS if record.get(c) is None]
        if missing:
            reject(line_no, f"missing field(s): {', '.join(missing)}", text)
            continue
        row: dict[str, Any] = {}
        problem = None
        for name in ALL_COLUMNS:
            ok, value = _coerce_field(name, record.get(name), discrete)
            if not ok:
                what = _EXPECTED.get(name) or ("an integer" if discrete else "a list of numbers")
                got = type(record.get(name)).__name__
                problem = f"wrong type for '{name}': expected {what}, got {got}"
                break
            row[name] = value
        if problem:
            reject(line_no, problem, text)
            continue
        for name in ALL_COLUMNS:
            columns[name].append(row[name])
        good_lines.append(line_no)

    rows = pl.DataFrame(columns, schema=schema, strict=False)
    rows = rows.with_columns(pl.Series("_line", good_lines, dtype=pl.Int64))
    return Chunk(rows, _rejects(bad_lines, reasons, raws))


# -- Parquet and CSV -----------------------------------------------------------------------


def _typed_from_table(frame: pl.DataFrame, first_row: int, spec: DatasetSpec) -> Chunk:
    """Coerce a columnar batch to the contract types; rows that do not fit are rejected."""
    schema = input_schema(spec)
    lines = pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64, eager=True)
    unknown = sorted(set(frame.columns) - set(ALL_COLUMNS))
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if unknown or missing:
        reason = (
            f"unknown column(s): {', '.join(unknown)}"
            if unknown
            else f"missing column(s): {', '.join(missing)}"
        )
        raw = [json.dumps(r, default=str) for r in frame.head(frame.height).to_dicts()]
        return Chunk(
            pl.DataFrame(schema={**schema, "_line": pl.Int64}),
            _rejects(lines.to_list(), [reason] * frame.height, raw),
        )
    out = {}
    wrong = []
    for name, dtype in schema.items():
        if name not in frame.columns:
            out[name] = pl.Series(name, [None] * frame.height, dtype=dtype)
            continue
        col = frame[name]
        casted = _cast(col, dtype)
        out[name] = casted
        bad = casted.is_null() & col.is_not_null()
        if isinstance(dtype, pl.List) and casted.dtype == dtype:
            bad = bad | (casted.list.eval(pl.element().is_null()).list.any().fill_null(False))
        wrong.append(pl.when(bad).then(pl.lit(f"wrong type for '{name}'")).alias(name))
    typed = pl.DataFrame(out).with_columns(lines.alias("_line"))
    reason = typed.select(pl.coalesce(wrong) if wrong else pl.lit(None)).to_series()
    bad_mask = reason.is_not_null()
    if not bad_mask.any():
        return Chunk(typed, empty_rejects())
    raws = [json.dumps(r, default=str) for r in frame.filter(bad_mask).to_dicts()]
    rejected = _rejects(
        typed["_line"].filter(bad_mask).to_list(), reason.filter(bad_mask).to_list(), raws
    )
    return Chunk(typed.filter(~bad_mask), rejected)


def _cast(col: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Non-strict cast; strings holding JSON lists ("[0.1, 0.2]") become lists."""
    if isinstance(dtype, pl.List) and col.dtype == pl.String:
        inner = dtype.inner
        parts = col.str.strip_chars().str.strip_chars("[]").str.split(",")
        return parts.list.eval(
            pl.element().str.strip_chars().replace("", None).cast(inner, strict=False)
        ).alias(col.name)
    if dtype == pl.Boolean and col.dtype == pl.String:
        lowered = col.str.strip_chars().str.to_lowercase()
        mapping = {"true": True, "false": False, "1": True, "0": False}
        return lowered.replace_strict(mapping, default=None, return_dtype=pl.Boolean)
    if dtype == pl.Int64 and col.dtype.is_float():
        whole = col.is_finite() & (col == col.floor())
        return pl.select(pl.when(whole).then(col.cast(pl.Int64, strict=False))).to_series()
    try:
        return col.cast(dtype, strict=False)
    except Exception:
        return pl.Series(col.name, [None] * len(col), dtype=dtype)


def iter_parquet(stream: BinaryIO, spec: DatasetSpec) -> Iterator[Chunk]:
    """Batches of a Parquet file; the stream is spooled to a local temp file (seekable)."""
    import shutil
    import tempfile

    with tempfile.TemporaryFile(prefix="foresight-pq-") as spool:
        shutil.copyfileobj(stream, spool, length=8 << 20)
        spool.seek(0)
        parquet = pq.ParquetFile(spool)
        first = 1
        for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            frame = _fold_obs_columns(frame)
            yield _typed_from_table(frame, first, spec)
            first += batch.num_rows


def _fold_obs_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Columns ``obs_0, obs_1, ...`` (wide CSV/Parquet) become one list column ``obs``."""
    for prefix in ("obs", "state", "action"):
        wide = [
            c
            for c in frame.columns
            if c.startswith(prefix + "_") and c[len(prefix) + 1 :].isdigit()
        ]
        if wide and prefix not in frame.columns:
            wide.sort(key=lambda c: int(c[len(prefix) + 1 :]))
            frame = frame.with_columns(
                pl.concat_list([pl.col(c).cast(pl.Float64, strict=False) for c in wide]).alias(
                    prefix
                )
            ).drop(wide)
    return frame


def iter_csv(stream: BinaryIO, spec: DatasetSpec, gz: bool) -> Iterator[Chunk]:
    """Batches of a CSV file with a header row; every column read as text, then coerced."""
    import pyarrow.csv as pacsv

    reader: BinaryIO = gzip.GzipFile(fileobj=stream) if gz else stream  # type: ignore[assignment]
    header = reader.readline().decode("utf-8").rstrip("\r\n")
    columns = [c.strip() for c in next(csv.reader([header]))]
    body = pacsv.open_csv(
        reader,
        read_options=pacsv.ReadOptions(column_names=columns, block_size=4 << 20),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns}, strings_can_be_null=True
        ),
    )
    first = 2  # the header is line 1
    for batch in body:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        frame = _fold_obs_columns(frame)
        yield _typed_from_table(frame, first, spec)
        first += batch.num_rows


def iter_chunks(stream: BinaryIO, uri: str, spec: DatasetSpec) -> Iterator[Chunk]:
    """Chunks of any supported source file, by its name."""
    fmt = source_format(uri)
    gz = uri.lower().endswith(".gz")
    if fmt == "jsonl":
        yield from iter_jsonl(stream, spec, gz)
    elif fmt == "parquet":
        yield from iter_parquet(stream, spec)
    elif fmt == "csv":
        yield from iter_csv(stream, spec, gz)
    else:
        raise ValueError(
            f"{uri}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )


def peek_records(fs: FileSystem, uri: str, limit: int = 2_000) -> pl.DataFrame:
    """The first records of a source, loosely typed, for inferring a dataset spec."""
    fmt = source_format(uri)
    with fs.open_read(uri) as raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if uri.lower().endswith(".gz") else raw
        if fmt == "jsonl":
            lines = []
            for line in stream:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    lines.append(record)
                if len(lines) >= limit:
                    break
            return pl.DataFrame(
                [
                    {k: r.get(k) for k in ("agent_id", "obs", "action", "state")}
                    for r in lines
                    if isinstance(r.get("obs"), list)
                ],
                strict=False,
            )
        if fmt == "parquet":
            data = stream.read()
            table = pq.ParquetFile(pa.BufferReader(data)).read_row_groups([0]).slice(0, limit)
            return _fold_obs_columns(pl.from_arrow(table))  # type: ignore[arg-type]
        import pyarrow.csv as pacsv

        head = b"".join(line for _, line in zip(range(limit + 1), stream, strict=False))
        frame = pl.from_arrow(pacsv.read_csv(io.BytesIO(head)))
        frame = _fold_obs_columns(frame)  # type: ignore[arg-type]
        for col in ("obs", "state", "action"):
            if col in frame.columns and frame[col].dtype == pl.String:
                frame = frame.with_columns(
                    _cast(frame[col], pl.List(pl.Float64()))
                    if frame[col].str.contains(r"\[").any()
                    else frame[col].cast(pl.Int64, strict=False)
                )
        return frame
