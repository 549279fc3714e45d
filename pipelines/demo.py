"""The main job on the embedded default (``make demo``): local store, local Dagster, CPU.

1. Record simple_spread episodes with the mixed scripted policy into the landing zone.
2. Let the landing sensor see the new files and run the ingest job in process, on a local
   Dagster instance kept under the store (``<store>/dagster``), so ``dagster dev`` shows it.
3. Print the dataset's versions and stats.
4. Run ``train_job`` in process on the same instance: both models and the offline-RL peer
   with the defaults of ``foresight train``, each model's gate, staging, the closed-loop
   arena (the gate: beat greedy, bc and the peer) and production.
5. Print the arena (the headline): reactive teams against the anticipatory one.
6. Serve those models (production, or the candidates where no production models are yet)
   and call every endpoint through the client.
7. Run one round of ``flywheel_job``: the served anticipatory team plays and records
   episodes through the service, they are ingested, both models retrained (and the peer)
   and gated, and the service reloads what was promoted. Print what changed.

Every run, materialization and check lands in that instance: ``dagster dev`` afterwards
shows them with their metadata. (When a model's gate stops ``train_job`` before the world
model, as with ``--fast``, the demo trains that model outside Dagster so that it can go on.)

Running it again re-generates the same scripted files (seeded); the ingest sees their
checksums and adds none of them (the flywheel round adds the episodes it plays).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_EPISODES = 1_200
"""Scripted episodes the demo records: both models pass their gates with the defaults on
1,200 (world rollout_mse_10 0.049 against linear's 0.080; BENCHMARKS.md "make demo") in
~7 minutes of training here, where 2,000 took ~12."""
DEMO_ARENA_EPISODES = 40


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(
    episodes: int = DEFAULT_EPISODES,
    dataset: str = "spread",
    seed: int = 0,
    train: bool = True,
    fast: bool = False,
    epochs: int | None = None,
    arena_episodes: int | None = None,
) -> dict:
    """The whole demo; ``episodes``, ``epochs`` and ``arena_episodes`` size it (tests: tiny)."""
    import dagster as dg

    from foresight.datasets import catalog
    from foresight.datasets.sources.generate import generate_episodes
    from foresight.datasets.storage import Store
    from foresight.pipelines.cli import _show_text, _table
    from foresight.pipelines.definitions import defs
    from foresight.pipelines.jobs import local_instance
    from foresight.pipelines.sensors import landing_sensor

    store = Store()
    store.ensure()
    print(f"store: {store.root}")

    _banner(f"1. record {episodes} simple_spread episodes (mixed scripted policy) into landing/")
    landing = store.landing_uri(dataset)
    present = store.fs.list_files(landing)
    if present:
        print(f"landing already holds {len(present)} file(s) from an earlier run; not regenerating")
    else:
        gen = generate_episodes(
            env="simple_spread", episodes=episodes, policy="mixed", out=landing, seed=seed
        )
        print(f"wrote {gen.rows} rows in {len(gen.files)} files to {landing} ({gen.seconds:.1f}s)")

    _banner("2. landing sensor -> ingest job (Dagster, in process)")
    instance = local_instance(store)
    context = dg.build_sensor_context(
        instance=instance, resources={"foresight_store": defs.resources["foresight_store"]}
    )
    evaluation = landing_sensor(context)
    requests = getattr(evaluation, "run_requests", None) or []
    if not requests:
        print("no new landing files: every file is already in the dataset")
    job = defs.resolve_job_def("ingest_job")
    for request in requests:
        start = time.perf_counter()
        run_config = {
            **request.run_config,
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        }
        result = job.execute_in_process(run_config=run_config, instance=instance, tags=request.tags)
        meta = result.asset_materializations_for_node("trajectory_dataset")[0].metadata
        print(
            f"run {result.run_id[:8]}: {request.tags.get('foresight/files')} file(s), "
            f"read {meta['rows_read'].value}, accepted {meta['rows_accepted'].value}, "
            f"quarantined {meta['rows_quarantined'].value}, already ingested "
            f"{meta['already_ingested'].value} file(s), version {meta['version'].value}"
            f"{' (new)' if meta['new_version'].value else ' (unchanged)'} "
            f"({time.perf_counter() - start:.1f}s)"
        )

    _banner(f"3. dataset {dataset}: versions and stats")
    versions = catalog.dataset_versions(dataset, store)
    print(
        _table(
            versions, ["version", "rows_added", "rows", "read", "quarantined", "files", "ingest_id"]
        )
    )
    stats = catalog.dataset_stats(dataset, store)
    print(_show_text(stats))
    if not train:
        return {"dataset": dataset, "stats": stats}

    if arena_episodes is None:
        arena_episodes = 4 if fast else DEMO_ARENA_EPISODES
    trained = train_models(store, dataset, instance, fast, epochs, arena_episodes)
    query_service(store, dataset, trained["models"])
    played = min(arena_episodes, DEMO_FLYWHEEL_EPISODES)
    changed = flywheel_round(store, dataset, instance, fast, epochs, played, arena_episodes)
    return {"dataset": dataset, "stats": stats, **trained, "flywheel": changed}


def train_models(
    store, dataset: str, instance, fast: bool, epochs: int | None, arena_episodes: int
) -> dict:
    """Steps 4-5: ``train_job`` in process on the local Dagster instance: both models with
    the defaults of `foresight train`, each model's gate, staging, the closed-loop arena (the
    headline) and production. ``{"models": refs, "arena": result or None, "run_id": ...}``."""
    from foresight.pipelines.cli import _train_text, arena_text
    from foresight.pipelines.flywheel import FlywheelConfig, run_train_job
    from foresight.pipelines.resources import ForesightStore
    from foresight.training.loop.workflow import registered_result
    from foresight.training.registry import ModelRegistry

    _banner(
        f"4. train_job (Dagster, in process): behavior and world models and the offline-RL "
        f"peer on {dataset} with the defaults of `foresight train`, their gates, then the "
        "closed-loop arena"
    )
    config = FlywheelConfig(
        dataset=dataset,
        gate_episodes=arena_episodes,
        train=demo_train_options(fast, epochs),
        offline_rl=demo_peer_options(fast),
    )
    latest = f"{dataset}@{catalog_latest(store, dataset)}"
    job = run_train_job(
        config,
        store,
        latest,
        instance,
        {"foresight_store": ForesightStore.of(store)},
        controllers=HEADLINE_TEAMS,
        tags={"foresight/demo": dataset},
        log_level=QUIET,
    )
    registry = ModelRegistry(store)
    for kind in ("behavior", "world"):
        if kind in job["candidates"]:
            print(_train_text(registered_result(registry.resolve(job["candidates"][kind]))))
    print(f"run {job['run_id'][:8]}: {'succeeded' if job['success'] else 'stopped'}", end="")
    print(f"; failed checks: {', '.join(job['failed'])}" if job["failed"] else "")
    if not job["success"] and not job["failed"]:
        print(f"train_job failed: {'; '.join(job['errors']) or 'see its logs'}")
    models = dict(job["candidates"])
    for kind in ("behavior", "world"):  # a blocking check stopped the run before this one
        if kind not in models:
            print(f"(train_job stopped before the {kind} model: training it outside Dagster)")
            result = train_outside(store, latest, kind, config.train, models.get("behavior"))
            print(_train_text(result))
            models[kind] = result["model"]
    if job["promoted"]:
        print(f"promoted to production: {', '.join(job['production'].values())}")
    elif len(job["production"]) == 2:
        print(f"production unchanged: {', '.join(job['production'].values())}")
        models = job["production"]
    _banner(f"5. the headline: {arena_episodes} simple_spread episodes per team")
    arena = job["arena"]
    if arena is None:  # a gate stopped the run before its arena: play outside it
        print(
            f"(the run stopped before its arena; playing {', '.join(models.values())} "
            "outside Dagster)"
        )
        arena = headline(store, models, arena_episodes)
    else:
        print(arena_text(arena))
    print(
        "(scripted-anticipation knows the others' true rule: the yardstick. "
        "`foresight arena --episodes 200` for tighter intervals.)"
    )
    return {"models": models, "arena": arena, "train_run": job["run_id"]}


QUIET = "CRITICAL"
"""Console log level of the demo's train and flywheel runs: a refused gate is an answer the
demo prints, not an error to dump; other failures are printed from the run's events."""
HEADLINE_TEAMS = ("random", "greedy", "bc", "offline-rl", "anticipatory", "scripted-anticipation")
DEMO_FLYWHEEL_EPOCHS = 5
"""Epochs of the demo's flywheel round, which fine-tunes the production models (to stay
within the demo's ~12 minutes; `foresight flywheel` retrains with the defaults)."""
DEMO_FLYWHEEL_PEER_STEPS = 10_000
"""Optimizer steps of the offline-RL peer the demo's flywheel round trains for its gate (a
quarter of the default, to stay within the demo's time; the headline's peer has them all)."""
DEMO_FLYWHEEL_EPISODES = 20
"""Episodes the demo's flywheel round plays through the service (its gates play as many as
the headline: with 20 a better candidate's interval still overlapped greedy's)."""


def flywheel_round(
    store,
    dataset: str,
    instance,
    fast: bool,
    epochs: int | None,
    episodes: int,
    gate_episodes: int | None = None,
) -> dict | None:
    """Step 7: one round of ``flywheel_job`` in process: serve production, play and record
    ``episodes`` over HTTP, ingest them, retrain, gate (``gate_episodes``, default
    ``episodes``), reload; print what changed."""
    from foresight.pipelines.cli import flywheel_text
    from foresight.pipelines.flywheel import flywheel_job, production, step_errors
    from foresight.pipelines.resources import ForesightStore

    _banner(
        f"7. one flywheel round (Dagster flywheel_job): serve production, play {episodes} "
        "episodes through the service and record them, ingest, retrain, gate, reload"
    )
    before = production(store, missing_ok=True)
    if len(before) < 2:
        print("no production models (a gate refused them above): the flywheel needs them; skipped")
        return None
    train = demo_train_options(fast, epochs or (None if fast else DEMO_FLYWHEEL_EPOCHS))
    versions_before = catalog_latest(store, dataset)
    run = flywheel_job.execute_in_process(
        run_config={
            "ops": {
                "flywheel_rounds": {
                    "config": {
                        "dataset": dataset,
                        "rounds": 1,
                        "episodes": episodes,
                        "gate_episodes": gate_episodes or episodes,
                        "train": train,
                        "offline_rl": demo_peer_options(fast, DEMO_FLYWHEEL_PEER_STEPS),
                        "fine_tune": True,
                        "log_level": QUIET,
                    }
                }
            },
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
        instance=instance,
        resources={"foresight_store": ForesightStore.of(store)},
        tags={"foresight/demo": dataset},
        raise_on_error=False,
    )
    if not run.success:
        errors = "; ".join(step_errors(run)) or "see its logs"
        print(f"flywheel run {run.run_id[:8]} failed: {errors}")
        return None
    result = run.output_for_node("flywheel_rounds")
    print(flywheel_text(result))
    [r] = result["rounds"]
    gate = r["gate"]
    now = ", ".join(gate["production"].values())
    print(
        f"what changed: {dataset}@{versions_before} -> {r['dataset_version']}, "
        f"+{r['arena']['recorded']} episodes played through the service (served episodes are "
        f"now {r['served_share']:.0%} of its {r['episodes']}); candidates "
        f"{', '.join(gate['candidates'].values()) or 'none'} {gate['verdict']}"
        + (f" (failed: {', '.join(gate['failed'])})" if gate["failed"] else "")
        + (
            f"; production {', '.join(before.values())} -> {now}"
            if gate["promoted"]
            else f"; production unchanged ({now})"
        )
    )
    return {"run_id": run.run_id, **result}


def train_outside(store, ref: str, kind: str, options: dict, behavior_ref: str | None) -> dict:
    """Train and register a ``kind`` model on ``ref`` without Dagster (``options``: what
    :func:`demo_train_options` gives)."""
    from dataclasses import fields

    from foresight.training.loop.train import TrainConfig
    from foresight.training.loop.workflow import train_and_register

    names = {f.name for f in fields(TrainConfig)}
    return train_and_register(
        kind,
        ref,
        store=store,
        config=TrainConfig(**{k: v for k, v in options.items() if k in names}),
        progress=False,
        behavior_ref=behavior_ref,
        eval_max_starts=options.get("eval_max_starts", 2048),
        eval_samples=options.get("eval_samples", 16),
    )


def catalog_latest(store, dataset: str) -> int:
    from foresight.datasets.catalog import DatasetTable

    return DatasetTable(store, dataset).latest_version()


def headline(store, models: dict[str, str], episodes: int) -> dict:
    """The arena: reactive teams against the anticipatory one, with 95% intervals."""
    from foresight.pipelines.cli import arena_text
    from foresight.training.loop.workflow import run_arena_registered
    from foresight.training.registry import ModelRegistry

    teams = list(HEADLINE_TEAMS)
    if not ModelRegistry(store).version_numbers("offline-rl"):  # the run stopped before it
        teams.remove("offline-rl")
    result = run_arena_registered(
        "simple_spread",
        episodes,
        teams,
        store=store,
        world_ref=models["world"],
        behavior_ref=models["behavior"],
    )
    print(arena_text(result))
    return result


def demo_train_options(fast: bool, epochs: int | None = None) -> dict:
    """``train_job``'s model options: the defaults a user gets from ``foresight train``
    (``fast``: seconds, for tests) with the evaluation the demo can afford; ``epochs``
    overrides the epochs of both models."""
    options = {"eval_max_starts": 256, "eval_samples": 4} if fast else {"eval_max_starts": 1024}
    if fast:
        options |= {"epochs": epochs or 1, "max_steps_per_epoch": 3, "batch_size": 64}
    elif epochs:
        options["epochs"] = epochs
    return options


def demo_peer_options(fast: bool, steps: int | None = None) -> dict:
    """The offline-RL peer's options in the demo's train_job: the defaults of `foresight
    train offline-rl` (``steps`` overrides them; ``fast``: a few steps, for tests)."""
    if fast:
        return {"steps": 20, "eval_every": 20, "eval_episodes": 0, "device": "cpu"}
    return {} if steps is None else {"steps": steps}


def history_from_episode(store, dataset: str, steps: int) -> dict:
    """The first ``steps`` steps of one episode, as the service's history fields."""
    import polars as pl

    from foresight.datasets import open_dataset

    frame = open_dataset(dataset, store).filter(pl.col("step") < steps)
    first = frame.select(pl.col("episode_id").min()).collect().item()
    rows = frame.filter(pl.col("episode_id") == first).sort("agent_id", "step").collect()
    obs, past = {}, {}
    for agent, group in rows.group_by("agent_id", maintain_order=True):
        obs[agent[0]] = group["obs"].to_list()
        past[agent[0]] = group["action"].to_list()[:-1]
    return {"obs": obs, "past_actions": past}


def query_service(store, dataset: str, models: dict[str, str]) -> None:
    """Start the service on the demo models, call every endpoint through the client, stop."""
    import tempfile

    from foresight.datasets.s3server import free_ports
    from foresight.serving.client import ForesightClient
    from foresight.serving.launch import ServerProcess
    from foresight.training.registry import ModelCard

    _banner(f"6. serve {models['world']} and {models['behavior']}; query every endpoint")
    port = free_ports(1)[0]
    log = Path(tempfile.gettempdir()) / f"foresight-demo-serve-{port}.log"
    history = history_from_episode(store, dataset, steps=8)
    agents = sorted(history["obs"])
    with ServerProcess(port, log, world=models["world"], behavior=models["behavior"]) as server:
        print(f"service ready at {server.url} (log: {log})")
        with ForesightClient(server.url) as client:
            loaded = client.models()
            for m in loaded.models:
                card = ModelCard.from_dict(m.card)  # the served card is the stored JSON
                lineage = card.dataset.resolved if card.dataset else None
                print(f"/models: {m.role} = {m.ref} (trained on {lineage})")
            [pred] = client.predict_actions([history])
            for agent in agents:
                probs = pred.agents[agent].probs
                print(f"/predict_actions: {agent} next-action probs {[round(p, 2) for p in probs]}")
            action = {agent: int(history["past_actions"][agent][-1]) for agent in agents}
            [nxt] = client.predict_next([{**history, "action": action}])
            for agent in agents:
                a = nxt.agents[agent]
                print(
                    f"/predict_next: {agent} reward {a.reward:.3f}, termination "
                    f"{a.termination_prob:.3f}, next obs[:4] {[round(x, 3) for x in a.mean[:4]]}"
                )
            futures = client.imagine({**history, "horizon": 5, "samples": 4})
            returns = [sum(sum(f.agents[a].rewards) for a in agents) for f in futures.futures]
            print(
                f"/imagine: {len(futures.futures)} futures of {futures.horizon} steps; "
                f"imagined team returns {[round(r, 2) for r in returns]}"
            )
    print("service stopped")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=DEFAULT_EPISODES)
    parser.add_argument("--dataset", default="spread")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-train", action="store_true", help="stop after the dataset")
    parser.add_argument("--fast", action="store_true", help="a few training steps (smoke test)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of both models (default: TrainConfig's)"
    )
    parser.add_argument(
        "--arena-episodes",
        type=int,
        default=None,
        help=f"arena episodes per team (default {DEMO_ARENA_EPISODES}; 4 with --fast)",
    )
    args = parser.parse_args()
    if args.episodes < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--episodes and --epochs must be >= 1")
    if args.arena_episodes is not None and args.arena_episodes < 2:
        parser.error("--arena-episodes must be >= 2 (a 95% interval)")
    run(
        args.episodes,
        args.dataset,
        args.seed,
        train=not args.no_train,
        fast=args.fast,
        epochs=args.epochs,
        arena_episodes=args.arena_episodes,
    )


if __name__ == "__main__":
    main()
