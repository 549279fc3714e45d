"""Dagster assets for the models: train + evaluate + register, a quality check, promotion.

Each model asset calls :func:`foresight.training.loop.workflow.train_and_register` and reports the new
version, its dataset lineage and its metrics next to the baselines. Its blocking asset check
``beats_baselines`` fails when the model does not beat every baseline, and a failed check
stops the run before ``staging_models``: a model that fails is never promoted.

(No ``from __future__ import annotations``: Dagster reads these annotations at import.)
"""

import os

import dagster as dg

from foresight.pipelines.assets import trajectory_dataset
from foresight.pipelines.resources import ForesightStore
from foresight.training.loop.train import TrainConfig
from foresight.training.loop.workflow import (
    beats_reactive,
    run_arena_registered,
    train_and_register,
)
from foresight.training.registry import ModelRegistry

CHECK = "beats_baselines"


class TrainAssetConfig(dg.Config):
    """Training settings; the defaults are sized for the demo on 2 CPU cores."""

    dataset: str = "spread"
    """Dataset reference: name (latest), name@N or name@tag."""
    epochs: int = 8
    batch_size: int = 256
    lr: float = 2e-3
    context: int = 0
    """History length in steps; 0 keeps the model's default."""
    device: str = "auto"
    seed: int = 0
    max_steps_per_epoch: int = 0
    """Cap on optimizer steps per epoch; 0 means a full pass."""
    eval_max_starts: int = 2048
    """Held-out start points for rollout and imagination metrics."""
    eval_samples: int = 16
    """Imagined futures per start point."""


def _train_config(config: TrainAssetConfig) -> TrainConfig:
    return TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        context=config.context or None,
        device=config.device,
        seed=config.seed,
        max_steps_per_epoch=config.max_steps_per_epoch or None,
    )


def _metadata(result: dict) -> dict:
    rows = [{"name": "model", **result["metrics"]}]
    rows += [{"name": name, **values} for name, values in result["baselines"].items()]
    return {
        "model": result["model"],
        "dataset": result["dataset"],
        "best_epoch": result["training"]["best_epoch"],
        "epochs_run": result["training"]["epochs_run"],
        "train_seconds": result["training"]["seconds"],
        "metrics": dg.MetadataValue.json(result["metrics"]),
        "baselines": dg.MetadataValue.json(result["baselines"]),
        "vs_baselines": dg.MetadataValue.md(_markdown(rows)),
    }


def _markdown(rows: list[dict]) -> str:
    metrics = [k for k in rows[0] if k != "name"]
    lines = ["| | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for row in rows:
        cells = [f"{row.get(m):.4g}" if isinstance(row.get(m), float) else "-" for m in metrics]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _train_asset(
    kind: str,
    context,
    config: TrainAssetConfig,
    foresight_store: ForesightStore,
    behavior_ref: str | None = None,
):
    result = train_and_register(
        kind,
        config.dataset,
        store=foresight_store.store(),
        config=_train_config(config),
        progress=False,
        behavior_ref=behavior_ref,
        eval_max_starts=config.eval_max_starts,
        eval_samples=config.eval_samples,
    )
    gate = result["quality_gate"]
    context.log.info(f"registered {result['model']} from {result['dataset']}; gate {gate}")
    yield dg.Output(result["model"], metadata=_metadata(result))
    yield dg.AssetCheckResult(
        check_name=CHECK,
        passed=gate["passed"],
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"model": result["model"], "failures": dg.MetadataValue.json(gate["failures"])},
    )


@dg.asset(
    group_name="models",
    deps=[trajectory_dataset],
    kinds={"pytorch"},
    check_specs=[dg.AssetCheckSpec(CHECK, asset="behavior_model", blocking=True)],
    description="Behavior model: next-action distributions per agent; registered as behavior@N.",
)
def behavior_model(
    context: dg.AssetExecutionContext, config: TrainAssetConfig, foresight_store: ForesightStore
):
    yield from _train_asset("behavior", context, config, foresight_store)


@dg.asset(
    group_name="models",
    deps=[trajectory_dataset],
    ins={"behavior_model": dg.AssetIn()},
    kinds={"pytorch"},
    check_specs=[dg.AssetCheckSpec(CHECK, asset="world_model", blocking=True)],
    description="World model: next joint observation, rewards, termination; registered as world@N.",
)
def world_model(
    context: dg.AssetExecutionContext,
    config: TrainAssetConfig,
    foresight_store: ForesightStore,
    behavior_model: str,
):
    # The behavior model this run registered (behavior@N, not an alias that may still point at
    # the previous cycle's) drives the other agents in the imagination metrics; the card records it.
    context.log.info(f"imagination uses {behavior_model}")
    yield from _train_asset("world", context, config, foresight_store, behavior_ref=behavior_model)


@dg.asset(
    group_name="models",
    ins={"world_model": dg.AssetIn(), "behavior_model": dg.AssetIn()},
    description="Points the staging alias at models whose quality checks passed.",
)
def staging_models(
    context: dg.AssetExecutionContext,
    foresight_store: ForesightStore,
    world_model: str,
    behavior_model: str,
) -> dg.MaterializeResult:
    registry = ModelRegistry(foresight_store.store())
    moved = {}
    for ref in (world_model, behavior_model):
        mv = registry.resolve(ref)
        if not (mv.card.quality_gate and mv.card.quality_gate.passed):
            raise dg.Failure(f"{ref} failed its quality gate; not promoting")
        moved[mv.name] = registry.promote(ref, "staging")["to"]
        context.log.info(f"{mv.name}@staging -> {moved[mv.name]}")
    return dg.MaterializeResult(metadata={f"{name}@staging": v for name, v in moved.items()})


class ArenaAssetConfig(dg.Config):
    """The closed-loop evaluation of the staging models."""

    env: str = "simple_spread"
    episodes: int = 200
    seed: int = 0
    controllers: list[str] = ["random", "greedy", "bc", "anticipatory", "scripted-anticipation"]


@dg.asset(
    group_name="models",
    deps=[staging_models],
    check_specs=[
        dg.AssetCheckSpec("beats_reactive", asset="closed_loop_evaluation", blocking=True)
    ],
    description="Arena episodes with the staging models: anticipatory against reactive teams.",
)
def closed_loop_evaluation(
    context: dg.AssetExecutionContext, config: ArenaAssetConfig, foresight_store: ForesightStore
):
    result = run_arena_registered(
        config.env,
        config.episodes,
        list(config.controllers),
        store=foresight_store.store(),
        world_ref="world@staging",
        behavior_ref="behavior@staging",
        seed=config.seed,
    )
    passed, failures = beats_reactive(result)
    table = {
        t: {"mean_return": r["mean_return"], "ci95": list(r["ci95"])}
        for t, r in result["controllers"].items()
    }
    context.log.info(f"arena: {table}")
    yield dg.Output(
        result["models"],
        metadata={
            "env": config.env,
            "episodes": config.episodes,
            "models": dg.MetadataValue.json(result["models"]),
            "teams": dg.MetadataValue.json(table),
            "report": dg.MetadataValue.json(result.get("files", {})),
        },
    )
    yield dg.AssetCheckResult(
        check_name="beats_reactive",
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"failures": dg.MetadataValue.json(failures)},
    )


@dg.asset(
    group_name="models",
    ins={"closed_loop_evaluation": dg.AssetIn()},
    description="Points the production alias at the staging models that beat the reactive teams.",
)
def production_models(
    context: dg.AssetExecutionContext, foresight_store: ForesightStore, closed_loop_evaluation: dict
) -> dg.MaterializeResult:
    registry = ModelRegistry(foresight_store.store())
    moved = {}
    for role, ref in closed_loop_evaluation.items():
        moved[role] = registry.promote(ref, "production")["to"]
        context.log.info(f"{role}@production -> {moved[role]}")
    return dg.MaterializeResult(metadata={f"{role}@production": v for role, v in moved.items()})


train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.assets(
        behavior_model, world_model, staging_models, closed_loop_evaluation, production_models
    ),
)

retrain_schedule = dg.ScheduleDefinition(
    name="retrain_schedule",
    job=train_job,
    cron_schedule=os.environ.get("FORESIGHT_RETRAIN_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrains both models on the latest dataset version (cron: FORESIGHT_RETRAIN_CRON).",
)
