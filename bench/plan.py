"""Planner latency and the closed-loop arena headline.

    python bench/plan.py --store /tmp/arena/store --prepare          # data + models, once
    python bench/plan.py --store /tmp/arena/store --episodes 200 --out bench/results/arena.md

``--prepare`` generates mixed-policy episodes of each env, ingests them and trains and
registers a world and a behavior model per env (the settings are below, printed in the
report). Then: the planner's decision latency for every agent of a simple_spread team
(default :class:`PlannerConfig`, CPU), and arena runs: simple_spread with every controller
and mixed teams, simple_reference and simple_tag with fewer episodes. JSON + PNG reports go
under ``<store>/reports/arena/``; a markdown summary goes to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foresight.datasets import Store, ingest_logs
from foresight.datasets.sources.generate import generate_episodes
from foresight.training.agents.arena import run_arena
from foresight.training.agents.planning import Planner, PlannerConfig, history_from_episode
from foresight.training.loop.train import TrainConfig
from foresight.training.loop.workflow import train_and_register
from foresight.training.models.behavior_model import BehaviorModelConfig
from foresight.training.models.world_model import WorldModelConfig
from foresight.training.registry import (
    ModelRegistry,
    RegistryError,
    load_registered,
)

ENVS = {
    # env: (dataset, episodes generated, data seed, world epochs, behavior epochs)
    "simple_spread": ("spread4k", 4000, 1, 30, 8),
    "simple_reference": ("reference", 1500, 0, 15, 6),
    "simple_tag": ("tag", 1500, 0, 15, 6),
}
WORLD = dict(d_model=64, n_layers=2, n_heads=4, reward_weight=10.0)
"""Smaller than the default (128) so that planning fits 50 ms on 2 CPU cores; a 10x reward
weight because the planner ranks plans by predicted reward."""
BEHAVIOR = dict(context=8, d_model=64)
PLANNERS = {
    "simple_spread": PlannerConfig(),
    "simple_reference": PlannerConfig(pulses=(1,)),
    "simple_tag": PlannerConfig(),
}
"""simple_reference has 50 actions (move x word): one pulse length keeps it to 99 plans."""


def prepare(store: Store, envs: list[str], seed: int = 0) -> None:
    """Generate, ingest, train and register a world and a behavior model for each env."""
    for env in envs:
        dataset, episodes, data_seed, world_epochs, behavior_epochs = ENVS[env]
        logs = Path(store.root) / "landing" / dataset
        generate_episodes(env=env, episodes=episodes, policy="mixed", out=str(logs), seed=data_seed)
        ingest_logs([str(logs)], dataset, store)
        for kind, epochs, mc in (
            ("behavior", behavior_epochs, BehaviorModelConfig(**BEHAVIOR)),
            ("world", world_epochs, WorldModelConfig(**WORLD)),
        ):
            config = TrainConfig(epochs=epochs, device="cpu", seed=seed, patience=5)
            r = train_and_register(
                kind,
                dataset,
                store,
                config,
                mc,
                name=f"{kind}-{dataset}",
                context1_baseline=False,  # (a baseline of the behavior family only)
                eval_max_starts=256,
            )
            print(f"trained {r['model']} on {r['dataset']}: {json.dumps(r['metrics'])}")


def models_for(store: Store, env: str, refs: dict[str, tuple[str, str]]):
    dataset = ENVS[env][0]
    world_ref, behavior_ref = refs.get(env, (f"world-{dataset}", f"behavior-{dataset}"))
    try:
        world, wmv = load_registered(world_ref, store)
        behavior, bmv = load_registered(behavior_ref, store)
    except RegistryError:
        return None
    return world, behavior, wmv, bmv


def latency(planner: Planner, repeats: int, seed: int = 0) -> dict[str, float]:
    """Wall time of one decide() for every agent of a team, over states of greedy episodes."""
    from foresight.datasets.sources.generate import make_env
    from foresight.datasets.sources.policies import make_policy

    env = make_env("simple_spread")
    policy = make_policy("greedy", "simple_spread")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    policy.reset(rng, env.agents)
    agents = list(env.agents)
    seen, taken, times = [np.stack([obs[a] for a in agents])], [], []
    planner.decide(history_from_episode(agents, seen, taken, planner.context), agents)  # warm
    while len(times) < repeats:
        history = history_from_episode(agents, seen, taken, planner.context)
        t0 = time.perf_counter()
        planner.decide(history, agents)
        times.append(time.perf_counter() - t0)
        actions = {a: policy.act(a, obs[a]) for a in agents}
        obs, _, _, _, _ = env.step(actions)
        taken.append(np.array([actions[a] for a in agents]))
        seen.append(np.stack([obs[a] for a in agents]))
        if not env.agents:
            obs, _ = env.reset(seed=seed + len(times))
            seen, taken = [np.stack([obs[a] for a in agents])], []
    ms = sorted(1000 * t for t in times)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": ms[int(0.9 * (len(ms) - 1))],
        "mean_ms": statistics.fmean(ms),
        "repeats": repeats,
        "agents": len(agents),
    }


def fmt_row(team: str, r: dict, gap: dict) -> str:
    over = gap.get("over_greedy_in_G", {}).get(team)
    over_s = f"{over:+.2f} G" if over is not None else ""
    lo, hi = r["ci95"]
    return (
        f"| {team} | {r['mean_return']:.1f} | [{lo:.1f}, {hi:.1f}] | {over_s} | "
        f"{r['decisions_per_s']:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/foresight-arena/store")
    ap.add_argument("--prepare", action="store_true", help="generate data and train models")
    ap.add_argument("--prepare-only", action="store_true", help="stop after --prepare")
    ap.add_argument("--episodes", type=int, default=200, help="simple_spread episodes")
    ap.add_argument("--other-episodes", type=int, default=40, help="reference/tag episodes")
    ap.add_argument("--envs", default="simple_spread,simple_reference,simple_tag")
    ap.add_argument("--latency-repeats", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--models",
        action="append",
        default=[],
        help="ENV=WORLD_REF,BEHAVIOR_REF to use other registered models (repeatable)",
    )
    ap.add_argument("--out", default=None, help="markdown summary (e.g. bench/results/arena.md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    envs = args.envs.split(",")
    refs = {}
    for item in args.models:
        env, _, pair = item.partition("=")
        world_ref, _, behavior_ref = pair.partition(",")
        refs[env] = (world_ref, behavior_ref)
    if args.prepare:
        prepare(store, envs, args.seed)
    if args.prepare_only:
        return

    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    lines = [
        "# Arena: anticipatory agents vs reactive ones",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__} on CPU with {args.threads} thread(s); "
        f"load average at start {load_before[0]:.2f}, {load_before[1]:.2f}, {load_before[2]:.2f} "
        "(the machine is shared)",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- models: world {WORLD}, behavior {BEHAVIOR}; data: mixed-policy episodes "
        f"{ {e: ENVS[e][1] for e in envs} }",
        "- team return: per episode, the sum over agents of each agent's episode return; "
        "95% CI of the mean (normal approximation); G = greedy - random; "
        "decisions/s = agent decisions per second of controller time",
        "",
    ]
    report_dir = Path(store.uri("reports", "arena", f"{started:%Y%m%dT%H%M%S}"))
    results = {}
    for env in envs:
        loaded = models_for(store, env, refs)
        teams = ["random", "greedy", "scripted-anticipation"]
        kwargs = {}
        if loaded is not None:
            world, behavior, wmv, bmv = loaded
            teams += ["bc", "anticipatory", "anticipatory+greedy", "scripted-anticipation+greedy"]
            if env == "simple_spread":
                teams.append("anticipatory-known-reward")
            kwargs = dict(
                world=world,
                behavior=behavior,
                world_card=wmv.card,
                behavior_card=bmv.card,
                planner_config=PLANNERS[env],
            )
            lines.append(
                f"## {env}: world {wmv.ref}, behavior {bmv.ref} "
                f"(trained on {wmv.card.dataset.resolved})"
            )
        else:
            lines.append(f"## {env}: no models in the store; scripted controllers only")
        if env == "simple_spread" and loaded is not None:
            planner = Planner(world, behavior, PLANNERS[env], wmv.card, bmv.card)
            lat = latency(planner, args.latency_repeats, args.seed)
            results["latency"] = lat
            lines += [
                "",
                f"Planner latency, one `decide()` for all {lat['agents']} agents, "
                f"{asdict(PLANNERS[env])}: median **{lat['median_ms']:.1f} ms**, "
                f"p90 {lat['p90_ms']:.1f} ms, mean {lat['mean_ms']:.1f} ms "
                f"over {lat['repeats']} states.",
            ]
        episodes = args.episodes if env == "simple_spread" else args.other_episodes
        t0 = time.perf_counter()
        r = run_arena(
            env, episodes, teams, seed=args.seed, out_dir=report_dir, progress=True, **kwargs
        )
        results[env] = r
        lines += [
            "",
            f"{episodes} episodes, seed {args.seed}, {time.perf_counter() - t0:.0f} s; "
            f"G = {r['gap'].get('G', float('nan')):.1f}; report {r['files'].get('json')}",
            "",
            "| team | mean team return | 95% CI | over greedy | decisions/s |",
            "|---|---|---|---|---|",
            *[fmt_row(t, v, r["gap"]) for t, v in r["controllers"].items()],
            "",
        ]
        print("\n".join(lines[-len(r["controllers"]) - 4 :]), flush=True)
    load_after = os.getloadavg()
    lines.append(
        f"Load average at the end: {load_after[0]:.2f}, {load_after[1]:.2f}, {load_after[2]:.2f}."
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    _ = ModelRegistry  # registry errors are how a missing model shows


if __name__ == "__main__":
    main()
