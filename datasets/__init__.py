"""Trajectory data: the contract, log readers, validation, and the versioned store.

Imported as ``foresight.datasets`` (the folder is ``datasets/``; pyproject maps the
``foresight`` namespace onto the layer folders), so it never shadows Hugging Face ``datasets``.
"""

from foresight.datasets.catalog import (
    DatasetError,
    DatasetRef,
    DatasetTable,
    dataset_diff,
    dataset_stats,
    dataset_versions,
    export_dataset,
    list_datasets,
    open_dataset,
    resolve_ref,
    tag_dataset,
)
from foresight.datasets.ingest import IngestError, IngestResult, ingest_logs
from foresight.datasets.schema import SCHEMA_VERSION, ActionSpec, DatasetSpec, SpecError
from foresight.datasets.storage import StorageError, Store

__all__ = [
    "SCHEMA_VERSION",
    "ActionSpec",
    "DatasetError",
    "DatasetRef",
    "DatasetSpec",
    "DatasetTable",
    "IngestError",
    "IngestResult",
    "SpecError",
    "StorageError",
    "Store",
    "dataset_diff",
    "dataset_stats",
    "dataset_versions",
    "export_dataset",
    "ingest_logs",
    "list_datasets",
    "open_dataset",
    "resolve_ref",
    "tag_dataset",
]
