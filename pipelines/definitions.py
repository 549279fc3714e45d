"""Dagster entry point: ``dagster dev -m pipelines.definitions``."""

from __future__ import annotations

import dagster as dg

from pipelines.assets import ingest_job, trajectory_dataset
from pipelines.resources import ForesightStore
from pipelines.sensors import landing_sensor

defs = dg.Definitions(
    assets=[trajectory_dataset],
    jobs=[ingest_job],
    sensors=[landing_sensor],
    resources={
        "foresight_store": ForesightStore(
            root=dg.EnvVar("FORESIGHT_STORE").get_value(".foresight") or ".foresight",
            s3_endpoint=dg.EnvVar("FORESIGHT_S3_ENDPOINT").get_value("") or "",
            access_key=dg.EnvVar("AWS_ACCESS_KEY_ID").get_value("") or "",
            secret_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY").get_value("") or "",
        )
    },
)
