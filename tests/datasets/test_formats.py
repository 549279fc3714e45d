"""Every quarantine reason, on JSONL, Parquet and CSV alike, through the real ingest path.

One table of bad records and the reasons they must be quarantined with. Each case becomes
one source file per format; all files of a format and spec are ingested together into a
temporary local store, and each case then reads its own rows of the quarantine table back.
The formats must agree: a value JSONL quarantines is quarantined by Parquet and CSV with
the same reason, never coerced.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from foresight.datasets import DatasetTable, IngestError, ingest_logs, open_dataset
from foresight.datasets.schema import MAX_ID_CHARS, MAX_INFO_CHARS, ActionSpec, DatasetSpec
from foresight.datasets.storage import Store
from tests.datasets.helpers import ABSENT, write_records

FORMATS = ("jsonl", "jsonl-exact", "parquet", "csv")
"""``jsonl-exact``: JSONL with a trailing blank line, which sends the file down the
line-by-line path; plain ``jsonl`` takes the fast whole-block parse wherever it can."""
SUFFIX = {"jsonl": "jsonl", "jsonl-exact": "jsonl", "parquet": "parquet", "csv": "csv"}
SPECS = {
    "discrete": DatasetSpec(
        env="toy",
        agents={"a0": 4, "a1": 4, "a2": 4},
        action=ActionSpec(kind="discrete", n=5),
        state_dim=3,
    ),
    "continuous": DatasetSpec(
        env="toy",
        agents={"a0": 4, "a1": 4, "a2": 4},
        action=ActionSpec(kind="continuous", dim=2, low=-1.0, high=1.0),
    ),
}
AGENTS = "a0, a1, a2"
INF = math.inf
NAN = math.nan


def base_record(spec: str, episode: str, step: int = 0) -> dict[str, Any]:
    """A valid record of the given spec; cases change one or two of its fields."""
    record: dict[str, Any] = {
        "episode_id": episode,
        "step": step,
        "agent_id": "a0",
        "obs": [0.5, -0.25, 0.0, 1.0],
        "action": 1 if spec == "discrete" else [0.5, -0.5],
        "reward": -0.5,
        "terminated": False,
        "truncated": False,
        "policy_id": "toy",
        "timestamp": 1_700_000_000.5,
        "info": "fine",  # no ':' inside: JSONL takes the fast path
    }
    if spec == "discrete":
        record["state"] = [0.0, 0.1, 0.2]
        record["action_mask"] = [True, True, False, True, True]
    return record


@dataclass
class Case:
    """Records (as changes to :func:`base_record`) and the reasons their rows must get."""

    id: str
    changes: list[dict[str, Any]]
    """One dict per record, applied to a valid record (``ABSENT``: leave the field out)."""
    reasons: list[str] | dict[str, list[str]]
    """Expected reasons of the file's quarantined rows; per format where they differ."""
    spec: str = "discrete"
    formats: tuple[str, ...] = ("jsonl", "parquet", "csv")
    """The formats that can spell the record (a CSV cell cannot tell ``"1"`` from ``1``)."""
    accepted: int = 0
    """Rows of the case expected in the dataset."""
    steps: list[int] = field(default_factory=list)
    """Step of each record (default 0)."""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for i, change in enumerate(self.changes):
            step = self.steps[i] if self.steps else 0
            record = {**base_record(self.spec, f"case-{self.id}", step), **change}
            out.append({k: v for k, v in record.items() if v is not ABSENT})
        return out

    def expected(self, fmt: str) -> list[str]:
        fmt = "jsonl" if fmt == "jsonl-exact" else fmt
        reasons = self.reasons[fmt] if isinstance(self.reasons, dict) else self.reasons
        return sorted(reasons)


def wrong(name: str, expected: str, got: str) -> str:
    return f"wrong type for '{name}': expected {expected}, got {got}"


ONE_LONG = {"episode_id": "e" * (MAX_ID_CHARS + 1)}
CASES = [
    # Valid records: nothing quarantined, every row kept.
    Case("valid-discrete", [{}], [], accepted=1),
    Case("valid-continuous", [{}], [], spec="continuous", accepted=1),
    Case("reward-fits-float32", [{"reward": 3.3e38}], [], accepted=1),
    Case("ids-at-the-limit", [{"policy_id": "p" * MAX_ID_CHARS}], [], accepted=1),
    Case("optional-nulls", [{"state": None, "info": None, "timestamp": None}], [], accepted=1),
    Case("info-object", [{"info": {"a": [1, 2]}}], [], accepted=1),
    # Row-level checks (datasets/validate.py).
    Case("missing-action", [{"action": None}], ["missing field(s): action"]),
    Case(
        "missing-two",
        [{"reward": None, "terminated": None}],
        ["missing field(s): reward, terminated"],
    ),
    Case(
        "missing-beats-wrong-type",
        [{"action": None, "reward": "abc"}],
        ["missing field(s): action"],
    ),
    Case("step-negative", [{"step": -1}], ["step -1 is negative"]),
    Case("step-too-large", [{"step": 2**31}], ["step 2147483648 is too large"]),
    Case("empty-episode-id", [{"episode_id": ""}], ["empty episode_id"]),
    Case(
        "long-episode-id",
        [ONE_LONG],
        [f"episode_id has {MAX_ID_CHARS + 1} characters, more than the limit of {MAX_ID_CHARS}"],
    ),
    Case(
        "long-agent-id",
        [{"agent_id": "a" * (MAX_ID_CHARS + 1)}],
        [f"agent_id has {MAX_ID_CHARS + 1} characters, more than the limit of {MAX_ID_CHARS}"],
    ),
    Case(
        "long-policy-id",
        [{"policy_id": "p" * (MAX_ID_CHARS + 1)}],
        [f"policy_id has {MAX_ID_CHARS + 1} characters, more than the limit of {MAX_ID_CHARS}"],
    ),
    Case(
        "long-info",
        [{"info": "i" * (MAX_INFO_CHARS + 1)}],
        [f"info has {MAX_INFO_CHARS + 1} characters, more than the limit of {MAX_INFO_CHARS}"],
    ),
    Case(
        "unknown-agent", [{"agent_id": "zz"}], [f"unknown agent_id 'zz' (dataset agents: {AGENTS})"]
    ),
    Case(
        "obs-size",
        [{"obs": [0.0, 0.0, 0.0]}],
        ["obs has 3 values but agent 'a0' has observation size 4"],
    ),
    Case("obs-nan", [{"obs": [0.0, NAN, 0.0, 0.0]}], ["obs contains NaN or inf"]),
    Case("obs-beyond-float32", [{"obs": [0.0, 1e39, 0.0, 0.0]}], ["obs contains NaN or inf"]),
    Case("reward-nan", [{"reward": NAN}], ["reward is NaN or inf"]),
    Case("reward-inf", [{"reward": -INF}], ["reward is NaN or inf"]),
    Case("reward-overflows-float32", [{"reward": 3.5e38}], ["reward 3.5e+38 does not fit float32"]),
    Case("action-too-large", [{"action": 9}], ["action 9 outside the action spec discrete(5)"]),
    Case("action-negative", [{"action": -1}], ["action -1 outside the action spec discrete(5)"]),
    Case("action-equals-n", [{"action": 5}], ["action 5 outside the action spec discrete(5)"]),
    Case("action-last", [{"action": 4}], [], accepted=1),
    Case(
        "continuous-action-at-bounds", [{"action": [-1.0, 1.0]}], [], spec="continuous", accepted=1
    ),
    Case(
        "action-mask-length",
        [{"action_mask": [True, False, True, True]}],
        ["action_mask has 4 entries, expected 5"],
    ),
    Case(
        "continuous-action-length",
        [{"action": [0.5]}],
        ["action has 1 values, the action spec has 2"],
        spec="continuous",
    ),
    Case(
        "continuous-action-nan",
        [{"action": [NAN, 0.0]}],
        ["action contains NaN or inf"],
        spec="continuous",
    ),
    Case(
        "continuous-action-low",
        [{"action": [-2.0, 0.0]}],
        ["action below the spec's low bound -1.0"],
        spec="continuous",
    ),
    Case(
        "continuous-action-high",
        [{"action": [0.0, 1.5]}],
        ["action above the spec's high bound 1.0"],
        spec="continuous",
    ),
    Case(
        "state-without-state-spec",
        [{"state": [0.0, 0.0]}],
        ["state given but the dataset spec has no state"],
        spec="continuous",
    ),
    Case("state-size", [{"state": [0.0, 0.0]}], ["state has 2 values, expected 3"]),
    Case("state-inf", [{"state": [0.0, INF, 0.0]}], ["state contains NaN or inf"]),
    Case("timestamp-nan", [{"timestamp": NAN}], ["timestamp is NaN or inf"]),
    # Wrong types: JSONL's reasons, never a silent coercion.
    Case("reward-text", [{"reward": "abc"}], [wrong("reward", "a number", "str")]),
    Case(
        "reward-numeric-text",
        [{"reward": "0.5"}],
        [wrong("reward", "a number", "str")],
        formats=("jsonl", "parquet"),
    ),
    Case("reward-bool", [{"reward": True}], [wrong("reward", "a number", "bool")]),
    Case("step-float", [{"step": 1.5}], [wrong("step", "an integer", "float")]),
    Case("step-whole-float", [{"step": 0.0}], [wrong("step", "an integer", "float")]),
    Case("step-text", [{"step": "zero"}], [wrong("step", "an integer", "str")]),
    Case("obs-text", [{"obs": "zero"}], [wrong("obs", "a list of numbers", "str")]),
    Case("obs-number", [{"obs": 3}], [wrong("obs", "a list of numbers", "int")]),
    Case(
        "obs-list-of-text",
        [{"obs": ["a", "b", "c", "d"]}],
        [wrong("obs", "a list of numbers", "list")],
    ),
    Case(
        "obs-list-of-bools",
        [{"obs": [True, False, True, False]}],
        [wrong("obs", "a list of numbers", "list")],
    ),
    Case(
        "obs-null-element",
        [{"obs": [0.0, None, 0.0, 0.0]}],
        [wrong("obs", "a list of numbers", "list")],
    ),
    Case("discrete-action-float", [{"action": 1.0}], [wrong("action", "an integer", "float")]),
    Case("discrete-action-list", [{"action": [1]}], [wrong("action", "an integer", "list")]),
    Case(
        "continuous-action-text",
        [{"action": "left"}],
        [wrong("action", "a list of numbers", "str")],
        spec="continuous",
    ),
    Case("terminated-text", [{"terminated": "yes"}], [wrong("terminated", "true or false", "str")]),
    Case(
        "terminated-int",
        [{"truncated": 1}],
        [wrong("truncated", "true or false", "int")],
        formats=("jsonl", "parquet"),  # CSV booleans may be written 1/0
    ),
    Case("state-text", [{"state": "abc"}], [wrong("state", "a list of numbers or null", "str")]),
    Case(
        "action-mask-not-0-or-1",
        [{"action_mask": [2, 0, 0, 0, 0]}],
        [wrong("action_mask", "a list of booleans or null", "list")],
    ),
    Case(
        "action-mask-text",
        [{"action_mask": "all"}],
        [wrong("action_mask", "a list of booleans or null", "str")],
    ),
    Case(
        "timestamp-text",
        [{"timestamp": "now"}],
        [wrong("timestamp", "a number (unix seconds) or null", "str")],
    ),
    Case(
        "policy-id-number",
        [{"policy_id": 7}],
        [wrong("policy_id", "a string or null", "int")],
        formats=("jsonl", "parquet"),
    ),
    Case(
        "info-number",
        [{"info": 7}],
        [wrong("info", "a JSON object, a string or null", "int")],
        formats=("jsonl", "parquet"),
    ),
    Case(
        "episode-id-bool",
        [{"episode_id": True}],
        [wrong("episode_id", "a string", "bool")],
        formats=("jsonl", "parquet"),
    ),
    Case(
        "agent-id-float",
        [{"agent_id": 1.5}],
        [wrong("agent_id", "a string", "float")],
        formats=("jsonl", "parquet"),
    ),
    # Episode-level checks, after every file is read.
    Case(
        "duplicate",
        [{}, {}],
        ["duplicate row for episode 'case-duplicate' step 0 agent 'a0'"],
        accepted=1,
    ),
    Case(
        "gap",
        [{}, {}],
        ["episode 'case-gap' steps are not contiguous from 0 (2 distinct steps, last step 2)"] * 2,
        steps=[0, 2],
    ),
    Case(
        "tainted",
        [{}, {"reward": NAN}],
        [
            "reward is NaN or inf",
            "episode 'case-tainted' has other rows that were quarantined; "
            "an episode is kept whole or not at all",
        ],
        steps=[0, 1],
    ),
    # Fields and columns: one row at a time in JSONL, the whole file in Parquet and CSV.
    Case(
        "absent-column",
        [{"action": ABSENT}, {"action": ABSENT}],
        {
            "jsonl": ["missing field(s): action"] * 2,
            "parquet": ["missing column(s): action"] * 2,
            "csv": ["missing column(s): action"] * 2,
        },
        steps=[0, 1],
    ),
    Case(
        "unknown-column",
        [{"colour": "red"}, {"colour": "blue"}],
        {
            "jsonl": ["unknown field(s): colour"] * 2,
            "parquet": ["unknown column(s): colour"] * 2,
            "csv": ["unknown column(s): colour"] * 2,
        },
        steps=[0, 1],
    ),
]
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def _spells(case: Case, fmt: str) -> bool:
    return ("jsonl" if fmt == "jsonl-exact" else fmt) in case.formats


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict[tuple[str, str], tuple[pl.DataFrame, pl.DataFrame]]:
    """Per (format, spec): the quarantine and the dataset after one ingest of every case."""
    root = tmp_path_factory.mktemp("formats")
    store = Store(str(root / "store"))
    out = {}
    for fmt in FORMATS:
        for spec_name, spec in SPECS.items():
            folder = root / f"{fmt}-{spec_name}"
            cases = [c for c in CASES if c.spec == spec_name and _spells(c, fmt)]
            for case in cases:
                path = write_records(
                    folder / f"{case.id}.{SUFFIX[fmt]}", case.records(), SUFFIX[fmt]
                )
                if fmt == "jsonl-exact":
                    path.write_text(path.read_text() + "\n")
            name = f"cases_{fmt.replace('-', '_')}_{spec_name}"
            result = ingest_logs([str(folder)], name, store, spec=spec)
            assert result.read == result.accepted + result.quarantined
            table = DatasetTable(store, name)
            out[fmt, spec_name] = (table.quarantine(), open_dataset(name, store).collect())
    return out


@pytest.mark.parametrize(
    ("case", "fmt"),
    [pytest.param(c, f, id=f"{c.id}-{f}") for c in CASES for f in FORMATS if _spells(c, f)],
)
def test_every_reason_on_every_format(ingested, case: Case, fmt: str):
    quarantine, dataset = ingested[fmt, case.spec]
    rows = quarantine.filter(pl.col("source").str.ends_with(f"/{case.id}.{SUFFIX[fmt]}"))
    assert sorted(rows["reason"].to_list()) == case.expected(fmt)
    kept = dataset.filter(pl.col("episode_id") == f"case-{case.id}")
    assert kept.height == case.accepted


def test_a_valid_record_reads_the_same_in_every_format(ingested):
    """The control case is stored identically whichever format it came in."""
    stored = []
    for fmt in FORMATS:
        dataset = ingested[fmt, "discrete"][1]
        row = dataset.filter(pl.col("episode_id") == "case-valid-discrete").row(0, named=True)
        stored.append(row)
    assert all(row == stored[0] for row in stored)
    assert stored[0]["obs"] == [0.5, -0.25, 0.0, 1.0]
    assert stored[0]["action_mask"] == [True, True, False, True, True]


def test_csv_booleans_as_1_and_0_and_quoted_empty_strings(tmp_path):
    """CSV has no booleans: ``1``/``0`` are accepted there; ``""`` is an empty string, not null."""
    store = Store(str(tmp_path / "store"))
    header = "episode_id,step,agent_id,obs,action,reward,terminated,truncated,policy_id\n"
    body = 'e1,0,a0,"[0, 0, 0, 0]",1,0.5,0,1,toy\n' + '"",0,a0,"[0, 0, 0, 0]",1,0.5,0,1,NA\n'
    (tmp_path / "b.csv").write_text(header + body)
    result = ingest_logs([str(tmp_path / "b.csv")], "toy", store, spec=SPECS["discrete"])
    assert (result.accepted, result.quarantined) == (1, 1)
    row = open_dataset("toy", store).collect().row(0, named=True)
    assert (row["terminated"], row["truncated"]) == (False, True)
    assert DatasetTable(store, "toy").quarantine()["reason"].to_list() == ["empty episode_id"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_wide_columns_are_checked_like_lists(tmp_path, fmt):
    """``obs_0 .. obs_3`` columns: a text cell is a wrong type, not a silent null or zero."""
    store = Store(str(tmp_path / "store"))
    good = {"episode_id": "w0", "step": 0, "agent_id": "a0"}
    rest = {"action": 1, "reward": 0.0, "terminated": False, "truncated": False}
    rows = [
        {**good, **{f"obs_{i}": float(i) for i in range(4)}, **rest},
        {**good, "episode_id": "w1", **{f"obs_{i}": float(i) for i in range(3)}, **rest},
    ]
    rows[1]["obs_3"] = "x" if fmt == "csv" else None
    write_records(tmp_path / f"w.{fmt}", rows, fmt)
    result = ingest_logs([str(tmp_path / f"w.{fmt}")], "toy", store, spec=SPECS["discrete"])
    assert (result.accepted, result.quarantined) == (1, 1)
    assert open_dataset("toy", store).collect()["obs"].to_list() == [[0.0, 1.0, 2.0, 3.0]]
    reason = DatasetTable(store, "toy").quarantine()["reason"].to_list()
    assert reason == [wrong("obs", "a list of numbers", "list")]


# -- files that cannot be read at all ------------------------------------------------------


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _corrupt_gzip() -> bytes:
    data = bytearray(gzip.compress(b'{"episode_id": "e"}\n' * 200))
    data[20:40] = b"\xff" * 20  # inside the deflate stream
    return bytes(data)


GARBAGE = bytes(range(256)) * 8
UNREADABLE = [
    ("empty.jsonl", b"", "no records in the file"),
    ("blank.jsonl", b"\n\n  \n", "no records in the file"),
    ("garbage.jsonl", GARBAGE, "not a JSON-lines file"),
    ("text.jsonl", b"hello\nworld\n", "not a JSON-lines file"),
    ("empty.csv", b"", "empty CSV file"),
    (
        "header.csv",
        b"episode_id,step,agent_id,obs,action,reward,terminated,truncated\n",
        "no records",
    ),
    ("garbage.csv", GARBAGE, "not a readable csv file"),
    ("ragged.csv", b"episode_id,step\ne1,0,extra\n", "not a readable csv file"),
    ("empty.parquet", b"", "not a readable parquet file"),
    ("garbage.parquet", GARBAGE, "not a readable parquet file"),
    (
        "norows.parquet",
        _parquet_bytes(pa.table({"episode_id": pa.array([], pa.string())})),
        "no records",
    ),
    ("garbage.jsonl.gz", GARBAGE, "Not a gzipped file"),
    ("corrupt.csv.gz", _corrupt_gzip(), "cannot read"),
    ("truncated.jsonl.gz", gzip.compress(b'{"a": 1}\n' * 1000)[:-30], "cannot read"),
]


@pytest.mark.parametrize("with_spec", [True, False], ids=["spec", "no-spec"])
@pytest.mark.parametrize(("name", "data", "message"), UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_unreadable_file_is_an_error_naming_it(tmp_path, name, data, message, with_spec):
    """Nothing is written; the error names the file (without a spec: it cannot infer one)."""
    store = Store(str(tmp_path / "store"))
    path = tmp_path / "logs" / name
    path.parent.mkdir()
    path.write_bytes(data)
    spec = SPECS["discrete"] if with_spec else None
    with pytest.raises(IngestError) as caught:
        ingest_logs([str(path)], "toy", store, spec=spec)
    text = str(caught.value)
    assert str(path) in text
    if with_spec:
        assert message in text
    else:
        assert f"cannot infer a dataset spec from {path}" in text
    assert DatasetTable(store, "toy").latest_version() is None


def test_not_utf8_line_is_quarantined_not_altered(tmp_path):
    """One bad byte in a JSONL line quarantines that line; replacing it would alter the record."""
    store = Store(str(tmp_path / "store"))
    good = base_record("discrete", "u0")
    bad = base_record("discrete", "u1")
    write_records(tmp_path / "u.jsonl", [good, bad], "jsonl")
    data = (tmp_path / "u.jsonl").read_bytes().replace(b'"u1"', b'"u\xff1"')
    (tmp_path / "u.jsonl").write_bytes(data)
    result = ingest_logs([str(tmp_path / "u.jsonl")], "toy", store, spec=SPECS["discrete"])
    assert (result.accepted, result.quarantined) == (1, 1)
    quarantine = DatasetTable(store, "toy").quarantine()
    assert quarantine["reason"][0].startswith("not UTF-8 text: invalid byte at column")
    assert quarantine["line"][0] == 2


def test_plain_jsonl_cases_take_the_fast_path(tmp_path):
    """Guards the table: ``jsonl`` and ``jsonl-exact`` must exercise different parsers."""
    from foresight.datasets.readers import _parse_block_fast, input_schema

    path = write_records(tmp_path / "v.jsonl", [base_record("discrete", "v")], "jsonl")
    block = path.read_bytes()
    schema = input_schema(SPECS["discrete"])
    assert _parse_block_fast(block, 1, schema) is not None
    assert _parse_block_fast(block.replace(b'"toy"', b"7"), 1, schema) is None
    assert _parse_block_fast(block + b"\n", 2, schema) is None


FAST_PATH_REFUSALS = [
    # (what, replace this, with this, the exact path's reason)
    (
        "unknown-key-number",
        b'"info": "fine"',
        b'"info": "fine", "colour": 5',
        "unknown field(s): colour",
    ),
    (
        "unknown-key-null",
        b'"info": "fine"',
        b'"info": "fine", "colour": null',
        "unknown field(s): colour",
    ),
    (
        "unknown-key-blank",
        b'"info": "fine"',
        b'"info": "fine", "colour" : 5',
        "unknown field(s): colour",
    ),
    (
        "unknown-key-tab",
        b'"info": "fine"',
        b'"info": "fine", "colour"\t: 5',
        "unknown field(s): colour",
    ),
    (
        "number-as-string",
        b'"policy_id": "toy"',
        b'"policy_id": 7',
        "wrong type for 'policy_id': expected a string or null, got int",
    ),
    (
        "bool-as-id",
        b'"episode_id": "v"',
        b'"episode_id": true',
        "wrong type for 'episode_id': expected a string, got bool",
    ),
    (
        "object-as-id",
        b'"agent_id": "a0"',
        b'"agent_id": {"a": 0}',
        "wrong type for 'agent_id': expected a string, got dict",
    ),
    (
        "null-in-list",
        b"[0.0, 0.1, 0.2]",
        b"[0.0, null, 0.2]",
        "wrong type for 'state': expected a list of numbers or null, got list",
    ),
]


@pytest.mark.parametrize("compact", [False, True], ids=["spaced", "compact"])
@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in FAST_PATH_REFUSALS],
)
def test_fast_path_refuses_what_polars_would_swallow(tmp_path, old, new, reason, compact):
    """Each check of the fast path, alone: polars would read these lines without a word
    (dropping the key, coercing the value), so the block must go the exact path, which
    names the problem."""
    from foresight.datasets.readers import _parse_block, _parse_block_fast, input_schema

    path = write_records(tmp_path / "v.jsonl", [base_record("discrete", "v")], "jsonl")
    line = path.read_bytes()
    assert old in line
    bad = line.replace(old, new)
    if compact:  # what orjson and most loggers write: no blank after ':' or ','
        line, bad = (x.replace(b'": ', b'":').replace(b", ", b",") for x in (line, bad))
    block = line * 3 + bad + line  # one bad line among good ones
    spec = SPECS["discrete"]
    schema = input_schema(spec)
    assert _parse_block_fast(line * 4, 4, schema) is not None
    assert _parse_block_fast(block, 5, schema) is None
    chunk = _parse_block(block, 5, 1, schema, spec)
    assert chunk.rows.height == 4
    assert chunk.rejected["reason"].to_list() == [reason]
    assert chunk.rejected["_line"].to_list() == [4]
