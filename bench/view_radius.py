"""How much a partial view costs the scripted teams: choosing the radius of the hard case.

    python bench/view_radius.py [--episodes 200] [--radii 0.5,0.4,0.35,0.3] [--out FILE]

Plays ``foresight arena`` teams that need no models (random, greedy, scripted-anticipation)
at the full view and at each radius, same start states (arena seed 0), and prints each
team's mean team return with its 95% interval, how much of its full-view return greedy
loses (``return / full - 1``, returns are negative), and G = greedy - random at that view.
Issue 14 asks for the radius where greedy loses at least 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from foresight.training.agents.arena import run_arena

TEAMS = ["random", "greedy", "scripted-anticipation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--radii", default="0.5,0.4,0.35,0.3")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    views: list[float | None] = [None, *(float(r) for r in args.radii.split(","))]
    rows = []
    started = time.perf_counter()
    for radius in views:
        result = run_arena("simple_spread", args.episodes, TEAMS, seed=0, obs_radius=radius)
        teams = result["controllers"]
        rows.append(
            {
                "obs_radius": radius,
                "teams": {
                    t: {"mean": r["mean_return"], "ci95": r["ci95"]} for t, r in teams.items()
                },
                "G": result["gap"]["G"],
            }
        )
    full = rows[0]["teams"]["greedy"]["mean"]
    print(f"{'view':>8s} " + " ".join(f"{t:>32s}" for t in TEAMS) + "  greedy loses       G")
    for row in rows:
        row["greedy_loses"] = row["teams"]["greedy"]["mean"] / full - 1
        cells = [
            f"{r['mean']:8.1f} [{r['ci95'][0]:7.1f}, {r['ci95'][1]:7.1f}]"
            for r in row["teams"].values()
        ]
        view = "full" if row["obs_radius"] is None else f"r={row['obs_radius']:g}"
        print(
            f"{view:>8s} " + " ".join(f"{c:>32s}" for c in cells)
            + f"  {row['greedy_loses']:12.1%} {row['G']:7.1f}"
        )  # fmt: skip
    report = {
        "episodes": args.episodes,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": os.getloadavg(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
