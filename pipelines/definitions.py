"""Dagster entry point: ``dagster dev -m foresight.pipelines.definitions``."""

from __future__ import annotations

import os

import dagster as dg

from foresight.pipelines.flywheel import flywheel_job
from foresight.pipelines.jobs import ASSET_CHECKS, ASSETS, JOBS
from foresight.pipelines.model_assets import retrain_schedule
from foresight.pipelines.resources import ForesightStore
from foresight.pipelines.sensors import landing_sensor, retrain_sensor


def _env(name: str, default: str = ""):
    """An unresolved ``dg.EnvVar`` when set (read at run time, never stored), else a default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def store_settings() -> dict:
    return {
        "root": _env("FORESIGHT_STORE"),
        "s3_endpoint": _env("FORESIGHT_S3_ENDPOINT"),
        "access_key": _env("AWS_ACCESS_KEY_ID"),
        "secret_key": _env("AWS_SECRET_ACCESS_KEY"),
    }


defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=[*JOBS, flywheel_job],
    sensors=[landing_sensor, retrain_sensor],
    schedules=[retrain_schedule],
    resources={"foresight_store": ForesightStore(**store_settings())},
)
