"""Small trajectory logs made in the tests, in the contract's format."""

from __future__ import annotations

import json
import random
from pathlib import Path

from foresight.datasets.schema import SPEC_FILENAME, ActionSpec, DatasetSpec

OBS = 4
AGENTS = ("a0", "a1", "a2")
N_ACTIONS = 5


def spec() -> DatasetSpec:
    return DatasetSpec(
        env="toy", agents={a: OBS for a in AGENTS}, action=ActionSpec(kind="discrete", n=N_ACTIONS)
    )


def episode_rows(episode_id: str, steps: int = 5, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{episode_id}-{seed}")
    rows = []
    for step in range(steps):
        for agent in AGENTS:
            rows.append(
                {
                    "episode_id": episode_id,
                    "step": step,
                    "agent_id": agent,
                    "obs": [round(rng.uniform(-1, 1), 4) for _ in range(OBS)],
                    "action": rng.randrange(N_ACTIONS),
                    "reward": round(rng.uniform(-1, 0), 4),
                    "terminated": False,
                    "truncated": step == steps - 1,
                    "policy_id": "toy",
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict], with_spec: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if with_spec:
        (path.parent / SPEC_FILENAME).write_text(spec().to_json())
    return path


def episodes(n: int, prefix: str = "ep", steps: int = 5) -> list[dict]:
    return [row for i in range(n) for row in episode_rows(f"{prefix}{i:03d}", steps)]


ABSENT = object()
"""A field left out of a record (JSONL: no key; Parquet and CSV: no column)."""


def write_records(path: Path, records: list[dict], fmt: str) -> Path:
    """Records as a ``jsonl``, ``parquet`` or ``csv`` file, each value as its format spells it.

    Parquet columns take the type Arrow infers from the values (a text ``reward`` becomes
    a string column); CSV cells are the JSON text of the value, text quoted, null empty.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in records for k in r))
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: pa.array([r.get(c) for r in records]) for c in columns})
        pq.write_table(table, path)
    elif fmt == "csv":
        lines = [",".join(columns)]
        lines += [",".join(_csv_cell(r.get(c)) for c in columns) for r in records]
        path.write_text("\n".join(lines) + "\n")
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return path


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)  # numbers, true/false, lists and objects as JSON
        if not isinstance(value, list | dict):
            return text
    return '"' + text.replace('"', '""') + '"'
