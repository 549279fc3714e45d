"""Does the flywheel pay? Models trained on scripted logs only, then R flywheel rounds.

Makes a fresh store under --out: ``--scripted`` mixed-policy simple_spread episodes ingested
as ``spread@0``, a behavior and a world model trained on it (default model configs,
``--epochs``) and promoted to production by hand (round 0 is what scripted logs give); then
``run_flywheel`` (what ``foresight flywheel`` runs) for ``--rounds`` rounds. Prints the
per-round table and the anticipatory team's return per round with its 95% interval; writes
``flywheel.json`` (and the PNG) under --out.

  PYTHONPATH=. .venv/bin/python bench/flywheel.py --out /tmp/flywheel-bench
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scripted", type=int, default=200, help="scripted episodes in spread@0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=24, help="served episodes a round")
    ap.add_argument("--gate-episodes", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--world-epochs", type=int, default=None, help="default: --epochs")
    ap.add_argument("--eval-max-starts", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--broken",
        action="store_true",
        help="on the store a finished run left under --out: train a candidate on corrupted "
        "logs (random actions, shuffled rewards) through train_job and show it refused",
    )
    args = ap.parse_args()
    if args.broken:
        return broken(args)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["FORESIGHT_STORE"] = str(out / "store")
    os.environ.setdefault("FORESIGHT_RUNS", str(out / "runs"))
    os.environ["DAGSTER_HOME"] = str(out / "dagster")
    (out / "dagster").mkdir(exist_ok=True)
    (out / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    from foresight.datasets import ingest_logs
    from foresight.datasets.sources.generate import generate_episodes
    from foresight.datasets.storage import Store
    from foresight.pipelines.cli import flywheel_text
    from foresight.pipelines.flywheel import FlywheelConfig, run_flywheel
    from foresight.pipelines.jobs import local_instance
    from foresight.training.loop.train import TrainConfig
    from foresight.training.loop.workflow import train_and_register
    from foresight.training.registry import ModelRegistry

    store = Store(str(out / "store"))
    started = time.time()
    logs = out / "logs"
    generate_episodes(
        env="simple_spread", episodes=args.scripted, policy="mixed", out=str(logs), seed=args.seed
    )
    ingest_logs([str(logs)], "spread", store)
    train = {
        "epochs": args.epochs,
        "device": "cpu",
        "seed": args.seed,
        "eval_max_starts": args.eval_max_starts,
        "eval_samples": args.eval_samples,
    }
    epochs = {"behavior": args.epochs, "world": args.world_epochs or args.epochs}
    for kind in ("behavior", "world"):  # the world model imagines with the behavior model
        result = train_and_register(
            kind,
            "spread@0",
            store=store,
            config=TrainConfig(epochs=epochs[kind], device="cpu", seed=args.seed),
            progress=False,
            behavior_ref="behavior@1",  # what the world model imagines with
            eval_max_starts=args.eval_max_starts,
            eval_samples=args.eval_samples,
        )
        ModelRegistry(store).promote(result["model"], "production")
        print(f"{result['model']} on spread@0, gate {result['quality_gate']}", flush=True)
    print(f"setup {time.time() - started:.0f} s; load average {os.getloadavg()}", flush=True)

    config = FlywheelConfig(
        dataset="spread",
        rounds=args.rounds,
        episodes=args.episodes,
        gate_episodes=args.gate_episodes,
        seed=args.seed,
        train=train,
        train_by_kind={"world": {"epochs": epochs["world"]}},
    )
    t = time.time()
    result = run_flywheel(config, store, local_instance(store), echo=lambda s: print(s, flush=True))
    result["bench"] = vars(args) | {
        "seconds": time.time() - t,
        "load_average_end": os.getloadavg(),
    }
    (out / "flywheel.json").write_text(json.dumps(result, indent=2, default=str))
    print(flywheel_text(result))
    print(f"flywheel {time.time() - t:.0f} s; load average {os.getloadavg()}")


def broken(args: argparse.Namespace) -> None:
    """A candidate trained on corrupted data goes through train_job's gates; production must
    not move."""
    import random

    out = Path(args.out).resolve()
    os.environ["FORESIGHT_STORE"] = str(out / "store")
    os.environ["DAGSTER_HOME"] = str(out / "dagster")
    from foresight.datasets import ingest_logs
    from foresight.datasets.storage import Store
    from foresight.pipelines.flywheel import (
        FlywheelConfig,
        production,
        train_run_config,
    )
    from foresight.pipelines.jobs import local_instance, pipeline_jobs
    from foresight.pipelines.resources import ForesightStore

    store = Store(str(out / "store"))
    rng = random.Random(args.seed)
    src, dst = out / "logs", out / "corrupt"
    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.name.endswith(".jsonl"):
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            rewards = [r["reward"] for r in rows]
            rng.shuffle(rewards)
            for r, reward in zip(rows, rewards, strict=True):
                r["action"], r["reward"] = rng.randrange(5), reward
            (dst / f.name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            (dst / f.name).write_text(f.read_text())
    ingest_logs([str(dst)], "spread-corrupt", store)
    before = production(store)
    config = FlywheelConfig(
        dataset="spread",
        gate_episodes=args.gate_episodes,
        seed=args.seed,
        train={"epochs": args.epochs, "device": "cpu", "seed": args.seed}
        | {"eval_max_starts": args.eval_max_starts, "eval_samples": args.eval_samples},
    )
    job = pipeline_jobs({"foresight_store": ForesightStore.of(store)}).resolve_job_def("train_job")
    run = job.execute_in_process(
        run_config=train_run_config(config, "spread-corrupt@0"),
        instance=local_instance(store),
        raise_on_error=False,
    )
    for e in run.get_asset_check_evaluations():
        meta = {k: getattr(v, "value", v) for k, v in e.metadata.items()}
        print(f"{e.asset_key.path[-1]}.{e.check_name}: passed={e.passed} {meta}")
    after = production(store)
    print(f"run success={run.success}; production before {before}, after {after}")


if __name__ == "__main__":
    main()
