"""Log readers: JSONL (also .gz), Parquet and CSV, in bounded chunks, to typed frames.

Every reader yields :class:`Chunk` objects: ``rows`` holds the records that parsed and have
the contract's types (plus ``_line``, the 1-based line or row number in the source file);
``rejected`` holds the records that did not, each with its reason. Value checks (sizes,
ranges, NaN) happen later, in :mod:`foresight.datasets.validate`, on typed columns.

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
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from foresight.datasets.schema import ALL_COLUMNS, REQUIRED_COLUMNS, DatasetSpec
from foresight.datasets.storage import FileSystem

BLOCK_BYTES = 8 << 20
"""JSONL bytes parsed at once: big enough to amortize a parse, small enough that a block and
its scans stay in the CPU's caches (BENCHMARKS.md compares sizes) and memory stays bounded."""
ROWS_PER_BATCH = 65_536
"""Rows per batch for Parquet and CSV sources."""
RAW_LIMIT = 2_000
"""Characters of an offending record kept in the quarantine table."""

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES

REJECT_SCHEMA = {"_line": pl.Int64, "reason": pl.String, "raw": pl.String}


class SourceFormatError(OSError):
    """A source file cannot be read as its format: empty, no records, undecodable bytes.

    An ``OSError``, like :class:`gzip.BadGzipFile`, so that ingest reports it as it reports a
    truncated gzip: ``cannot read <file>: <this message>``, and writes nothing.
    """


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
    """Passes bytes through and checksums them in a worker thread, so the sha256 runs
    beside the parse instead of before it (hashlib lets go of the GIL on big blocks)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.nbytes = 0
        self._blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        self._worker: threading.Thread | None = threading.Thread(
            target=self._run, daemon=True, name="sha256"
        )
        self._worker.start()

    def _run(self) -> None:
        while (block := self._blocks.get()) is not None:
            self._hash.update(block)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._blocks.put(bytes(data))
            self.nbytes += len(data)
        return data

    def _finish(self) -> None:
        if self._worker is not None:
            self._blocks.put(None)
            self._worker.join()
            self._worker = None

    @property
    def digest(self):
        """The sha256 of every byte read so far (waits for the worker)."""
        self._finish()
        return self._hash

    def close(self) -> None:
        if not self.closed:
            self._finish()
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
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # no newline yet: keep reading (one very long line)
            tail += data
            continue
        # The previous read's unfinished line and this read's whole lines, in one copy.
        block = data if not tail and cut == len(data) else b"".join((tail, memoryview(data)[:cut]))
        tail = data[cut:]
        n_lines = int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == 10))
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


@dataclass
class _KeyBytes:
    """What the raw bytes of a JSONL block say about its keys and the values after them.

    Polars drops keys that are not in the schema. Every key in JSON is a string directly
    followed by ':' (optionally after whitespace), so the keys are the colons right after
    a '"'; more of them than values polars found means an unknown key (or a '":' inside a
    string value, a harmless false alarm). The byte after such a colon (after one blank,
    as ``json.dumps`` writes ``": "``) is the first byte of the key's value.
    """

    keys: int
    """Colons right after a '"'."""
    blank_before_colon: bool
    """Some colon follows a space, tab or CR: a key polars reads but ``keys`` misses."""
    objects: int
    """Values (after a key) that start with '{'."""
    strings: int
    """Values (after a key) that start with '"'."""

    @classmethod
    def scan(cls, block: bytes) -> _KeyBytes:
        buf = np.frombuffer(block, dtype=np.uint8)
        colons = np.flatnonzero(buf == 58)  # ':'
        # A colon at 0 would read the block's final '\n' here: neither a quote nor a blank.
        before = buf[colons - 1]
        quoted = before == 34  # '"'
        keys = int(np.count_nonzero(quoted))
        blank = False
        if keys != colons.size:  # colons inside string values, or after a blank
            other = before[~quoted]
            blank = bool(np.any((other == 32) | (other == 9) | (other == 13)))
            colons = colons[quoted]
        # A key's colon is followed by at least a value byte, '}' and '\n' when the block
        # parses; one that is not (a '":' at the very end) marks the block as suspect.
        if colons.size and int(colons[-1]) + 2 >= buf.size:
            return cls(keys, True, 0, 0)
        first = buf[colons + 1]
        spaced = first == 32
        if spaced.any():
            first = np.where(spaced, buf[colons + 2], first)
        objects = int(np.count_nonzero(first == 123))  # '{'
        strings = int(np.count_nonzero(first == 34))
        return cls(keys, blank, objects, strings)


def _scan_beside(block: bytes) -> Callable[[], _KeyBytes]:
    """Start :meth:`_KeyBytes.scan` on a worker thread (numpy lets go of the GIL), so the
    byte scan runs beside polars' parse; the returned function waits for its result."""
    out: list[_KeyBytes] = []
    worker = threading.Thread(target=lambda: out.append(_KeyBytes.scan(block)), daemon=True)
    worker.start()

    def result() -> _KeyBytes:
        worker.join()
        return out[0] if out else _KeyBytes.scan(block)

    return result


def _parse_block_fast(block: bytes, n_lines: int, schema: dict) -> pl.DataFrame | None:
    """Parse with polars, or None when the block needs the line-by-line path."""
    scanned = _scan_beside(block)
    try:
        frame = pl.read_ndjson(io.BytesIO(block), schema=schema)
    except Exception:  # syntax error, NaN, a value of the wrong type: go exact
        scanned()
        return None
    key_bytes = scanned()
    if frame.height != n_lines:  # blank lines: the exact path keeps line numbers right
        return None
    if key_bytes.blank_before_colon:
        return None
    values = frame.height * frame.width - sum(frame.null_count().row(0))
    if key_bytes.keys != values:
        # Explicit nulls are keys without a value; count them before giving up.
        explicit_nulls = sum(block.count(f'"{c}":null'.encode()) for c in ALL_COLUMNS)
        if key_bytes.keys != values + explicit_nulls:
            return None
    # Every '":' is a real key now, so the counted first bytes are values' first bytes.
    return frame if _fast_types_exact(key_bytes, frame) else None


_STRING_COLUMNS = ("episode_id", "agent_id", "policy_id", "info")
_LIST_COLUMNS = ("obs", "state", "action", "action_mask")


def _fast_types_exact(key_bytes: _KeyBytes, frame: pl.DataFrame) -> bool:
    """Whether polars kept every value as JSONL allows, where it would coerce silently.

    Polars reads a number or ``true`` into a string column as its text, an object as its
    JSON text, and keeps a null inside a list; the exact path rejects these, or converts
    them on purpose (an integer id, an ``info`` object). Any other column errors on a
    string, so the values that start with '"' after their key are exactly the string
    columns' values when none was coerced.
    """
    if key_bytes.objects:  # only ``info`` may hold an object
        return False
    strings = sum(frame.height - frame[c].null_count() for c in _STRING_COLUMNS)
    if key_bytes.strings != strings:
        return False
    # A null element inside a list, all list columns in one select: the list lengths count
    # every element, the exploded values only the non-null ones.
    lists = [c for c in _LIST_COLUMNS if isinstance(frame.schema[c], pl.List)]
    holes = frame.select(
        pl.sum_horizontal(pl.col(c).list.len().sum() - pl.col(c).explode().count() for c in lists)
    ).item()
    return holes == 0


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
        try:
            text = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:  # replacing the bytes would alter the record
            text = raw_line.decode("utf-8", errors="replace").strip()
            reject(line_no, f"not UTF-8 text: invalid byte at column {exc.start + 1}", text)
            continue
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
#
# Both go through the same rules as a JSONL value: a column is read as the contract type
# only when its values are what JSONL would accept for that field; any other value rejects
# its row with JSONL's reason (``wrong type for 'step': expected an integer, got float``).
# Parquet columns are judged by their Arrow type; CSV cells are text, judged as the JSON
# token they spell (``1`` an int, ``1.0`` a float, ``[1, 2]`` a list, anything else a str),
# except that CSV booleans may also be written ``1``/``0`` (CSV has no boolean type).

_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(?i:nan|inf|infinity)$"
_INTEGER = r"^[+-]?\d+$"
_TEXT_BOOLS = {"true": True, "false": False, "1": True, "0": False}


def _expected(name: str, discrete: bool) -> str:
    if name == "action":
        return "an integer" if discrete else "a list of numbers"
    return _EXPECTED[name]


def _type_name(dtype: pl.DataType) -> str:
    """The Python type a JSONL reason names for a value of this column type."""
    if dtype == pl.String:
        return "str"
    if dtype == pl.Boolean:
        return "bool"
    if dtype.is_integer():
        return "int"
    if dtype.is_float() or dtype.is_decimal():
        return "float"
    if isinstance(dtype, pl.List | pl.Array):
        return "list"
    if isinstance(dtype, pl.Struct):
        return "dict"
    return str(dtype).lower()  # datetime, binary, ...: nothing JSONL could hold


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_integer() or dtype.is_float() or dtype.is_decimal()


def _text_kind(col: pl.Series) -> pl.Series:
    """The JSON type a CSV cell spells: int, float, bool, list, dict or str (null: empty)."""
    text = col.str.strip_chars()
    return pl.select(
        pl.when(text.is_null())
        .then(None)
        .when(text.str.contains(_INTEGER))
        .then(pl.lit("int"))
        .when(text.str.contains(_NUMBER))
        .then(pl.lit("float"))
        .when(text.str.to_lowercase().is_in(["true", "false"]))
        .then(pl.lit("bool"))
        .when(text.str.starts_with("["))
        .then(pl.lit("list"))
        .when(text.str.starts_with("{"))
        .then(pl.lit("dict"))
        .otherwise(pl.lit("str"))
    ).to_series()


def _no_problem(n: int) -> pl.Series:
    return pl.Series([None] * n, dtype=pl.String)


def _got(bad: pl.Series, name: str | pl.Series) -> pl.Series:
    """Per row: the offending type name where ``bad``, else null."""
    got = pl.Series([name] * len(bad), dtype=pl.String) if isinstance(name, str) else name
    return pl.select(pl.when(bad.fill_null(False)).then(got)).to_series()


def _typed_list(col: pl.Series, mask: bool) -> tuple[pl.Series, pl.Series]:
    """A Parquet list column: numbers (``mask``: booleans, or 0/1) with no null element."""
    target = pl.List(pl.Boolean) if mask else pl.List(pl.Float32)
    present = col.is_not_null()
    if not isinstance(col.dtype, pl.List | pl.Array):
        if col.dtype == pl.Null:
            return pl.Series(col.name, [None] * len(col), dtype=target), _no_problem(len(col))
        return pl.Series(col.name, [None] * len(col), dtype=target), _got(
            present, _type_name(col.dtype)
        )
    if isinstance(col.dtype, pl.Array):
        col = col.cast(pl.List(col.dtype.inner))
    inner = col.dtype.inner  # type: ignore[union-attr]
    if mask and inner == pl.Boolean:
        elements_ok = pl.element().is_not_null()
    elif _is_numeric(inner) and mask:
        elements_ok = ((pl.element() == 0) | (pl.element() == 1)).fill_null(False)
    elif _is_numeric(inner) or inner == pl.Null:
        elements_ok = pl.element().is_not_null()
    else:  # strings, booleans as numbers, nested lists: JSONL rejects these too
        elements_ok = pl.lit(False)
    ok = col.list.eval(elements_ok).list.all().fill_null(True)
    # Through float64 as JSONL does: a value beyond float32 becomes inf, then is quarantined.
    wide = target if mask else pl.List(pl.Float64)
    values = col.cast(wide, strict=False).cast(target)
    values = pl.select(pl.when(ok).then(values)).to_series().alias(col.name)
    return values, _got(present & ~ok, "list")


def _text_list(col: pl.Series, mask: bool) -> tuple[pl.Series, pl.Series]:
    """A CSV cell holding a JSON list, ``[0.1, 2]`` (``mask``: ``[true, 0]``)."""
    target = pl.List(pl.Boolean) if mask else pl.List(pl.Float32)
    text = col.str.strip_chars()
    is_list = text.str.starts_with("[") & text.str.ends_with("]")
    body = text.str.strip_prefix("[").str.strip_suffix("]").str.strip_chars()
    parts = pl.select(
        pl.when(body == "")
        .then(pl.lit([], dtype=pl.List(pl.String)))
        .otherwise(body.str.split(","))
    ).to_series()
    parts = parts.list.eval(pl.element().str.strip_chars())
    if mask:
        lowered = pl.element().str.to_lowercase()
        ok = parts.list.eval(lowered.is_in(list(_TEXT_BOOLS))).list.all()
        values = parts.list.eval(
            lowered.replace_strict(_TEXT_BOOLS, default=None, return_dtype=pl.Boolean)
        )
    else:
        ok = parts.list.eval(pl.element().str.contains(_NUMBER)).list.all()
        values = parts.list.eval(pl.element().cast(pl.Float64, strict=False)).cast(target)
    ok = (is_list & ok).fill_null(True)
    values = pl.select(pl.when(ok & text.is_not_null()).then(values)).to_series().alias(col.name)
    return values.cast(target), _got(~ok, _text_kind(col))


def _typed_column(
    name: str, col: pl.Series, dtype: pl.DataType, discrete: bool
) -> tuple[pl.Series, pl.Series]:
    """A Parquet column as ``dtype`` (values, per-row offending type name or null)."""
    present = col.is_not_null()
    nulls = pl.Series(name, [None] * len(col), dtype=dtype)
    source = col.dtype
    if source == pl.Null:  # an all-empty column
        return nulls, _no_problem(len(col))
    if isinstance(dtype, pl.List):
        return _typed_list(col, mask=name == "action_mask")
    if name in ("episode_id", "agent_id", "policy_id"):
        ok = source == pl.String or (source.is_integer() and name != "policy_id")
    elif name == "info":
        if isinstance(source, pl.Struct | pl.List | pl.Array):  # JSONL keeps objects as JSON
            return _json_text(col)
        ok = source == pl.String
    elif dtype == pl.Int64:
        ok = source.is_integer()
    elif dtype == pl.Float64:
        ok = _is_numeric(source)
    elif dtype == pl.Boolean:
        ok = source == pl.Boolean
    else:
        raise AssertionError(name)
    if not ok:
        return nulls, _got(present, _type_name(source))
    return col.cast(dtype, strict=False).alias(name), _no_problem(len(col))


def _json_text(col: pl.Series) -> tuple[pl.Series, pl.Series]:
    """A nested ``info`` column as JSON text, as JSONL stores an ``info`` object."""
    texts: list[str | None] = []
    bad: list[bool] = []
    for value in col.to_list():
        try:
            texts.append(None if value is None else json.dumps(value, allow_nan=False))
            bad.append(False)
        except (TypeError, ValueError):  # NaN inside, or a value JSON cannot hold
            texts.append(None)
            bad.append(True)
    got = _type_name(col.dtype)
    return pl.Series(col.name, texts, dtype=pl.String), _got(pl.Series(bad), got)


def _text_column(
    name: str, col: pl.Series, dtype: pl.DataType, discrete: bool
) -> tuple[pl.Series, pl.Series]:
    """A CSV column (text) as ``dtype``: (values, per-row offending type name or null)."""
    if isinstance(dtype, pl.List):
        return _text_list(col, mask=name == "action_mask")
    if dtype == pl.String:
        return col.alias(name), _no_problem(len(col))
    kind = _text_kind(col)
    text = col.str.strip_chars()
    if dtype == pl.Int64:
        ok = kind == "int"
        values = text.cast(pl.Int64, strict=False)
    elif dtype == pl.Float64:
        ok = kind.is_in(["int", "float"])
        values = text.cast(pl.Float64, strict=False)
    elif dtype == pl.Boolean:
        lowered = text.str.to_lowercase()
        ok = lowered.is_in(list(_TEXT_BOOLS))
        values = lowered.replace_strict(_TEXT_BOOLS, default=None, return_dtype=pl.Boolean)
    else:
        raise AssertionError(name)
    ok = ok.fill_null(True)
    values = pl.select(pl.when(ok).then(values)).to_series().alias(name)
    return values, _got(~ok, kind)


def _typed_from_table(frame: pl.DataFrame, first_row: int, spec: DatasetSpec, text: bool) -> Chunk:
    """A Parquet (``text=False``) or CSV (``text=True``) batch as typed rows and rejects.

    Reasons and their order are JSONL's: missing fields first, then the first field (in
    contract order) whose value has the wrong type.
    """
    schema = input_schema(spec)
    discrete = spec.action.discrete
    lines = pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64, eager=True)
    unknown = sorted(set(frame.columns) - set(ALL_COLUMNS))
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if unknown or missing:
        reason = (
            f"unknown column(s): {', '.join(unknown)}"
            if unknown
            else f"missing column(s): {', '.join(missing)}"
        )
        raw = [json.dumps(r, default=str) for r in frame.to_dicts()]
        return Chunk(
            pl.DataFrame(schema={**schema, "_line": pl.Int64}),
            _rejects(lines.to_list(), [reason] * frame.height, raw),
        )
    out = {}
    wrong = []
    convert = _text_column if text else _typed_column
    for name, dtype in schema.items():
        if name not in frame.columns:
            out[name] = pl.Series(name, [None] * frame.height, dtype=dtype)
            continue
        values, got = convert(name, frame[name], dtype, discrete)
        out[name] = values
        wrong.append(
            pl.format(
                "wrong type for '{}': expected {}, got {}",
                pl.lit(name),
                pl.lit(_expected(name, discrete)),
                pl.lit(got),
            )
        )
    missing_reason = pl.concat_str(
        [pl.when(pl.lit(frame[c]).is_null()).then(pl.lit(c)) for c in REQUIRED_COLUMNS],
        separator=", ",
        ignore_nulls=True,
    )
    first_problem = pl.coalesce(
        pl.when(missing_reason != "").then(pl.format("missing field(s): {}", missing_reason)),
        *wrong,
    )
    typed = pl.DataFrame(out).with_columns(lines.alias("_line"))
    reason = pl.select(first_problem).to_series()
    bad_mask = reason.is_not_null()
    if not bad_mask.any():
        return Chunk(typed, empty_rejects())
    raws = [json.dumps(r, default=str) for r in frame.filter(bad_mask).to_dicts()]
    rejected = _rejects(
        typed["_line"].filter(bad_mask).to_list(), reason.filter(bad_mask).to_list(), raws
    )
    return Chunk(typed.filter(~bad_mask), rejected)


def _cast(col: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Loose cast for spec inference only: strings holding lists ("[0.1, 0.2]") become lists."""
    if isinstance(dtype, pl.List) and col.dtype == pl.String:
        inner = dtype.inner
        parts = col.str.strip_chars().str.strip_chars("[]").str.split(",")
        return parts.list.eval(
            pl.element().str.strip_chars().replace("", None).cast(inner, strict=False)
        ).alias(col.name)
    return col.cast(dtype, strict=False)


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
            frame = _fold_obs_columns(frame, text=False)
            yield _typed_from_table(frame, first, spec, text=False)
            first += batch.num_rows


def _fold_obs_columns(frame: pl.DataFrame, text: bool) -> pl.DataFrame:
    """Columns ``obs_0, obs_1, ...`` (wide CSV/Parquet) become one list column ``obs``.

    ``text``: CSV cells, folded into the list's JSON text (``[0.1, 0.2]``) so that they are
    checked like any CSV list. A row whose wide cells are all empty has no value.
    """
    for prefix in ("obs", "state", "action"):
        wide = [
            c
            for c in frame.columns
            if c.startswith(prefix + "_") and c[len(prefix) + 1 :].isdigit()
        ]
        if not wide or prefix in frame.columns:
            continue
        wide.sort(key=lambda c: int(c[len(prefix) + 1 :]))
        absent = pl.all_horizontal(pl.col(c).is_null() for c in wide)
        if text:
            cells = [pl.col(c).cast(pl.String).fill_null("") for c in wide]
            folded = pl.format("[{}]", pl.concat_str(cells, separator=", "))
        elif all(_is_numeric(frame.schema[c]) for c in wide):
            folded = pl.concat_list([pl.col(c).cast(pl.Float64) for c in wide])
        else:  # a text or nested cell: keep it, the list check names it
            folded = pl.concat_list([pl.col(c).cast(pl.String) for c in wide])
        frame = frame.with_columns(pl.when(~absent).then(folded).alias(prefix)).drop(wide)
    return frame


def iter_csv(stream: BinaryIO, spec: DatasetSpec, gz: bool) -> Iterator[Chunk]:
    """Batches of a CSV file with a header row; every cell read as text, then checked.

    Only an unquoted empty cell is a missing value: ``""`` is an empty string, and ``NA`` or
    ``NaN`` are the text they spell (pyarrow's default would read both as null).
    """
    import pyarrow.csv as pacsv

    reader: BinaryIO = gzip.GzipFile(fileobj=stream) if gz else stream  # type: ignore[assignment]
    header = reader.readline().decode("utf-8-sig").rstrip("\r\n")
    if not header.strip():
        raise SourceFormatError("empty CSV file: no header row")
    columns = [c.strip() for c in next(csv.reader([header]))]
    try:
        body = pacsv.open_csv(
            reader,
            read_options=pacsv.ReadOptions(column_names=columns, block_size=4 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                null_values=[""],
            ),
        )
    except pa.ArrowInvalid as exc:
        if str(exc).startswith("Empty CSV file"):
            return  # a header and no rows: iter_chunks says so
        raise
    first = 2  # the header is line 1
    for batch in body:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        frame = _fold_obs_columns(frame, text=True)
        yield _typed_from_table(frame, first, spec, text=True)
        first += batch.num_rows


_SYNTAX_REASONS = ("unparseable JSON", "not a JSON object", "not UTF-8 text")
"""JSONL reasons of a line that is no record at all; a file of only these is not JSONL."""


def iter_chunks(stream: BinaryIO, uri: str, spec: DatasetSpec) -> Iterator[Chunk]:
    """Chunks of any supported source file, by its name.

    Raises :class:`SourceFormatError` for a file that holds no record (empty, blank lines
    only, a CSV header only, a Parquet file without rows) or cannot be decoded as its
    format (not Parquet, not UTF-8, a bad gzip stream, a JSONL file with no JSON object).
    """
    fmt = source_format(uri)
    gz = uri.lower().endswith(".gz")
    if fmt == "jsonl":
        chunks = iter_jsonl(stream, spec, gz)
    elif fmt == "parquet":
        chunks = iter_parquet(stream, spec)
    elif fmt == "csv":
        chunks = iter_csv(stream, spec, gz)
    else:
        raise ValueError(
            f"{uri}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    records = objects = 0
    try:
        for chunk in chunks:
            records += chunk.read
            syntax = chunk.rejected["reason"].str.starts_with(_SYNTAX_REASONS[0])
            for prefix in _SYNTAX_REASONS[1:]:
                syntax = syntax | chunk.rejected["reason"].str.starts_with(prefix)
            objects += chunk.rows.height + int((~syntax).sum())
            yield chunk
    except (pa.ArrowException, UnicodeDecodeError, zlib.error) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SourceFormatError(f"not a readable {fmt} file ({detail})") from exc
    if records == 0:
        what = {"csv": "a header row only", "parquet": "no rows"}.get(fmt, "no lines")
        raise SourceFormatError(f"no records in the file: it is empty or has {what}")
    if objects == 0:
        raise SourceFormatError(
            f"not a JSON-lines file: none of its {records} non-blank line(s) is a JSON object"
        )


def peek_records(fs: FileSystem, uri: str, limit: int = 2_000) -> pl.DataFrame:
    """The first records of a source, loosely typed, for inferring a dataset spec.

    Empty when the file cannot be decoded: the caller then says it cannot infer a spec
    from this file, and the read itself names what is wrong with it.
    """
    try:
        return _peek(fs, uri, limit)
    except (pa.ArrowException, UnicodeDecodeError, zlib.error, gzip.BadGzipFile, EOFError):
        return pl.DataFrame()


def _peek(fs: FileSystem, uri: str, limit: int) -> pl.DataFrame:
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
                except ValueError:  # not JSON, or not UTF-8
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
            parquet = pq.ParquetFile(pa.BufferReader(stream.read()))
            if parquet.num_row_groups == 0:
                return pl.DataFrame()
            table = parquet.read_row_groups([0]).slice(0, limit)
            return _fold_obs_columns(pl.from_arrow(table), text=False)  # type: ignore[arg-type]
        import pyarrow.csv as pacsv

        head = b"".join(line for _, line in zip(range(limit + 1), stream, strict=False))
        frame = pl.from_arrow(pacsv.read_csv(io.BytesIO(head)))
        frame = _fold_obs_columns(frame, text=False)  # type: ignore[arg-type]
        for col in ("obs", "state", "action"):
            if col in frame.columns and frame[col].dtype == pl.String:
                frame = frame.with_columns(
                    _cast(frame[col], pl.List(pl.Float64()))
                    if frame[col].str.contains(r"\[").any()
                    else frame[col].cast(pl.Int64, strict=False)
                )
        return frame
