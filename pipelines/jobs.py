"""What the pipeline's jobs run, and the local Dagster instance they run on.

One list of assets and checks, used by the Dagster definitions (``definitions.defs``) and by
the flywheel, which runs ``ingest_job`` and ``train_job`` itself; one local instance, used by
``make demo``, ``foresight flywheel`` and the benchmarks.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from foresight.datasets.storage import Store
from foresight.pipelines import model_assets as m
from foresight.pipelines.assets import ingest_job, trajectory_dataset
from foresight.pipelines.promotion import not_worse_than_production

ASSETS = [
    trajectory_dataset,
    m.behavior_model,
    m.world_model,
    m.offline_rl_model,
    m.staging_models,
    m.closed_loop_evaluation,
    m.production_models,
]
ASSET_CHECKS = [not_worse_than_production]
JOBS = [ingest_job, m.train_job]


def pipeline_jobs(resources: dict[str, Any]) -> dg.Definitions:
    """``ingest_job`` and ``train_job`` with every asset and check they run, resolvable."""
    return dg.Definitions(assets=ASSETS, asset_checks=ASSET_CHECKS, jobs=JOBS, resources=resources)


def local_instance(store: Store) -> dg.DagsterInstance:
    """The persistent local Dagster instance (SQLite): ``$DAGSTER_HOME``, else
    ``<store>/dagster`` (``.foresight/dagster`` for an S3 store), so ``dagster dev`` shows
    what ran."""
    if not os.environ.get("DAGSTER_HOME"):
        home = os.path.join(".foresight" if store.is_s3 else store.root, "dagster")
        os.makedirs(home, exist_ok=True)
        config = os.path.join(home, "dagster.yaml")
        if not os.path.exists(config):
            with open(config, "w") as f:
                f.write("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = os.path.abspath(home)
    return dg.DagsterInstance.get()
