"""How long ``build_tensors`` takes on a big table: it must stay columnar (no Python loop
per row). Moved here from the test suite, where a wall-clock bound made tests flaky.

    .venv/bin/python bench/build_tensors.py [--copies 4000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foresight.training.data import build_tensors
from tests.training.conftest import make_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4000, help="copies of 2 x 5-step episodes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frame, spec = make_frame(episodes=2, steps=5)
    big = pl.concat(
        [frame.with_columns(pl.col("episode_id") + f"_{k}") for k in range(args.copies)]
    )
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        build_tensors(big, spec)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"rows": big.height, "seconds": [round(s, 3) for s in seconds]}))


if __name__ == "__main__":
    main()
