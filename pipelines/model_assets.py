"""Dagster assets for the models: train + evaluate + register, a quality check, promotion.

One model asset per model family (``<kind>_model``, built by :func:`model_asset` from the
family table) calls :func:`foresight.training.loop.workflow.train_and_register` and reports
the new version, its dataset lineage and its metrics next to the baselines. Its blocking
asset check ``beats_baselines`` fails when the model does not beat every baseline, and a
failed check stops the run before ``staging_models``: a model that fails is never promoted.
Its run config is :class:`TrainAssetConfig`, derived from ``TrainConfig`` (same fields,
defaults and descriptions).

``offline_rl_model`` trains the offline-RL peer, whose family has its own loop, on the same
dataset (run config :class:`OfflineRLAssetConfig`, from ``OfflineRLTrainConfig``).
``closed_loop_evaluation`` plays the staging models' anticipatory team against greedy, bc
and that peer; its blocking check ``beats_reactive`` lets only a team that beats all three
with disjoint 95% intervals reach production.

(No ``from __future__ import annotations``: Dagster reads these annotations at import.)
"""

import os
from dataclasses import fields
from typing import Optional

import dagster as dg
import pydantic

from foresight.datasets.catalog import resolve_ref
from foresight.pipelines.assets import trajectory_dataset
from foresight.pipelines.resources import ForesightStore
from foresight.training.families import FAMILIES, ModelFamily
from foresight.training.loop.config import OfflineRLTrainConfig
from foresight.training.loop.options import options
from foresight.training.loop.train import TrainConfig
from foresight.training.loop.workflow import (
    REACTIVE,
    beats_reactive,
    run_arena_registered,
    train_and_register,
)
from foresight.training.registry import ModelRegistry

CHECK = "beats_baselines"


def config_field(option) -> tuple:
    """A config dataclass's option as a Dagster config field: its type, default and help."""
    kind = Optional[option.base] if option.optional else option.base  # noqa: UP045 (Dagster)
    return kind, pydantic.Field(default=option.default, description=option.help or None)


DATASET = (str, pydantic.Field("spread", description="name (latest), name@N or name@tag"))
"""The ``dataset`` field of a training asset's run config."""

TrainAssetConfig = pydantic.create_model(
    "TrainAssetConfig",
    __base__=dg.Config,
    __doc__="The dataset, every TrainConfig field (same defaults), and the evaluation's size.",
    dataset=DATASET,
    **{o.name: config_field(o) for o in options(TrainConfig)},
    eval_max_starts=(
        int,
        pydantic.Field(2048, description="held-out start points of rollouts and imagination"),
    ),
    eval_samples=(int, pydantic.Field(16, description="imagined futures per start point")),
)


def _as(cls: type, config: dg.Config):
    """The dataclass ``cls`` from the run config that mirrors its fields."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def _train_config(config: TrainAssetConfig) -> TrainConfig:
    return _as(TrainConfig, config)


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


def asset_name(kind: str) -> str:
    """``world`` -> ``world_model`` (Dagster names allow no '-')."""
    return f"{kind.replace('-', '_')}_model"


def model_asset(fam: ModelFamily) -> dg.AssetsDefinition:
    """The asset that trains, evaluates and registers a model of ``fam`` (``<kind>@N``).

    A family that imagines with another's model takes that family's asset as input: the
    version this run registered (``behavior@N``, not an alias that may still point at the
    previous cycle's) drives the other agents in its evaluation, and its card records it.
    """
    name = asset_name(fam.name)
    upstream = asset_name(fam.imagines_with) if fam.imagines_with else None

    @dg.asset(
        name=name,
        group_name="models",
        deps=[trajectory_dataset],
        ins={upstream: dg.AssetIn()} if upstream else None,
        kinds={"pytorch"},
        check_specs=[dg.AssetCheckSpec(CHECK, asset=name, blocking=True)],
        description=f"{fam.name} model: {fam.description}; registered as {fam.name}@N.",
    )
    def train_model(
        context: dg.AssetExecutionContext,
        config: TrainAssetConfig,
        foresight_store: ForesightStore,
        **inputs: str,
    ):
        ref = inputs[upstream] if upstream else None
        if ref:
            context.log.info(f"imagination uses {ref}")
        yield from _train_asset(fam.name, context, config, foresight_store, behavior_ref=ref)

    return train_model


MODEL_ASSETS: dict[str, dg.AssetsDefinition] = {  # the shared loop's families
    k: model_asset(f) for k, f in FAMILIES.items() if f.trainer is None
}
"""Family -> its model asset."""
behavior_model = MODEL_ASSETS["behavior"]
world_model = MODEL_ASSETS["world"]

OfflineRLAssetConfig = pydantic.create_model(
    "OfflineRLAssetConfig",
    __base__=dg.Config,
    __doc__="The dataset and every OfflineRLTrainConfig field (same defaults).",
    dataset=DATASET,
    **{o.name: config_field(o) for o in options(OfflineRLTrainConfig)},
)


def _peer_config(config: OfflineRLAssetConfig) -> OfflineRLTrainConfig:
    return _as(OfflineRLTrainConfig, config)


@dg.asset(
    name=asset_name("offline-rl"),
    group_name="models",
    deps=[trajectory_dataset],
    kinds={"pytorch"},
    description="The offline-RL peer (TorchRL's discrete CQL, one network shared by the "
    "agents) on the same dataset: a team the staging models must beat in "
    "closed_loop_evaluation; registered as offline-rl@N.",
)
def offline_rl_model(
    context: dg.AssetExecutionContext, config: OfflineRLAssetConfig, foresight_store: ForesightStore
) -> dg.Output:
    store = foresight_store.store()
    table, version = resolve_ref(config.dataset, store)
    spec = table.spec(version)
    if spec is not None and not spec.action.discrete:  # its Q-network needs discrete actions
        context.log.info(f"no offline-RL peer for {spec.action.describe()} actions")
        return dg.Output(None, metadata={"skipped": f"{spec.action.describe()} actions"})
    result = FAMILIES["offline-rl"].train_and_register()(
        config.dataset, store=store, config=_peer_config(config), progress=False
    )
    gate = result["quality_gate"]
    # Its own gate (finite losses, a closed-loop return above random's) does not stop the
    # run: it decides nothing about the world and behavior models. A weak peer would make
    # the closed-loop gate easier, so its metrics and gate are in the metadata.
    context.log.info(f"registered {result['model']} from {result['dataset']}; gate {gate}")
    return dg.Output(
        result["model"],
        metadata={
            "model": result["model"],
            "dataset": result["dataset"],
            "train_seconds": result["training"]["seconds"],
            "metrics": dg.MetadataValue.json(result["metrics"]),
            "baselines": dg.MetadataValue.json(result["baselines"]),
            "quality_gate": dg.MetadataValue.json(gate),
        },
    )


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
    controllers: list[str] = [
        "random",
        "greedy",
        "bc",
        "offline-rl",
        "anticipatory",
        "scripted-anticipation",
    ]


@dg.asset(
    group_name="models",
    deps=[staging_models],
    ins={"offline_rl_model": dg.AssetIn()},
    check_specs=[
        dg.AssetCheckSpec("beats_reactive", asset="closed_loop_evaluation", blocking=True)
    ],
    description="Arena episodes with the staging models: anticipatory against reactive teams.",
)
def closed_loop_evaluation(
    context: dg.AssetExecutionContext,
    config: ArenaAssetConfig,
    foresight_store: ForesightStore,
    offline_rl_model: Optional[str],  # noqa: UP045 (Dagster reads it)
):
    # A dataset without a peer (continuous actions) is gated against the reactive teams.
    without = () if offline_rl_model else ("offline-rl",)
    result = run_arena_registered(
        config.env,
        config.episodes,
        [t for t in config.controllers if t not in without],
        store=foresight_store.store(),
        world_ref="world@staging",
        behavior_ref="behavior@staging",
        seed=config.seed,
        offline_rl_ref=offline_rl_model,
    )
    passed, failures = beats_reactive(
        result, against=tuple(t for t in REACTIVE if t not in without)
    )
    table = {
        t: {
            "mean_return": r["mean_return"],
            "ci95": list(r["ci95"]),
            "episodes": r["episodes"],
            "decisions_per_s": r.get("decisions_per_s"),
        }
        for t, r in result["controllers"].items()
    }
    context.log.info(f"arena: {table}")
    staged = {role: ref for role, ref in result["models"].items() if role != "offline-rl"}
    yield dg.Output(
        staged,  # what production_models promotes: the peer is a yardstick, never served
        metadata={
            "env": config.env,
            "episodes": config.episodes,
            "seed": config.seed,
            "models": dg.MetadataValue.json(result["models"]),
            "teams": dg.MetadataValue.json(table),
            "gap": dg.MetadataValue.json(result.get("gap") or {}),
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
        behavior_model,
        world_model,
        offline_rl_model,
        staging_models,
        closed_loop_evaluation,
        production_models,
    ),
)

retrain_schedule = dg.ScheduleDefinition(
    name="retrain_schedule",
    job=train_job,
    cron_schedule=os.environ.get("FORESIGHT_RETRAIN_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrains both models and the offline-RL peer on the latest dataset version "
    "(cron: FORESIGHT_RETRAIN_CRON).",
)
