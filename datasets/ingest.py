"""Ingest log files into a dataset: one ingest, one atomic commit, one new dataset version.

The flow, in bounded memory whatever the input size:

1. Read every new source file in blocks (:mod:`datasets.readers`), checksumming it on the
   way; check each row alone (:func:`datasets.validate.check_rows`). Valid rows are staged
   on local disk as Arrow IPC, split into buckets by a hash of ``episode_id`` so that every
   episode sits whole in one bucket; rejected rows are staged with their reasons.
2. Per bucket, check whole episodes (duplicates, contiguous steps, already in the dataset).
3. Commit the quarantined rows to ``<name>__quarantine``, then stream the accepted rows of
   every bucket into the dataset table in a single Delta commit that also records the
   source files, their checksums, the counts and the dataset spec.

A crash before the last commit leaves no new version: Delta only sees data once its log
entry is written. Quarantined rows of an ingest that never committed stay invisible,
because the quarantine is read through the ingest ids of completed ingests.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from datasets.catalog import META_KEY, QUARANTINE_ARROW, DatasetTable
from datasets.readers import (
    SUPPORTED_SUFFIXES,
    iter_chunks,
    open_source,
    peek_records,
    source_format,
)
from datasets.schema import (
    ALL_COLUMNS,
    SCHEMA_VERSION,
    SPEC_FILENAME,
    ActionSpec,
    DatasetSpec,
    SpecError,
    arrow_schema,
)
from datasets.storage import FileSystem, StorageError, Store, is_s3
from datasets.validate import check_episodes, check_rows

BUCKET_BYTES = 256 << 20
"""Source bytes per episode bucket; bounds the memory of the episode-level checks."""
GZIP_RATIO = 6
"""Assumed expansion of .gz sources when sizing buckets."""


class IngestError(RuntimeError):
    """The ingest cannot run at all (no sources, a spec mismatch, ...). Nothing is written."""


class InjectedFault(RuntimeError):
    """Raised at a fault-injection point (``FORESIGHT_FAULT``), for crash-safety tests."""


def _fault(point: str) -> None:
    """Fail here if ``FORESIGHT_FAULT`` names this point (``kill:`` prefix: die at once)."""
    wanted = os.environ.get("FORESIGHT_FAULT", "")
    if wanted == point:
        raise InjectedFault(f"injected fault at {point}")
    if wanted == f"kill:{point}":
        os._exit(137)


@dataclass
class IngestResult:
    """What one ingest did; ``read == accepted + quarantined`` always holds."""

    dataset: str
    ingest_id: str
    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    version: int | None = None
    already_ingested: list[str] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    spec: dict[str, Any] | None = None
    spec_origin: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "ingest_id": self.ingest_id,
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "already_ingested": self.already_ingested,
            "version": self.version,
            "files": self.files,
            "reasons": self.reasons,
            "spec": self.spec,
            "spec_origin": self.spec_origin,
            "seconds": round(self.seconds, 3),
        }


# -- sources and specs ---------------------------------------------------------------------------


def expand_sources(sources: Sequence[str], fs: FileSystem) -> list[str]:
    """Files named by sources: files, folders, globs or s3:// prefixes; spec files skipped."""
    files: list[str] = []
    for source in sources:
        if any(ch in source for ch in "*?["):
            found = fs.glob(source)
        else:
            found = fs.list_files(source)
            if not found:
                raise IngestError(f"source not found: {source}")
            if len(found) == 1 and found[0] == source and source_format(source) is None:
                raise IngestError(
                    f"{source}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
                )
        files.extend(
            f
            for f in found
            if source_format(f) is not None
            and not f.endswith(SPEC_FILENAME)
            and not f.rsplit("/", 1)[-1].startswith(".")  # temp files of a writer in progress
        )
    unique = list(dict.fromkeys(files))
    if not unique:
        raise IngestError(
            f"no log files ({', '.join(SUPPORTED_SUFFIXES)}) found in: {', '.join(sources)}"
        )
    return unique


def load_spec(path_or_uri: str, fs: FileSystem | None = None) -> DatasetSpec:
    fs = fs or FileSystem()
    try:
        return DatasetSpec.from_json(fs.read_bytes(path_or_uri))
    except FileNotFoundError as exc:
        raise IngestError(f"spec file not found: {path_or_uri}") from exc
    except SpecError as exc:
        raise IngestError(f"{path_or_uri}: {exc}") from exc


def _spec_beside(files: list[str], fs: FileSystem) -> tuple[DatasetSpec | None, str | None]:
    """The spec file that `foresight generate` / the recorder wrote beside the logs."""
    found: tuple[DatasetSpec, str] | None = None
    for folder in dict.fromkeys(f.rsplit("/", 1)[0] for f in files):
        uri = f"{folder}/{SPEC_FILENAME}"
        if fs.exists(uri):
            spec = load_spec(uri, fs)
            if found is not None:
                try:
                    found[0].check_compatible(spec)
                except SpecError as exc:
                    raise IngestError(f"spec files {found[1]} and {uri} disagree: {exc}") from exc
                spec = found[0].merged(spec)
            found = (spec, uri)
    return found if found else (None, None)


def infer_spec(fs: FileSystem, uri: str) -> DatasetSpec:
    """A spec guessed from the first records of a file: obs sizes, action kind, state size."""
    sample = peek_records(fs, uri)
    needed = {"agent_id", "obs", "action"}
    if sample.is_empty() or not needed <= set(sample.columns):
        raise IngestError(
            f"cannot infer a dataset spec from {uri}: its first records lack {sorted(needed)}; "
            "pass --spec FILE"
        )
    sample = sample.filter(pl.col("obs").is_not_null() & pl.col("agent_id").is_not_null())
    sizes = (
        sample.group_by(pl.col("agent_id").cast(pl.String))
        .agg(pl.col("obs").list.len().mode().first().alias("size"))
        .sort("agent_id")
    )
    agents = {r["agent_id"]: int(r["size"]) for r in sizes.to_dicts()}
    action = sample["action"].drop_nulls()
    if action.dtype.is_integer():
        kind = ActionSpec(kind="discrete", n=int(action.max()) + 1)  # type: ignore[arg-type]
    elif isinstance(action.dtype, pl.List):
        kind = ActionSpec(kind="continuous", dim=int(action.list.len().max()))  # type: ignore[arg-type]
    else:
        raise IngestError(
            f"cannot infer the action spec from {uri} (actions look like {action.dtype})"
        )
    state_dim = None
    if "state" in sample.columns and sample["state"].drop_nulls().len():
        state_dim = int(sample["state"].drop_nulls().list.len().max())  # type: ignore[arg-type]
    return DatasetSpec(env="unknown", agents=agents, action=kind, state_dim=state_dim)


def resolve_spec(
    table: DatasetTable,
    files: list[str],
    fs: FileSystem,
    spec: DatasetSpec | str | None,
) -> tuple[DatasetSpec, str]:
    """The spec this ingest checks against, and where it came from."""
    current = table.spec()
    if isinstance(spec, str):
        given, origin = load_spec(spec, fs), f"--spec {spec}"
    elif isinstance(spec, DatasetSpec):
        given, origin = spec, "given"
    else:
        given, origin = _spec_beside(files, fs)
        origin = f"spec file {origin}" if given else ""
    if current is not None:
        if given is None:
            return current, "dataset"
        try:
            current.check_compatible(given)
        except SpecError as exc:
            raise IngestError(f"dataset {table.name!r}: {origin}: {exc}") from exc
        return current.merged(given), f"dataset + {origin}"
    if given is not None:
        return given, origin
    return infer_spec(fs, files[0]), f"inferred from {files[0]}"


# -- staging -------------------------------------------------------------------------------------


class _Staging:
    """Scratch Arrow IPC files: accepted rows by episode bucket, rejected rows with reasons."""

    def __init__(self, root: str, buckets: int) -> None:
        self.root = Path(root)
        self.buckets = buckets
        self.bucket_files: list[list[str]] = [[] for _ in range(buckets)]
        self.reject_files: list[str] = []
        self.tainted: set[str] = set()
        """Episodes that lost a row to a row-level check."""
        self._seq = 0

    def _path(self, kind: str) -> str:
        self._seq += 1
        path = self.root / kind / f"{self._seq:08d}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def add_rows(self, rows: pl.DataFrame) -> None:
        if rows.is_empty():
            return
        if self.buckets == 1:
            parts = {0: rows}
        else:
            bucket = (pl.col("episode_id").hash(seed=7) % self.buckets).alias("_bucket")
            parts = {
                int(key[0]): part.drop("_bucket")  # type: ignore[index]
                for key, part in rows.with_columns(bucket)
                .partition_by("_bucket", as_dict=True)
                .items()
            }
        for b, part in parts.items():
            path = self._path(f"b{b:04d}")
            part.write_ipc(path, compression="uncompressed")
            self.bucket_files[b].append(path)

    def add_rejects(self, rejects: pl.DataFrame) -> None:
        if rejects.is_empty():
            return
        path = self._path("rejects")
        rejects.select("_file", "_line", "reason", "raw").write_ipc(path)
        self.reject_files.append(path)

    def scan_bucket(self, b: int) -> pl.LazyFrame | None:
        files = self.bucket_files[b]
        return pl.scan_ipc(files) if files else None


def _rows_as_json(rows: pl.DataFrame) -> list[str]:
    return [json.dumps(r, default=str)[:2000] for r in rows.select(ALL_COLUMNS).to_dicts()]


def _bucket_count(fs: FileSystem, files: list[str]) -> int:
    total = 0
    for f in files:
        size = fs.size(f)
        total += size * GZIP_RATIO if f.endswith(".gz") else size
    return max(1, math.ceil(total / BUCKET_BYTES))


def _sha256(fs: FileSystem, uri: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with fs.open_read(uri) as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- the ingest ----------------------------------------------------------------------------------


def ingest_logs(
    sources: Sequence[str],
    dataset: str,
    store: Store | None = None,
    spec: DatasetSpec | str | None = None,
    progress: bool = False,
) -> IngestResult:
    """Ingest log files into ``dataset``; see the module docstring for the guarantees."""
    start = time.perf_counter()
    store = store or Store.from_env()
    fs = store.fs
    table = DatasetTable(store, dataset)
    result = IngestResult(dataset=table.name, ingest_id=uuid.uuid4().hex[:16])
    files = expand_sources(sources, fs)
    try:
        store.ensure()
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot prepare the store at {store.root}: {exc}") from exc
    dataset_spec, origin = resolve_spec(table, files, fs, spec)
    result.spec, result.spec_origin = dataset_spec.to_dict(), origin

    # Skip files already ingested (same checksum). Files whose size matches an ingested one
    # (or another source of this ingest) are hashed first; the rest are hashed as parsed.
    ingested = table.ingested_checksums()
    sizes = {f: fs.size(f) for f in files}
    known_sizes = Counter(sizes.values())
    ledger_sizes = {f.get("bytes") for m in table.completed_ingests() for f in m.get("files", [])}
    todo: list[tuple[str, str | None]] = []
    seen: dict[str, str] = {}
    for f in files:
        digest = None
        if sizes[f] in ledger_sizes or known_sizes[sizes[f]] > 1:
            digest = _sha256(fs, f)
            if digest in ingested or digest in seen:
                result.already_ingested.append(f)
                continue
            seen[digest] = f
        todo.append((f, digest))

    if not todo:
        result.seconds = time.perf_counter() - start
        return result

    with store.local_scratch() as scratch:
        staging = _Staging(scratch, _bucket_count(fs, [f for f, _ in todo]))
        per_file = _read_sources(todo, fs, dataset_spec, staging, result, progress)
        existing = table.episode_ids()
        bad = _check_episodes(staging, existing, per_file)
        _fault("before-quarantine-commit")
        q_total = _commit_quarantine(table, staging, bad, todo, result, per_file)
        _fault("before-commit")
        accepted = sum(f["accepted"] for f in per_file)
        result.files = per_file
        result.read = sum(f["read"] for f in per_file)
        result.accepted = accepted
        result.quarantined = q_total
        assert result.read == result.accepted + result.quarantined, result
        if accepted:
            result.version = _commit_rows(table, staging, bad, dataset_spec, result)
    result.seconds = time.perf_counter() - start
    return result


def _read_sources(
    todo: list[tuple[str, str | None]],
    fs: FileSystem,
    spec: DatasetSpec,
    staging: _Staging,
    result: IngestResult,
    progress: bool,
) -> list[dict[str, Any]]:
    """Pass 1: parse and row-check every file; stage valid rows and rejects."""
    per_file: list[dict[str, Any]] = []
    ordinal = 0
    reasons: Counter[str] = Counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="file", desc="ingest")
    for index, (uri, digest) in enumerate(todo):
        counts = {"uri": uri, "read": 0, "staged": 0, "rejected": 0}
        reader = open_source(fs, uri)
        try:
            for chunk in iter_chunks(reader, uri, spec):
                valid, invalid = check_rows(chunk.rows, spec)
                n = valid.height
                valid = valid.with_columns(
                    pl.int_range(ordinal, ordinal + n, dtype=pl.Int64).alias("_ord"),
                    pl.lit(index, dtype=pl.Int32).alias("_file"),
                )
                ordinal += n
                staging.add_rows(valid)
                rejects = chunk.rejected
                if invalid.height:
                    staging.tainted.update(invalid["episode_id"].drop_nulls().to_list())
                    rejects = pl.concat(
                        [
                            rejects,
                            pl.DataFrame(
                                {
                                    "_line": invalid["_line"],
                                    "reason": invalid["reason"],
                                    "raw": _rows_as_json(invalid),
                                }
                            ),
                        ]
                    )
                if rejects.height:
                    reasons.update(rejects["reason"].to_list())
                    staging.add_rejects(
                        rejects.with_columns(pl.lit(index, dtype=pl.Int32).alias("_file"))
                    )
                counts["read"] += chunk.read
                counts["staged"] += n
                counts["rejected"] += rejects.height
            # Drain what is left, so the checksum covers the whole file.
            while reader.read(1 << 20):
                pass
        except (OSError, EOFError) as exc:  # truncated gzip, unreadable file
            raise IngestError(f"cannot read {uri}: {exc}") from exc
        finally:
            reader.close()
        counts["sha256"] = digest or reader.digest.hexdigest()
        counts["bytes"] = reader.nbytes
        per_file.append(counts)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result.reasons = dict(reasons.most_common(20))
    return per_file


def _check_episodes(
    staging: _Staging, existing: pl.Series, per_file: list[dict[str, Any]]
) -> list[pl.DataFrame]:
    """Pass 2: per bucket, the rows (``_ord, _file, reason``) that whole-episode checks reject."""
    tainted = pl.Series(sorted(staging.tainted), dtype=pl.String)
    out: list[pl.DataFrame] = []
    for b in range(staging.buckets):
        scan = staging.scan_bucket(b)
        if scan is None:
            out.append(pl.DataFrame(schema={"_ord": pl.Int64, "reason": pl.String}))
            continue
        keys = (
            scan.select("episode_id", "step", "agent_id", "_ord")
            .with_columns(pl.col("episode_id").is_in(tainted.implode()).alias("_tainted"))
            .collect()
        )
        out.append(check_episodes(keys, existing))
    for f in per_file:
        f["accepted"] = f["staged"]
    return out


def _commit_quarantine(
    table: DatasetTable,
    staging: _Staging,
    bad: list[pl.DataFrame],
    todo: list[tuple[str, str | None]],
    result: IngestResult,
    per_file: list[dict[str, Any]],
) -> int:
    """Write every rejected row of this ingest to the quarantine table; returns the count."""
    from deltalake import CommitProperties, write_deltalake

    uris = [u for u, _ in todo]
    episode_rejects: list[pl.DataFrame] = []
    reasons = Counter(result.reasons)
    for b, rows in enumerate(bad):
        if rows.is_empty():
            continue
        scan = staging.scan_bucket(b)
        assert scan is not None
        full = scan.join(rows.lazy(), on="_ord", how="inner").collect()
        reasons.update(full["reason"].to_list())
        episode_rejects.append(
            pl.DataFrame(
                {
                    "_file": full["_file"],
                    "_line": full["_line"],
                    "reason": full["reason"],
                    "raw": _rows_as_json(full),
                }
            )
        )
        for file_index, n in Counter(full["_file"].to_list()).items():
            per_file[file_index]["accepted"] -= n
    for f in per_file:
        f["quarantined"] = f["rejected"] + (f["staged"] - f["accepted"])
    result.reasons = dict(reasons.most_common(20))
    total = sum(f["quarantined"] for f in per_file)
    if total == 0:
        return 0

    def batches() -> Iterator[pa.RecordBatch]:
        frames = [pl.read_ipc(p) for p in staging.reject_files]
        for frame in frames + episode_rejects:
            out = frame.select(
                pl.lit(result.ingest_id).alias("ingest_id"),
                pl.col("_file")
                .replace_strict(list(range(len(uris))), uris, return_dtype=pl.String)
                .alias("source"),
                pl.col("_line").alias("line"),
                pl.col("reason"),
                pl.col("raw"),
            )
            yield from out.to_arrow().cast(QUARANTINE_ARROW).to_batches()

    accepted = sum(f["accepted"] for f in per_file)
    meta = _ingest_meta(table, result, per_file)
    meta["quarantine_only"] = accepted == 0
    write_deltalake(
        table.quarantine_uri,
        pa.RecordBatchReader.from_batches(QUARANTINE_ARROW, batches()),
        mode="append",
        storage_options=table.store.storage_options(),
        commit_properties=CommitProperties(custom_metadata={META_KEY: meta}),
    )
    return total


def _ingest_meta(table: DatasetTable, result: IngestResult, per_file: list[dict[str, Any]]) -> dict:
    return {
        "ingest_id": result.ingest_id,
        "time": time.time(),
        "schema_version": SCHEMA_VERSION,
        "dataset_version": table.latest_version(),
        "spec": result.spec,
        "read": sum(f["read"] for f in per_file),
        "accepted": sum(f["accepted"] for f in per_file),
        "quarantined": sum(f["quarantined"] for f in per_file),
        "files": [
            {k: f[k] for k in ("uri", "sha256", "bytes", "read", "accepted", "quarantined")}
            for f in per_file
        ],
    }


def _commit_rows(
    table: DatasetTable,
    staging: _Staging,
    bad: list[pl.DataFrame],
    spec: DatasetSpec,
    result: IngestResult,
) -> int:
    """Pass 3: stream the accepted rows of every bucket into one Delta commit."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake

    schema = arrow_schema(spec)
    casts = {
        "step": pl.Int32,
        "reward": pl.Float32,
        "action": pl.Int32 if spec.action.discrete else pl.List(pl.Float32),
    }

    def batches() -> Iterator[pa.RecordBatch]:
        written = 0
        for b in range(staging.buckets):
            drop = bad[b]["_ord"].implode()
            # File by file, not bucket by bucket: memory stays at one staged block.
            for path in staging.bucket_files[b]:
                frame = (
                    pl.scan_ipc(path)
                    .filter(~pl.col("_ord").is_in(drop))
                    .select(ALL_COLUMNS)
                    .with_columns(pl.col(c).cast(t) for c, t in casts.items())
                    .collect()
                )
                arrow = frame.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(schema)
                for batch in arrow.to_batches(max_chunksize=131_072):
                    yield batch
                    written += batch.num_rows
                    if written:
                        _fault("mid-write")

    meta = _ingest_meta(table, result, result.files)
    write_deltalake(
        table.uri,
        pa.RecordBatchReader.from_batches(schema, batches()),
        mode="append",
        storage_options=table.store.storage_options(),
        commit_properties=CommitProperties(custom_metadata={META_KEY: meta}),
    )
    version = DeltaTable(table.uri, storage_options=table.store.storage_options()).version()
    table.__dict__.pop("history", None)  # the cached history is stale now
    return version


def describe_result(result: IngestResult) -> str:
    """A few lines for people: counts, version, what was skipped, top reasons."""
    lines = [
        f"dataset {result.dataset}: read {result.read} = accepted {result.accepted} + "
        f"quarantined {result.quarantined}; "
        + (f"new version {result.version}" if result.version is not None else "no new version"),
    ]
    if result.already_ingested:
        lines.append(
            f"skipped {len(result.already_ingested)} file(s) already ingested (same checksum): "
            + ", ".join(result.already_ingested[:5])
            + (" ..." if len(result.already_ingested) > 5 else "")
        )
    for reason, n in list(result.reasons.items())[:10]:
        lines.append(f"  quarantined {n:>7} x {reason}")
    if result.spec_origin.startswith("inferred"):
        lines.append(f"spec {result.spec_origin}: {json.dumps(result.spec)}")
    return "\n".join(lines)


__all__ = ["IngestError", "IngestResult", "describe_result", "ingest_logs", "is_s3"]
