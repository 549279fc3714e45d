"""Small trajectory logs made in the tests, in the contract's format."""

from __future__ import annotations

import json
import random
from pathlib import Path

from datasets.schema import SPEC_FILENAME, ActionSpec, DatasetSpec

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
