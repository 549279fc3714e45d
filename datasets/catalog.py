"""Dataset versions: references, history, tags, stats, diffs and exports.

A dataset is a Delta Lake table at ``<store>/lake/<name>``; each ingest is one commit, and
the commit's version is the dataset version. The commit carries Foresight's metadata under
the ``foresight`` key: the dataset spec as of that version, the ingest id, the source files
with their checksums and the counts. Rejected rows live in ``<store>/lake/<name>__quarantine``.

References: ``name`` (latest), ``name@7`` (version 7), ``name@golden`` (a tag). Tags live in
``<store>/registry/datasets/<name>.json``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import polars as pl
import pyarrow as pa

from foresight.datasets.schema import DatasetSpec
from foresight.datasets.storage import StorageError, Store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
TAG_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")
QUARANTINE_SUFFIX = "__quarantine"
META_KEY = "foresight"


class DatasetError(ValueError):
    """A dataset reference, name or tag is wrong, or the dataset/version does not exist."""


def check_name(name: str) -> str:
    if not NAME_RE.match(name or "") or name.endswith(QUARANTINE_SUFFIX) or "__" in name:
        raise DatasetError(
            f"invalid dataset name {name!r}: use letters, digits, '_', '-', '.' (no '__', "
            "no '@'), starting with a letter or digit"
        )
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag or "") or tag.isdigit():
        raise DatasetError(
            f"invalid tag {tag!r}: letters, digits, '_', '-', '.', starting with a letter "
            "or '_'; not a number"
        )
    return tag


@dataclass(frozen=True)
class DatasetRef:
    """``name``, ``name@N`` or ``name@tag``, parsed."""

    name: str
    version: int | None = None
    tag: str | None = None

    @classmethod
    def parse(cls, ref: str) -> DatasetRef:
        name, sep, selector = (ref or "").partition("@")
        check_name(name)
        if not sep:
            return cls(name)
        if selector.isdigit():
            return cls(name, version=int(selector))
        if TAG_RE.match(selector):
            return cls(name, tag=selector)
        raise DatasetError(f"invalid dataset reference {ref!r}: expected name, name@N or name@tag")

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.tag is not None:
            return f"{self.name}@{self.tag}"
        return self.name


class DatasetTable:
    """One dataset's Delta table, its quarantine table and its tags, in one store."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = check_name(name)
        self.uri = store.table_uri(name)
        self.quarantine_uri = store.table_uri(name + QUARANTINE_SUFFIX)
        self.tags_rel = f"registry/datasets/{name}.json"

    # -- Delta access ---------------------------------------------------------------------
    def _delta(self, uri: str, version: int | None = None):
        from deltalake import DeltaTable

        try:
            return DeltaTable(uri, version=version, storage_options=self.store.storage_options())
        except Exception as exc:
            if "not a Delta table" in str(exc) or "No files in log segment" in str(exc):
                raise DatasetError(
                    f"dataset {self.name!r} does not exist in {self.store.root}"
                ) from exc
            if version is not None and (
                "version" in str(exc).lower() or "not found" in str(exc).lower()
            ):
                raise DatasetError(f"dataset {self.name!r} has no version {version}") from exc
            raise StorageError(f"cannot open dataset table {uri}: {exc}") from exc

    def exists(self) -> bool:
        from deltalake import DeltaTable

        try:
            return DeltaTable.is_deltatable(self.uri, storage_options=self.store.storage_options())
        except Exception as exc:
            raise StorageError(f"cannot read {self.uri}: {exc}") from exc

    def require(self) -> None:
        if not self.exists():
            raise DatasetError(
                f"dataset {self.name!r} does not exist in {self.store.root}; "
                f"known datasets: {', '.join(list_datasets(self.store)) or 'none'}"
            )

    @cached_property
    def history(self) -> list[dict[str, Any]]:
        """Commits, oldest first, each with ``version``, ``timestamp`` and our metadata."""
        if not self.exists():
            return []
        commits = self._delta(self.uri).history()
        return sorted(commits, key=lambda c: c["version"])

    def latest_version(self) -> int | None:
        return self.history[-1]["version"] if self.history else None

    def commit_meta(self, version: int) -> dict[str, Any]:
        for commit in self.history:
            if commit["version"] == version:
                return dict(commit.get(META_KEY) or {})
        raise DatasetError(f"dataset {self.name!r} has no version {version}")

    def spec(self, version: int | None = None) -> DatasetSpec | None:
        """The dataset spec as of ``version`` (latest by default)."""
        for commit in reversed(self.history):
            if version is not None and commit["version"] > version:
                continue
            meta = commit.get(META_KEY) or {}
            if "spec" in meta:
                return DatasetSpec.from_dict(meta["spec"])
        return None

    def quarantine_history(self) -> list[dict[str, Any]]:
        from deltalake import DeltaTable

        opts = self.store.storage_options()
        if not DeltaTable.is_deltatable(self.quarantine_uri, storage_options=opts):
            return []
        return sorted(self._delta(self.quarantine_uri).history(), key=lambda c: c["version"])

    def completed_ingests(self) -> list[dict[str, Any]]:
        """Metadata of every ingest that finished: main commits and quarantine-only ones."""
        done = [c[META_KEY] for c in self.history if META_KEY in c]
        done += [
            c[META_KEY]
            for c in self.quarantine_history()
            if META_KEY in c and c[META_KEY].get("quarantine_only")
        ]
        return done

    def ingested_checksums(self) -> dict[str, str]:
        """sha256 -> the source it came from, for every file of every completed ingest."""
        out = {}
        for meta in self.completed_ingests():
            for f in meta.get("files", []):
                out[f["sha256"]] = f["uri"]
        return out

    # -- reading --------------------------------------------------------------------------
    def resolve(self, ref: DatasetRef) -> int:
        """The version number a reference points at."""
        self.require()
        latest = self.latest_version()
        assert latest is not None
        if ref.tag is not None:
            tags = self.tags()
            if ref.tag not in tags:
                raise DatasetError(
                    f"dataset {self.name!r} has no tag {ref.tag!r}; tags: {', '.join(tags) or 'none'}"
                )
            return tags[ref.tag]
        if ref.version is not None:
            if ref.version > latest:
                raise DatasetError(
                    f"dataset {self.name!r} has no version {ref.version} (latest is {latest})"
                )
            return ref.version
        return latest

    def scan(self, version: int) -> pl.LazyFrame:
        return pl.scan_delta(
            self.uri, version=version, storage_options=self.store.polars_storage_options()
        )

    def episode_ids(self, version: int | None = None) -> pl.Series:
        if not self.exists():
            return pl.Series("episode_id", [], dtype=pl.String)
        version = self.latest_version() if version is None else version
        return self.scan(version).select(pl.col("episode_id").unique()).collect().to_series()

    def quarantine(self, upto_version: int | None = None) -> pl.DataFrame:
        """Quarantined rows of completed ingests (of those up to a version, if given)."""
        from deltalake import DeltaTable

        opts = self.store.storage_options()
        if not DeltaTable.is_deltatable(self.quarantine_uri, storage_options=opts):
            return pl.DataFrame(schema=QUARANTINE_SCHEMA)
        ids = set()
        for commit in self.history:
            if upto_version is None or commit["version"] <= upto_version:
                ids.add((commit.get(META_KEY) or {}).get("ingest_id"))
        for commit in self.quarantine_history():
            meta = commit.get(META_KEY) or {}
            before = meta.get("dataset_version")
            in_range = upto_version is None or (before is not None and before <= upto_version)
            if meta.get("quarantine_only") and in_range:
                ids.add(meta.get("ingest_id"))
        ids.discard(None)
        frame = pl.scan_delta(
            self.quarantine_uri, storage_options=self.store.polars_storage_options()
        )
        return frame.filter(pl.col("ingest_id").is_in(sorted(ids))).collect()

    # -- tags -----------------------------------------------------------------------------
    def tags(self) -> dict[str, int]:
        data = self.store.read_json(self.tags_rel) or {}
        return dict(data.get("tags", {}))

    def set_tag(self, tag: str, version: int) -> None:
        check_tag(tag)

        def change(data: dict | None) -> dict:
            data = data or {"tags": {}, "log": []}
            data.setdefault("tags", {})
            data.setdefault("log", []).append(
                {"tag": tag, "from": data["tags"].get(tag), "to": version, "at": time.time()}
            )
            data["tags"][tag] = version
            return data

        # A conditional read-modify-write: concurrent taggers never lose each other's moves.
        self.store.update_json(self.tags_rel, change)


QUARANTINE_SCHEMA = {
    "ingest_id": pl.String,
    "source": pl.String,
    "line": pl.Int64,
    "reason": pl.String,
    "raw": pl.String,
}

QUARANTINE_ARROW = pa.schema(
    [
        pa.field("ingest_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("line", pa.int64()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
    ]
)


# -- the verbs of `foresight datasets` ----------------------------------------------------------


def list_datasets(store: Store) -> list[str]:
    """Names of the datasets in the store."""
    lake = store.uri("lake")
    names = set()
    for uri in store.fs.list_dirs(lake):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if not name.endswith(QUARANTINE_SUFFIX) and NAME_RE.match(name):
            names.add(name)
    return sorted(n for n in names if DatasetTable(store, n).exists())


def open_dataset(
    ref: str, store: Store | None = None, arrow: bool = False
) -> pl.LazyFrame | pa.Table:
    """A dataset version as a polars LazyFrame (or an Arrow table with ``arrow=True``)."""
    store = store or Store.from_env()
    parsed = DatasetRef.parse(ref)
    table = DatasetTable(store, parsed.name)
    frame = table.scan(table.resolve(parsed))
    return frame.collect().to_arrow() if arrow else frame


def resolve_ref(ref: str, store: Store | None = None) -> tuple[DatasetTable, int]:
    """(table, version) for a reference; raises :class:`DatasetError` when it doesn't resolve."""
    store = store or Store.from_env()
    parsed = DatasetRef.parse(ref)
    table = DatasetTable(store, parsed.name)
    return table, table.resolve(parsed)


def dataset_versions(name: str, store: Store | None = None) -> list[dict[str, Any]]:
    """One entry per version: counts, ingest id, time, tags pointing at it."""
    store = store or Store.from_env()
    table = DatasetTable(store, name)
    table.require()
    tags = table.tags()
    out = []
    total = 0
    for commit in table.history:
        meta = commit.get(META_KEY) or {}
        added = int((commit.get("operationMetrics") or {}).get("num_added_rows") or 0)
        total += added
        out.append(
            {
                "version": commit["version"],
                "timestamp": commit.get("timestamp", 0) / 1000.0,
                "operation": commit.get("operation"),
                "ingest_id": meta.get("ingest_id"),
                "rows_added": added,
                "rows": total,
                "read": meta.get("read"),
                "quarantined": meta.get("quarantined"),
                "files": len(meta.get("files", [])),
                "tags": sorted(t for t, v in tags.items() if v == commit["version"]),
            }
        )
    return out


def dataset_stats(ref: str, store: Store | None = None) -> dict[str, Any]:
    """What ``foresight datasets show`` prints: size, agents, returns, quarantine, lineage."""
    table, version = resolve_ref(ref, store)
    frame = table.scan(version)
    sizes = (
        frame.select(
            pl.len().alias("rows"),
            pl.col("episode_id").n_unique().alias("episodes"),
        )
        .collect()
        .row(0, named=True)
    )
    steps = (
        frame.group_by("episode_id")
        .agg(pl.col("step").max() + 1)
        .select(pl.col("step").sum().alias("steps"), pl.col("step").mean().alias("mean_length"))
        .collect()
        .row(0, named=True)
    )
    returns = (
        frame.group_by("episode_id", "agent_id")
        .agg(pl.col("reward").sum().alias("ret"))
        .group_by("agent_id")
        .agg(
            pl.len().alias("episodes"),
            pl.col("ret").mean().alias("mean"),
            pl.col("ret").std().alias("std"),
            pl.col("ret").min().alias("min"),
            pl.col("ret").max().alias("max"),
        )
        .sort("agent_id")
        .collect()
    )
    lineage = []
    for commit in table.history:
        if commit["version"] > version:
            break
        meta = commit.get(META_KEY) or {}
        for f in meta.get("files", []):
            lineage.append({"version": commit["version"], **f})
    spec = table.spec(version)
    return {
        "dataset": table.name,
        "version": version,
        "ref": ref,
        "rows": sizes["rows"],
        "episodes": sizes["episodes"],
        "steps": int(steps["steps"] or 0),
        "mean_episode_length": float(steps["mean_length"] or 0.0),
        "agents": {
            r["agent_id"]: {
                k: (None if v is None else float(v)) for k, v in r.items() if k != "agent_id"
            }
            | {"episodes": int(r["episodes"])}
            for r in returns.to_dicts()
        },
        "quarantined": table.quarantine(upto_version=version).height,
        "spec": spec.to_dict() if spec else None,
        "tags": sorted(t for t, v in table.tags().items() if v == version),
        "lineage": lineage,
    }


def dataset_diff(ref_a: str, ref_b: str, store: Store | None = None) -> dict[str, Any]:
    """Episodes added and removed going from ``ref_a`` to ``ref_b``, and row counts."""
    store = store or Store.from_env()
    table_a, va = resolve_ref(ref_a, store)
    table_b, vb = resolve_ref(ref_b, store)

    def episodes(table: DatasetTable, version: int) -> pl.DataFrame:
        return table.scan(version).group_by("episode_id").agg(pl.len().alias("rows")).collect()

    a, b = episodes(table_a, va), episodes(table_b, vb)
    added = b.join(a, on="episode_id", how="anti")
    removed = a.join(b, on="episode_id", how="anti")
    return {
        "from": f"{table_a.name}@{va}",
        "to": f"{table_b.name}@{vb}",
        "episodes_from": a.height,
        "episodes_to": b.height,
        "rows_from": int(a["rows"].sum() or 0),
        "rows_to": int(b["rows"].sum() or 0),
        "episodes_added": added.height,
        "episodes_removed": removed.height,
        "rows_added": int(added["rows"].sum() or 0),
        "rows_removed": int(removed["rows"].sum() or 0),
        "added_sample": sorted(added["episode_id"].to_list())[:20],
        "removed_sample": sorted(removed["episode_id"].to_list())[:20],
    }


def tag_dataset(ref: str, tag: str, store: Store | None = None) -> dict[str, Any]:
    table, version = resolve_ref(ref, store)
    table.set_tag(tag, version)
    return {"dataset": table.name, "tag": tag, "version": version}


def export_dataset(ref: str, dest: str, store: Store | None = None) -> dict[str, Any]:
    """Write a version as plain Parquet files under ``dest`` (a folder or an s3:// prefix)."""
    import pyarrow.parquet as pq

    store = store or Store.from_env()
    table, version = resolve_ref(ref, store)
    dt = table._delta(table.uri, version=version)
    files = []
    rows = 0
    with store.local_scratch() as scratch:
        dataset = dt.to_pyarrow_dataset()
        for i, fragment in enumerate(dataset.get_fragments()):
            part = fragment.to_table()
            name = f"{table.name}-v{version}-part{i:05d}.parquet"
            local = f"{scratch}/{name}"
            pq.write_table(part, local, compression="zstd")
            target = f"{dest.rstrip('/')}/{name}"
            store.fs.upload(local, target)
            files.append(target)
            rows += part.num_rows
    return {"dataset": table.name, "version": version, "dest": dest, "files": files, "rows": rows}
