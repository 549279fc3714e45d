"""Ingestion throughput and memory against the plain polars floor, in one run.

A JSONL log in simple_spread's shape (18 observation floats, a discrete action, 3 agents,
25-step episodes) goes through ``foresight ingest`` (every validation on) and through
``polars.read_ndjson(...).write_parquet(...)``, the floor. Each runs in its own process so
its peak RSS can be read. Two input sizes show whether memory grows with the input.

    .venv/bin/python bench/ingest.py [--rows 1000000 2000000] [--repeat 2]

Besides the best of each, every run's time and CPU seconds, the floor/ingest ratio of each
interleaved pair and the load average are printed: on a shared machine their spread is the
honest error bar.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

FLOOR = """
import sys, polars as pl
pl.read_ndjson(sys.argv[1]).write_parquet(sys.argv[2])
"""


def write_log(path: Path, rows: int, seed: int = 0) -> None:
    """A valid simple_spread-shaped log: 3 agents, 25 steps per episode."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        written = 0
        episode = 0
        while written < rows:
            for step in range(25):
                for agent in range(3):
                    if written >= rows:
                        break
                    record = {
                        "episode_id": f"bench-{episode:07d}",
                        "step": step,
                        "agent_id": f"agent_{agent}",
                        "obs": [round(rng.uniform(-2, 2), 6) for _ in range(18)],
                        "action": rng.randrange(5),
                        "reward": round(rng.uniform(-3, 0), 6),
                        "terminated": False,
                        "truncated": step == 24,
                        "policy_id": "bench",
                    }
                    out.write(orjson.dumps(record) + b"\n")
                    written += 1
            episode += 1


def child_rss(cmd: list[str]) -> tuple[float, int, str, float]:
    """Run under /usr/bin/time-like accounting: a fresh interpreter that reports the child's
    wall time, peak RSS, output and CPU seconds (user + system, all its threads)."""
    wrapper = (
        "import resource, runpy, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(dt, u.ru_maxrss, p.returncode, u.ru_utime + u.ru_stime)\n"
        "sys.stderr.write(p.stderr)\n"
        "sys.stdout.write(p.stdout)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    first, _, rest = proc.stdout.partition("\n")
    seconds, rss, code, cpu = first.split()
    if int(code) != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr}")
    return float(seconds), int(rss), rest, float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per measurement; best kept, all printed"
    )
    args = parser.parse_args()
    foresight = str(Path(sys.executable).parent / "foresight")
    results = []
    with tempfile.TemporaryDirectory(prefix="foresight-bench-") as tmp:
        for rows in args.rows:
            log = Path(tmp) / f"spread-{rows}.jsonl"
            write_log(log, rows)
            size_mb = log.stat().st_size / 2**20
            floor, ingest = [], []
            for i in range(args.repeat):
                out = Path(tmp) / f"floor-{rows}-{i}.parquet"
                floor.append(child_rss([sys.executable, "-c", FLOOR, str(log), str(out)]))
                store = Path(tmp) / f"store-{rows}-{i}"
                ingest.append(
                    child_rss(
                        [
                            foresight,
                            "--store",
                            str(store),
                            "ingest",
                            str(log),
                            "--dataset",
                            "bench",
                            "--json",
                        ]
                    )
                )
                summary = json.loads(ingest[-1][2])
                assert summary["accepted"] == rows and summary["quarantined"] == 0, summary
            f_best = min(floor, key=lambda r: r[0])
            i_best = min(ingest, key=lambda r: r[0])
            # Floor and ingest run in turns, so each pair saw about the same load: the spread
            # of the pair ratios says how noisy the machine was.
            pairs = sorted(f[0] / i[0] for f, i in zip(floor, ingest, strict=True))
            result = {
                "rows": rows,
                "file_mb": round(size_mb, 1),
                "floor_s": round(f_best[0], 2),
                "floor_rows_per_s": round(rows / f_best[0]),
                "floor_peak_rss_mb": round(f_best[1] / 1024),
                "ingest_s": round(i_best[0], 2),
                "ingest_rows_per_s": round(rows / i_best[0]),
                "ingest_peak_rss_mb": round(i_best[1] / 1024),
                "ratio_vs_floor": round(f_best[0] / i_best[0], 2),
                "pair_ratios": [round(r, 2) for r in pairs],
                "floor_s_all": [round(r[0], 2) for r in floor],
                "ingest_s_all": [round(r[0], 2) for r in ingest],
                # CPU seconds are less sensitive to other load than wall time: the work done.
                "floor_cpu_s_all": [round(r[3], 2) for r in floor],
                "ingest_cpu_s_all": [round(r[3], 2) for r in ingest],
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
            results.append(result)
            print(json.dumps(result), flush=True)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
