"""Trajectory data: the contract, log readers, validation, and the versioned store.

Note: this package is named ``datasets`` and shadows the Hugging Face package of that name
inside this project's environment.
"""

from datasets.catalog import (
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
from datasets.ingest import IngestError, IngestResult, ingest_logs
from datasets.schema import SCHEMA_VERSION, ActionSpec, DatasetSpec, SpecError
from datasets.storage import StorageError, Store

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
    "Store",
    "StorageError",
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
