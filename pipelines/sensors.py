"""Sensors: the landing sensor ingests what arrives; the retrain sensor retrains on growth.

Landing: each new file under ``<store>/landing/<dataset>/`` (dropped by external systems, or
written by the service's ``POST /episodes``) is ingested once. The cursor holds the files
already requested, per dataset, so a restart does not request them again; the run key is
derived from the files, so Dagster itself also refuses to start the same request twice.

Retrain: once the production models' dataset holds FORESIGHT_RETRAIN_GROWTH (a share) more
episodes than the version they were trained on, ``train_job`` runs on its latest version;
its gates (baselines, the reactive teams in closed loop, then the candidate against production
on the same episodes: :mod:`foresight.pipelines.promotion`) decide whether the candidates are
promoted, and a service following the production aliases swaps them in.
"""

import hashlib
import json
import os

import dagster as dg

from foresight.datasets.catalog import NAME_RE, DatasetTable
from foresight.datasets.readers import source_format
from foresight.datasets.schema import SPEC_FILENAME
from foresight.pipelines.assets import ingest_job
from foresight.pipelines.model_assets import train_job
from foresight.pipelines.resources import ForesightStore
from foresight.training.registry import ModelRegistry, RegistryError

INGEST_TAG = "foresight/ingest"
"""Run tag holding the dataset an ingest run writes; the run queue allows one per value."""


def _hidden(uri: str, folder: str) -> bool:
    """A dot-name below the dataset's landing folder (the store root itself may be one,
    like the default ``.foresight``)."""
    rel = uri[len(folder.rstrip("/")) :].lstrip("/")
    return any(part.startswith(".") for part in rel.split("/"))


def new_landing_files(store, seen: dict[str, list[str]]) -> dict[str, list[str]]:
    """Log files per dataset folder under landing/ not in ``seen`` and not ingested yet.

    Files that an earlier ingest (by this sensor or any other way) already recorded in the
    dataset's lineage are not requested again, so a fresh cursor does not re-request them.
    """
    fresh: dict[str, list[str]] = {}
    for folder in store.fs.list_dirs(store.landing_uri()):
        dataset = folder.rstrip("/").rsplit("/", 1)[-1]
        known = set(seen.get(dataset, []))
        if NAME_RE.match(dataset):
            for ingest in DatasetTable(store, dataset).completed_ingests():
                known.update(f["uri"] for f in ingest.get("files", []))
        files = [
            f
            for f in store.fs.list_files(folder)
            if source_format(f)
            and not f.endswith(SPEC_FILENAME)
            and f not in known
            and not _hidden(f, folder)  # files being written (temp names) are skipped
        ]
        if files:
            fresh[dataset] = files
    return fresh


@dg.sensor(
    job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def landing_sensor(context: dg.SensorEvaluationContext, foresight_store: ForesightStore):
    seen: dict[str, list[str]] = json.loads(context.cursor) if context.cursor else {}
    fresh = new_landing_files(foresight_store.store(), seen)
    requests = []
    for dataset, files in sorted(fresh.items()):
        key = hashlib.sha256("\n".join([dataset, *files]).encode()).hexdigest()[:24]
        requests.append(
            dg.RunRequest(
                run_key=f"{dataset}:{key}",
                run_config={
                    "ops": {"trajectory_dataset": {"config": {"dataset": dataset, "files": files}}}
                },
                tags={
                    "foresight/dataset": dataset,
                    INGEST_TAG: dataset,  # one ingest run per dataset: infra/dagster.yaml
                    "foresight/files": str(len(files)),
                },
            )
        )
        seen[dataset] = sorted(set(seen.get(dataset, [])) | set(files))
    if not requests:
        return dg.SkipReason("no new landing files")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))


RETRAIN_GROWTH_ENV = "FORESIGHT_RETRAIN_GROWTH"
DEFAULT_RETRAIN_GROWTH = 0.25
"""Retrain once a dataset holds this share more episodes than the version the production
models were trained on (0.25: a quarter more)."""


def retrain_growth() -> float:
    """The share of new episodes that triggers a retrain (FORESIGHT_RETRAIN_GROWTH)."""
    raw = os.environ.get(RETRAIN_GROWTH_ENV, str(DEFAULT_RETRAIN_GROWTH))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{RETRAIN_GROWTH_ENV} must be a share such as 0.25, got {raw!r}") from exc
    if not value > 0:
        raise ValueError(f"{RETRAIN_GROWTH_ENV} must be > 0, got {value}")
    return value


def dataset_growth(store, since: dict[str, int] | None = None) -> dict:
    """How much the production models' dataset grew since they were trained on it.

    ``since`` (dataset -> version) holds the versions retrains were already requested for:
    the growth counts from the later of that and the production models' version, so a
    candidate the gates refused is retried only after another share of new data, not on
    every ingest. Returns ``dataset``, ``production`` (version trained on), ``baseline``
    (the version growth counts from), ``latest``, the episode counts and ``growth``; or
    ``reason`` when there is nothing to compare.
    """
    registry = ModelRegistry(store)
    try:
        world = registry.resolve("world@production")
    except RegistryError:
        return {"reason": "no world@production model yet"}
    lineage = world.card.get("dataset") or {}
    name, trained = lineage.get("name"), lineage.get("version")
    if not name or trained is None:
        return {"reason": f"{world.ref}'s card names no dataset version"}
    table = DatasetTable(store, name)
    latest = table.latest_version()
    baseline = max(int(trained), (since or {}).get(name, -1))
    out = {"dataset": name, "production": int(trained), "baseline": baseline, "latest": latest}
    if latest is None or latest <= baseline:
        return out | {"reason": f"{name} has no version after {name}@{baseline}"}
    before = len(table.episode_ids(baseline))
    now = len(table.episode_ids(latest))
    growth = (now - before) / before if before else float("inf")
    return out | {"episodes_before": before, "episodes_now": now, "growth": growth}


@dg.sensor(
    job=train_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING
)
def retrain_sensor(context: dg.SensorEvaluationContext, foresight_store: ForesightStore):
    """Retrain on the latest version of the production models' dataset once it has grown
    by FORESIGHT_RETRAIN_GROWTH; the gates of ``train_job`` decide promotion."""
    since: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    threshold = retrain_growth()
    growth = dataset_growth(foresight_store.store(), since)
    if "growth" not in growth:
        return dg.SkipReason(growth["reason"])
    name, latest = growth["dataset"], growth["latest"]
    summary = (
        f"{name}: {growth['episodes_before']} -> {growth['episodes_now']} episodes from "
        f"{name}@{growth['baseline']} to {name}@{latest} (+{growth['growth']:.0%}; "
        f"retrain at +{threshold:.0%})"
    )
    if growth["growth"] < threshold:
        return dg.SkipReason(summary)
    ref = f"{name}@{latest}"
    context.log.info(f"retrain: {summary}")
    request = dg.RunRequest(
        run_key=f"retrain:{ref}",
        run_config={
            "ops": {
                asset: {"config": {"dataset": ref}}
                for asset in ("behavior_model", "world_model", "offline_rl_model")
            }
        },
        tags={
            "foresight/dataset": ref,
            "foresight/trigger": "growth",
            "foresight/growth": f"{growth['growth']:.4f}",
        },
    )
    since[name] = latest
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(since, sort_keys=True))
