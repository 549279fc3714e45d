"""Dagster assets: thin calls into ``datasets`` that report what happened as metadata.

(No ``from __future__ import annotations`` in Dagster modules: Dagster reads the
annotations of assets and configs at definition time.)
"""

import dagster as dg

from foresight.datasets.catalog import DatasetTable
from foresight.datasets.ingest import describe_result, ingest_logs
from foresight.pipelines.resources import ForesightStore


class IngestConfig(dg.Config):
    """Which landing files go into which dataset (the sensor fills both in)."""

    dataset: str = "spread"
    files: list[str] = []
    """Source files or folders; empty means the dataset's whole landing folder."""


@dg.asset(
    group_name="lake",
    kinds={"deltalake", "polars"},
    description="Trajectory dataset (Delta table): every ingest of landing files is one version.",
)
def trajectory_dataset(
    context: dg.AssetExecutionContext, config: IngestConfig, foresight_store: ForesightStore
) -> dg.MaterializeResult:
    store = foresight_store.store()
    sources = config.files or [store.landing_uri(config.dataset)]
    result = ingest_logs(sources, config.dataset, store=store)
    context.log.info(describe_result(result))
    # This ingest's own version when it made one (another ingest may have committed since).
    current = result.version
    if current is None:
        current = DatasetTable(store, config.dataset).latest_version()
    return dg.MaterializeResult(
        metadata={
            "dataset": config.dataset,
            "version": current if current is not None else -1,
            "new_version": result.version is not None,
            "rows_read": result.read,
            "rows_accepted": result.accepted,
            "rows_quarantined": result.quarantined,
            "files": len(result.files),
            "already_ingested": len(result.already_ingested),
            "ingest_id": result.ingest_id,
            "top_reasons": dg.MetadataValue.json(result.reasons),
            "notes": dg.MetadataValue.json(result.notes),
        }
    )


ingest_job = dg.define_asset_job("ingest_job", selection=[trajectory_dataset])
