"""Closed loop in the hard cases, through the whole CLI chain: many agents, partial views,
and every scenario with the defaults a user gets.

    python bench/hard_cases.py --out runs/many6 --agents 6 [--episodes 300] [--arena 200]
    python bench/hard_cases.py --out runs/partial --obs-radius 0.35
    python bench/hard_cases.py --out runs/tag --env simple_tag --episodes 2000 \
        --controllers random,greedy,bc,offline-rl,anticipatory,scripted-anticipation

Runs, in a fresh store under ``OUT/store`` (the dataset named after ``--env``, default
simple_spread): ``foresight generate --policy mixed`` (with
``--agents N`` and ``--obs-radius R`` when given; ``--episodes`` logged episodes),
``foresight ingest``, ``foresight train world`` and ``foresight train behavior`` with their
defaults (the two at once; then ``foresight train offline-rl`` when the controllers name
``offline-rl``), then ``foresight arena`` at the same size and view with random, greedy, bc
and anticipatory (``--controllers``) over ``--arena`` episodes. Prints and writes
``OUT/hard-cases.json``: each step's wall time, each team's mean return with its 95%
interval, G = greedy - random and (anticipatory - greedy) / G.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(ROOT / ".venv" / "bin" / "foresight")]


def run(args: list[str], env: dict[str, str]) -> tuple[dict, float]:
    """One CLI command with ``--json``; its parsed output and wall time."""
    started = time.perf_counter()
    done = subprocess.run([*CLI, *args, "--json"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/many6")
    parser.add_argument("--env", default="simple_spread")
    parser.add_argument("--agents", type=int, default=None, help="team size (default 3)")
    parser.add_argument("--obs-radius", type=float, default=None, help="default: full view")
    parser.add_argument("--controllers", default="random,greedy,bc,anticipatory")
    parser.add_argument("--episodes", type=int, default=300, help="logged mixed episodes")
    parser.add_argument("--arena", type=int, default=200, help="arena episodes per team")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FORESIGHT_STORE": str(out / "store")}
    times: dict[str, float] = {}
    logs = out / "logs"
    case = [*(["--agents", str(args.agents)] if args.agents else [])]
    case += ["--obs-radius", str(args.obs_radius)] if args.obs_radius else []
    _, times["generate"] = run(
        [
            "generate", "--env", args.env, *case,
            "--episodes", str(args.episodes), "--policy", "mixed", "--out", str(logs),
            "--seed", str(args.seed + 1),
        ],
        env,
    )  # fmt: skip
    dataset = args.env
    _, times["ingest"] = run(["ingest", str(logs), "--dataset", dataset], env)
    started = time.perf_counter()
    jobs = {
        kind: subprocess.Popen(
            [*CLI, "train", kind, "--dataset", dataset, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind in ("world", "behavior")
    }
    trained = {}
    for kind, job in jobs.items():
        stdout, stderr = job.communicate()
        if job.returncode:
            raise SystemExit(f"train {kind} failed:\n{stderr[-3000:]}")
        trained[kind] = json.loads(stdout)
    times["train (world and behavior at once)"] = time.perf_counter() - started
    if "offline-rl" in args.controllers.split(","):  # the offline-RL peer, on the same version
        trained["offline-rl"], times["train offline-rl"] = run(
            ["train", "offline-rl", "--dataset", dataset], env
        )
    arena, times["arena"] = run(
        [
            "arena", "--env", args.env, *case,
            "--episodes", str(args.arena), "--seed", str(args.seed),
            "--controllers", args.controllers,
            "--world", "world", "--behavior", "behavior", "--offline-rl", "offline-rl",
        ],
        env,
    )  # fmt: skip
    teams = arena["controllers"]
    g = teams["greedy"]["mean_return"] - teams["random"]["mean_return"]
    ratio = (teams["anticipatory"]["mean_return"] - teams["greedy"]["mean_return"]) / g
    report = {
        "env": args.env,
        "agents": arena["agents"],
        "opponents": arena.get("opponents"),
        "obs_radius": args.obs_radius,
        "logged_episodes": args.episodes,
        "arena_episodes": args.arena,
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "teams": {
            t: {
                "mean": r["mean_return"],
                "ci95": r["ci95"],
                "decisions_per_s": r["decisions_per_s"],
            }
            for t, r in teams.items()
        },
        "G": g,
        "anticipatory_over_greedy_in_G": ratio,
        "trained": trained,
        "load_average": os.getloadavg(),
    }
    (out / "hard-cases.json").write_text(json.dumps(report, indent=2, default=str))
    for t, r in report["teams"].items():
        lo, hi = r["ci95"]
        print(f"{t:14s} {r['mean']:8.2f}  [{lo:.2f}, {hi:.2f}]")
    print(f"G = {g:.2f}; (anticipatory - greedy) / G = {ratio:.2f}; seconds {report['seconds']}")


if __name__ == "__main__":
    main()
