"""From a dataset reference to a registered, evaluated model version, and back.

What ``foresight train`` / ``foresight evaluate`` and the Dagster assets call: resolve the
dataset version, train, evaluate on the held-out episodes next to the baselines, write the
report, and register the model with a card whose lineage names the exact dataset version
and code. Nothing reaches the registry unless training and evaluation both finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import polars as pl

from foresight.datasets.catalog import DatasetTable, resolve_ref
from foresight.datasets.schema import DatasetSpec
from foresight.datasets.storage import Store
from foresight.training.families import family
from foresight.training.loop.train import TrainConfig, config_dict, model_state, ranks, train
from foresight.training.registry import (
    DatasetLineage,
    ModelCard,
    ModelRegistry,
    ModelVersion,
    QualityGate,
    RegistryError,
    TrainingSummary,
    load_registered,
)

SPLIT_FILE = "split.json"


def runs_root() -> Path:
    """Local folder for checkpoints (``FORESIGHT_RUNS``, default ``./.foresight/runs``)."""
    return Path(os.environ.get("FORESIGHT_RUNS", ".foresight/runs"))


def run_dir(
    kind: str, dataset: str, version: int, config: TrainConfig, model_config: Any, store: Store
) -> Path:
    """One folder per (store, kind, dataset version, configs): ``--resume`` finds it again.

    The store is part of the key: ``spread@1`` of two stores are different data, and a run
    on one must never resume from (or overwrite) the other's checkpoints.
    """
    key = json.dumps(
        {
            "store": store.root if store.is_s3 else str(Path(store.root).resolve()),
            "train": config_dict(config),
            "model": model_config
            if model_config is None or isinstance(model_config, dict)
            else config_dict(model_config),
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return runs_root() / f"{kind}-{dataset}@{version}-{digest}"


def load_frame(ref: str, store: Store) -> tuple[DatasetTable, int, pl.DataFrame, DatasetSpec]:
    """The rows and spec of a dataset version; clear errors for unknown or empty datasets."""
    table, version = resolve_ref(ref, store)
    spec = table.spec(version)
    if spec is None:
        raise ValueError(f"dataset {table.name}@{version} has no spec in its metadata")
    frame = table.scan(version).collect()
    if frame.is_empty():
        raise ValueError(f"dataset {table.name}@{version} is empty: nothing to train on")
    return table, version, frame, spec


def quality_gate(kind: str, result: dict[str, Any]) -> tuple[bool, list[str]]:
    """Does the model beat every baseline on its family's gate metrics? (passed, failures).

    Each family names its metrics (``gate_metrics``: world models ``mse`` and
    ``rollout_mse_10``, behavior models ``nll``); lower is better. The gate decides
    promotion, so anything it cannot measure refuses: a NaN metric (the model's or a
    baseline's), or a gate metric no baseline reports.
    """
    metrics = family(kind).gate_metrics
    model, baselines = result["model"], result["baselines"]
    failures = []
    for metric in metrics:
        mine = _number(model.get(metric))
        if math.isnan(mine):
            failures.append(f"{metric}: model has no value (NaN or missing): cannot compare")
            continue
        compared = [(n, _number(v[metric])) for n, v in baselines.items() if metric in v]
        if not compared:
            failures.append(f"{metric}: no baseline reports it: nothing to beat")
        for name, theirs in compared:
            if math.isnan(theirs):
                failures.append(f"{metric}: {name} is NaN: cannot compare")
            elif not mine < theirs:
                failures.append(f"{metric}: model {mine:.4g} does not beat {name} {theirs:.4g}")
    return not failures, failures


def _imagination_model(store: Store, kind: str, dataset: str, ref: str | None) -> Any:
    """The model (of family ``kind``) that drives the other agents when evaluating a family
    that imagines with one: ``ref``, else the staging, production or latest ``kind`` model
    trained on ``dataset``. (None, None) when there is none."""
    registry = ModelRegistry(store)
    candidates = [ref] if ref else [f"{kind}@staging", f"{kind}@production", kind]
    for candidate in candidates:
        try:
            mv = registry.resolve(candidate)
        except RegistryError:
            if ref:
                raise
            continue
        if mv.card.dataset is not None and mv.card.dataset.name == dataset:
            model, _ = load_registered(candidate, store)
            return model, mv.ref
    return None, None


def train_and_register(
    kind: str,
    dataset_ref: str,
    store: Store | None = None,
    config: TrainConfig | None = None,
    model_config: Any = None,
    name: str | None = None,
    resume: bool = False,
    progress: bool | None = None,
    behavior_ref: str | None = None,
    context1_baseline: bool = True,
    eval_max_starts: int = 2048,
    eval_samples: int = 16,
) -> dict[str, Any]:
    """Train ``kind`` on a dataset version, evaluate it, write its report, register it.

    A family with a loop of its own (:attr:`~foresight.training.families.ModelFamily.trainer`)
    trains, gates and registers by it, with ``config`` of its own options class; the
    options after ``progress`` are the shared loop's. ``eval_max_starts`` caps the held-out
    start points of rollouts and imagination;
    ``eval_samples`` is the number of imagined futures per start. Under torchrun every rank
    trains (DistributedDataParallel); only rank 0 evaluates and registers, and the other
    ranks return ``{"rank": r, "model": None}``.
    """
    from foresight.training.evaluation.evaluate import write_report

    store = store or Store.from_env()
    fam = family(kind)
    if config is not None and not isinstance(config, fam.train_config_cls):
        raise TypeError(
            f"{kind} models train with {fam.train_config_cls.__name__} options, "
            f"got {type(config).__name__}"
        )
    if fam.trainer is not None:  # a family with a loop of its own (offline-rl: TorchRL's)
        own = fam.train_and_register()
        return own(dataset_ref, store, config, model_config, name, resume, progress)
    config = config or TrainConfig()
    table, version, frame, spec = load_frame(dataset_ref, store)
    init = None
    if config.init_from:  # the exact version goes into the card and the run folder's key
        init, start = load_registered(config.init_from, store, kind=kind)
        config = replace(config, init_from=start.ref)
    workdir = run_dir(kind, table.name, version, config, model_config, store)
    started = time.time()
    result = train(
        kind,
        frame,
        spec,
        config,
        model_config,
        workdir,
        resume=resume,
        progress=progress,
        init=init,
    )

    extra: dict[str, Any] = {}
    behavior_used = None
    behavior = None
    if fam.context1_baseline and context1_baseline and result.model_config.context > 1:
        # "The same model with a context of 1 step": trained the same way, only the context differs.
        # A fine-tuned model's baseline starts from the same model, with a context of 1.
        one_step = train(
            kind,
            frame,
            spec,
            replace(config, context=1),
            None if init is not None else replace(result.model_config, context=1),
            workdir / "context1",
            resume=resume,
            progress=progress,
            init=init,
        )
        extra["context1"] = one_step.model
    rk = ranks()
    if not rk.main:
        # Distributed training: rank 0 evaluates and registers; the other ranks are done.
        return {"rank": rk.rank, "model": None}
    if fam.imagines_with:
        behavior, behavior_used = _imagination_model(
            store, fam.imagines_with, table.name, behavior_ref
        )
    evaluation = fam.evaluate(
        result.model,
        frame,
        spec,
        result.heldout_episode_ids,
        behavior=behavior,
        extra_baselines=extra,
        train_episode_ids=result.train_episode_ids,
        seed=config.seed,
        device=config.device,
        max_starts=eval_max_starts,
        n_samples=eval_samples,
    )
    passed, failures = quality_gate(kind, evaluation)
    model_name = name or kind
    card = ModelCard(
        kind=kind,
        dataset=DatasetLineage(
            ref=dataset_ref, name=table.name, version=version, resolved=f"{table.name}@{version}"
        ),
        spec=spec.to_dict(),
        train_config=config_dict(config),
        model_config=asdict(result.model_config),
        metrics=evaluation["model"],
        baselines=evaluation["baselines"],
        evaluation=evaluation["meta"],
        quality_gate=QualityGate(passed=passed, failures=failures),
        training=TrainingSummary(
            epochs_run=len(result.history),
            best_epoch=result.best_epoch,
            seconds=round(time.time() - started, 1),
            final=result.history[-1] if result.history else {},
            n_train_episodes=len(result.train_episode_ids),
            n_val_episodes=len(result.val_episode_ids),
            n_calibration_episodes=len(result.calib_episode_ids),
            history=result.history,
        ),
        behavior_model_for_imagination=behavior_used,
    )
    registry = ModelRegistry(store)
    split = {
        "train": result.train_episode_ids,
        "val": result.val_episode_ids,
        "calibration": result.calib_episode_ids,
    }
    mv = registry.register(
        model_name,
        model_state(result.model),
        card,
        extra_files={SPLIT_FILE: json.dumps(split).encode()},
    )
    report = _write_report(store, mv, evaluation, result.history, write_report)
    return registered_result(mv, report)


def registered_result(mv, report: dict[str, str] | None = None) -> dict[str, Any]:
    """What :func:`train_and_register` returns (and ``foresight train`` prints) for the
    registered version ``mv``: its metrics next to the baselines, its gate, its training."""
    card = mv.card
    return {
        "model": mv.ref,
        "version": mv.version,
        "dataset": card.dataset.resolved if card.dataset else None,
        "metrics": card.metrics,
        "baselines": card.baselines,
        "quality_gate": card.quality_gate.to_dict() if card.quality_gate else {},
        "training": card.training.to_dict() if card.training else {},
        "report": report or {},
    }


def _write_to_store(store: Store, rel: str, write: Any) -> dict[str, str]:
    """Run ``write(folder) -> {name: path}`` into ``<store>/<rel>``; on S3 via a temp folder."""
    if not store.is_s3:
        return write(store.uri(rel))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for key, path in write(tmp).items():
            target = store.uri(rel, Path(path).name)
            store.fs.upload(path, target)
            out[key] = target
        return out


def _write_report(store: Store, mv: ModelVersion, evaluation, history, writer) -> dict:
    """Report JSON + PNGs under ``<store>/reports/<name>@<version>/``."""
    return _write_to_store(
        store, f"reports/{mv.name}@{mv.version}", lambda out: writer(evaluation, history, out)
    )


def evaluate_registered(
    model_ref: str,
    dataset_ref: str | None = None,
    store: Store | None = None,
    behavior_ref: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a registered model on held-out episodes (of its own or another dataset).

    On its own dataset version the held-out episodes are the validation split recorded at
    training time minus the episodes a world model was calibrated on; on another version
    they are every episode the model was never fitted on.
    """
    from foresight.training.evaluation.evaluate import write_report

    store = store or Store.from_env()
    model, mv = load_registered(model_ref, store)
    card = mv.card
    fam = family(card.kind)
    if fam.evaluate is None:
        raise ValueError(
            f"{mv.ref} ({card.kind}) was evaluated by its own training loop, and its card "
            "holds those metrics; to compare it, play it in the arena: `foresight arena "
            f"--controllers {card.kind},greedy --{card.kind} {mv.ref}`"
        )
    if dataset_ref is None and not (card.dataset and card.dataset.resolved):
        raise ValueError(f"the card of {mv.ref} names no dataset version; pass a dataset")
    ref = dataset_ref or card.dataset.resolved
    table, version, frame, spec = load_frame(ref, store)
    split = json.loads(
        store.fs.read_bytes(store.uri("models", mv.name, str(mv.version), SPLIT_FILE))
    )
    trained_on = set(split["train"]) | set(split.get("calibration", []))
    held_out = sorted(set(frame["episode_id"].unique().to_list()) - trained_on)
    if not held_out:
        raise ValueError(
            f"{table.name}@{version} holds no episode that {mv.ref} was not trained on; "
            "evaluate on a dataset version with new episodes"
        )
    behavior = None
    behavior_used = None
    if fam.imagines_with:
        behavior, behavior_used = _imagination_model(
            store, fam.imagines_with, table.name, behavior_ref
        )
    evaluation = fam.evaluate(
        model,
        frame,
        spec,
        held_out,
        behavior=behavior,
        train_episode_ids=sorted(trained_on & set(frame["episode_id"].unique().to_list())) or None,
        device=device,
    )
    passed, failures = quality_gate(card.kind, evaluation)
    history = card.training.history if card.training else []
    report = _write_report(store, mv, evaluation, history, write_report)
    return {
        "model": mv.ref,
        "dataset": f"{table.name}@{version}",
        "metrics": evaluation["model"],
        "baselines": evaluation["baselines"],
        "meta": evaluation["meta"],
        "quality_gate": {"passed": passed, "failures": failures},
        "behavior_model_for_imagination": behavior_used,
        "report": report,
    }


def run_arena_registered(
    env: str,
    episodes: int,
    controllers: list[str],
    store: Store | None = None,
    world_ref: str | None = "world@production",
    behavior_ref: str | None = "behavior@production",
    seed: int = 0,
    factories: dict[str, Any] | None = None,
    progress: bool = False,
    offline_rl_ref: str | None = "offline-rl",
    partners: str | None = None,
    agents: int | None = None,
    obs_radius: float | None = None,
    objective: str = "learned",
) -> dict[str, Any]:
    """The closed-loop arena with registered models; report under ``<store>/reports/arena/``.

    ``objective``: what the anticipatory teams score imagined futures by
    (:mod:`foresight.training.agents.objectives`; the learned reward head by default).

    ``agents``: the team size where the env takes one; None plays at the loaded models' own
    (models at another size are refused). ``obs_radius``: agents see that far (None: the
    models' own view); models must have been trained on the same view.

    ``partners`` (e.g. ``"switching"``) drives every agent but each team's first (see
    :func:`~foresight.training.agents.arena.run_arena`).

    Models are loaded only when a controller needs them (``bc``, ``anticipatory``;
    ``offline-rl`` loads ``offline_rl_ref``, by default the latest offline-rl version).
    """

    from foresight.training.agents.arena import run_arena, write_arena_report
    from foresight.training.agents.planning import PlannerConfig

    store = store or Store.from_env()
    teams = [*controllers, *([partners] if partners else [])]
    parts = {p for team in teams for p in team.split("+")} - set(factories or {})
    needs_models = bool(parts & {"bc", "anticipatory", "anticipatory-known-reward"})
    world = behavior = world_card = behavior_card = None
    refs: dict[str, str] = {}
    if needs_models:
        if world_ref:
            world, mv = load_registered(world_ref, store, kind="world")
            world_card, refs["world"] = mv.card, mv.ref
        if behavior_ref:
            behavior, mv = load_registered(behavior_ref, store, kind="behavior")
            behavior_card, refs["behavior"] = mv.card, mv.ref
    offline_rl = None
    if "offline-rl" in parts and offline_rl_ref:
        offline_rl, mv = load_registered(offline_rl_ref, store, kind="offline-rl")
        refs["offline-rl"] = mv.ref
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rel = f"reports/arena/{env}-{stamp}"
    result = run_arena(
        env,
        episodes,
        controllers,
        seed,
        world=world,
        behavior=behavior,
        planner_config=None if objective == "learned" else PlannerConfig(objective=objective),
        world_card=world_card,
        behavior_card=behavior_card,
        offline_rl=offline_rl,
        factories=factories,
        progress=progress,
        partners=partners,
        agents=agents,
        obs_radius=obs_radius,
    )
    result["files"] = _write_to_store(store, rel, lambda out: write_arena_report(result, out))
    result["models"] = refs
    return result


REACTIVE = ("greedy", "bc", "offline-rl")
"""The teams the anticipatory team must beat on the way to production: the reactive ones,
and the offline-RL peer trained on the same logs."""


def beats_reactive(
    result: dict[str, Any], team: str = "anticipatory", against: tuple[str, ...] = REACTIVE
) -> tuple[bool, list[str]]:
    """Does ``team`` beat every reactive team with disjoint 95% intervals? (passed, failures).

    Disjoint means ``team``'s interval lies wholly above the other's: its low end above the
    other's high end. The gate decides promotion, so what it cannot establish refuses:
    ``team`` or any team of ``against`` that did not play, and NaN returns or intervals.
    """
    teams = result["controllers"]
    failures = [f"{name} did not play" for name in (team, *against) if name not in teams]
    if team not in teams:
        return False, failures
    low, mean = _number(teams[team]["ci95"][0]), _number(teams[team]["mean_return"])
    if math.isnan(low) or math.isnan(mean):
        failures.append(f"{team} has a NaN return or interval: cannot compare")
    for other in against:
        if other not in teams or math.isnan(low):
            continue
        high, theirs = _number(teams[other]["ci95"][1]), _number(teams[other]["mean_return"])
        if math.isnan(high) or math.isnan(theirs):
            failures.append(f"{other} has a NaN return or interval: cannot compare")
        elif not low > high:
            failures.append(
                f"{team} {mean:.2f} (95% CI low {low:.2f}) does not beat {other} "
                f"{theirs:.2f} (95% CI high {high:.2f})"
            )
    return not failures, failures


def _number(value: Any) -> float:
    """A metric as a float; None (a NaN that went through JSON) becomes NaN."""
    return math.nan if value is None else float(value)
