"""The landing sensor: each new file under ``<store>/landing/<dataset>/`` is ingested once.

The cursor holds the files already requested, per dataset, so a restart does not request
them again; the run key is derived from the files, so Dagster itself also refuses to start
the same request twice.
"""

import hashlib
import json

import dagster as dg

from foresight.datasets.catalog import NAME_RE, DatasetTable
from foresight.datasets.readers import source_format
from foresight.datasets.schema import SPEC_FILENAME
from foresight.pipelines.assets import ingest_job
from foresight.pipelines.resources import ForesightStore

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
