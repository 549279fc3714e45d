"""Ingest log files into a dataset: one ingest, one atomic commit, one new dataset version.

The flow, in bounded memory whatever the input size:

1. Read every new source file in blocks (:mod:`foresight.datasets.readers`), checksumming it on the
   way; check each row alone (:func:`foresight.datasets.validate.check_rows`). Valid rows are staged
   on local disk as Arrow IPC, split into buckets by a hash of ``episode_id`` so that every
   episode sits whole in one bucket; rejected rows are staged with their reasons.
2. Per bucket, check whole episodes (duplicates, contiguous steps, already in the dataset).
3. Take the dataset's lease (:mod:`foresight.datasets.lease`); if another ingest committed since step
   2 looked, drop the files it ingested and redo the episode checks against the episode ids
   committed now. Commit the quarantined rows to ``<name>__quarantine``, then stream the
   accepted rows of every bucket into the dataset table in a single Delta commit that also
   records the source files, their checksums, the counts and the dataset spec. Release.
   Concurrent ingests thus end as some serial order of them would (datasets/README.md).

A crash before the last commit leaves no new version: Delta only sees data once its log
entry is written. Quarantined rows of an ingest that never committed stay invisible,
because the quarantine is read through the ingest ids of completed ingests.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from foresight.datasets.catalog import META_KEY, QUARANTINE_ARROW, DatasetTable
from foresight.datasets.lease import Lease, LeaseBusy, LeaseLost
from foresight.datasets.readers import (
    SUPPORTED_SUFFIXES,
    iter_chunks,
    open_source,
    peek_records,
    source_format,
)
from foresight.datasets.schema import (
    ALL_COLUMNS,
    SCHEMA_VERSION,
    SPEC_FILENAME,
    ActionSpec,
    DatasetSpec,
    SpecError,
    arrow_schema,
)
from foresight.datasets.storage import FileSystem, StorageError, Store, is_s3
from foresight.datasets.validate import check_episodes, check_rows

BUCKET_BYTES = 256 << 20
"""Source bytes per episode bucket; bounds the memory of the episode-level checks."""
GZIP_RATIO = 6
"""Assumed expansion of .gz sources when sizing buckets."""
LEASE_FOLDER = "leases/datasets"
"""Under the store root: one lease object per dataset, held while an ingest commits."""
STAGING_PREFIX = "foresight-ingest-"
"""Staging folders under FORESIGHT_SCRATCH (default: the system temp folder)."""
STAGING_ORPHAN_SECONDS = 3600.0
"""A staging folder without an owner file is swept only once it is this old (it may be
one that is being created right now)."""


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
    notes: list[str] = field(default_factory=list)
    """What went oddly but did not fail the ingest (a read-back error after a commit)."""

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
            "notes": self.notes,
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
        self.tainted: dict[int, set[str]] = {}
        """Per source file, the episodes that lost a row to a row-level check there."""
        self.dropped: set[int] = set()
        """Source files another ingest committed meanwhile: none of their rows go in."""
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


def _staging_root() -> Path:
    return Path(os.environ.get("FORESIGHT_SCRATCH") or tempfile.gettempdir())


@contextmanager
def _staging_folder() -> Iterator[str]:
    """A local staging folder, removed on the way out whatever happens.

    Its owner file stays locked (flock) while the ingest runs; the kernel drops the lock
    when the process dies, which is how :func:`sweep_stale_staging` tells dead from alive.
    """
    root = _staging_root()
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    owner = open(path / ".owner", "wb")  # noqa: SIM115 - held for the whole ingest
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        owner.write(f"{os.getpid()}\n".encode())
        owner.flush()
        yield str(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
        owner.close()


def sweep_stale_staging() -> list[str]:
    """Remove staging folders left by ingests that died (killed, power loss); their paths."""
    swept = []
    for path in sorted(_staging_root().glob(f"{STAGING_PREFIX}*")):
        if not path.is_dir():
            continue
        try:
            owner = open(path / ".owner", "rb")  # noqa: SIM115
        except FileNotFoundError:
            try:
                old = time.time() - path.stat().st_mtime > STAGING_ORPHAN_SECONDS
            except FileNotFoundError:
                continue
            if old:
                shutil.rmtree(path, ignore_errors=True)
                swept.append(str(path))
            continue
        except OSError:
            continue
        with owner:
            try:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its ingest is still running
            shutil.rmtree(path, ignore_errors=True)
            swept.append(str(path))
    return swept


def _rows_as_json(rows: pl.DataFrame) -> list[str]:
    return [json.dumps(r, default=str)[:2000] for r in rows.select(ALL_COLUMNS).to_dicts()]


def _bucket_count(fs: FileSystem, files: list[str]) -> int:
    total = 0
    for f in files:
        size = fs.size(f)
        total += size * GZIP_RATIO if f.endswith(".gz") else size
    return max(1, math.ceil(total / BUCKET_BYTES))


def _sha256(fs: FileSystem, uri: str) -> str:
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
    table = DatasetTable(store, dataset)
    files = expand_sources(sources, store.fs)
    try:
        store.ensure()
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"cannot prepare the store at {store.root}: {exc}") from exc
    sweep_stale_staging()
    result = _ingest_once(store, table.name, files, spec, progress, held=None)
    if result is None:  # the dataset's spec changed under us: redo it all holding the lease
        lease = _acquire(store, table.name)
        try:
            result = _ingest_once(store, table.name, files, spec, progress, held=lease)
        finally:
            lease.release()
    assert result is not None
    result.seconds = time.perf_counter() - start
    return result


def dataset_lease(store: Store, name: str) -> Lease:
    """The lease every ingest commit into ``name`` holds (see :mod:`foresight.datasets.lease`)."""
    return Lease(store, f"{LEASE_FOLDER}/{name}.json")


def _acquire(store: Store, name: str) -> Lease:
    """The dataset's lease, held; a live holder that never lets go is an IngestError."""
    try:
        return dataset_lease(store, name).acquire()
    except LeaseBusy as exc:
        raise IngestError(f"dataset {name!r}: another ingest holds it: {exc}") from exc


def _table_state(table: DatasetTable) -> tuple[int | None, int | None]:
    """What the ledger checks depend on: the latest dataset and quarantine versions."""
    quarantine = table.quarantine_history()
    return table.latest_version(), (quarantine[-1]["version"] if quarantine else None)


def _new_files(
    table: DatasetTable, files: list[str], fs: FileSystem, result: IngestResult
) -> list[tuple[str, str | None]]:
    """Files not ingested yet (by checksum), each with its sha256 when it had to be hashed.

    Files whose size matches an ingested one (or another source of this ingest) are hashed
    first; the rest are hashed as they are parsed.
    """
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
    return todo


def _ingest_once(
    store: Store,
    name: str,
    files: list[str],
    spec: DatasetSpec | str | None,
    progress: bool,
    held: Lease | None,
) -> IngestResult | None:
    """One try: read and check outside the lease (unless ``held``), commit under it.

    Returns None, having written nothing, when the dataset's spec changed between the read
    and the commit: the caller then runs the whole ingest again holding the lease.
    """
    fs = store.fs
    table = DatasetTable(store, name)
    result = IngestResult(dataset=table.name, ingest_id=uuid.uuid4().hex[:16])
    # The snapshot every check below reads (the main history is cached from here on); taken
    # first, so anything committed later shows as a change and is checked again under the lease.
    state = _table_state(table)
    base_spec = table.spec()
    dataset_spec, origin = resolve_spec(table, files, fs, spec)
    result.spec, result.spec_origin = dataset_spec.to_dict(), origin
    todo = _new_files(table, files, fs, result)
    if not todo:
        return result

    with _staging_folder() as scratch:
        staging = _Staging(scratch, _bucket_count(fs, [f for f, _ in todo]))
        per_file = _read_sources(todo, fs, dataset_spec, staging, result, progress)
        bad = _check_episodes(staging, table.episode_ids())
        lease = held or _acquire(store, name)
        try:
            _fault("after-lease")
            if held is None and _table_state(fresh := DatasetTable(store, name)) != state:
                # Another ingest committed since we looked: check again as a serial run would.
                if fresh.spec() != base_spec:
                    return None
                table = fresh
                ingested = table.ingested_checksums()
                for i, f in enumerate(per_file):
                    if f["sha256"] in ingested:
                        staging.dropped.add(i)
                        result.already_ingested.append(f["uri"])
                if len(staging.dropped) == len(per_file):
                    result.reasons = {}
                    return result
                bad = _check_episodes(staging, table.episode_ids())
            _commit(table, staging, bad, todo, dataset_spec, result, per_file, lease)
        finally:
            if held is None:
                lease.release()
    return result


def _check_lease(lease: Lease, table: DatasetTable) -> None:
    try:
        lease.check()
    except LeaseLost as exc:
        raise IngestError(
            f"dataset {table.name!r}: {exc} (this process stalled for longer than the lease's "
            "ttl); nothing of this ingest is visible: run it again"
        ) from exc


def _commit(
    table: DatasetTable,
    staging: _Staging,
    bad: list[pl.DataFrame],
    todo: list[tuple[str, str | None]],
    spec: DatasetSpec,
    result: IngestResult,
    per_file: list[dict[str, Any]],
    lease: Lease,
) -> None:
    """Under the lease: the quarantine commit, then the dataset commit."""
    _fault("before-quarantine-commit")
    _check_lease(lease, table)
    kept = [f for i, f in enumerate(per_file) if i not in staging.dropped]
    q_total = _commit_quarantine(table, staging, bad, todo, result, per_file, kept)
    _fault("before-commit")
    result.files = kept
    result.read = sum(f["read"] for f in kept)
    result.accepted = sum(f["accepted"] for f in kept)
    result.quarantined = q_total
    if result.read != result.accepted + result.quarantined:  # never lose a row silently
        raise IngestError(f"ingest does not balance, nothing committed: {result}")
    if result.accepted:
        _check_lease(lease, table)
        result.version = _commit_rows(table, staging, bad, spec, result)


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
                    staging.tainted.setdefault(index, set()).update(
                        invalid["episode_id"].drop_nulls().to_list()
                    )
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


def _check_episodes(staging: _Staging, existing: pl.Series) -> list[pl.DataFrame]:
    """Pass 2: per bucket, the rows (``_ord, _file, reason``) that whole-episode checks reject.

    Rows of dropped files are left out, as if those files had never been given.
    """
    tainted_ids = set().union(
        *(ids for i, ids in staging.tainted.items() if i not in staging.dropped)
    )
    tainted = pl.Series(sorted(tainted_ids), dtype=pl.String)
    dropped = pl.Series(sorted(staging.dropped), dtype=pl.Int32)
    out: list[pl.DataFrame] = []
    for b in range(staging.buckets):
        scan = staging.scan_bucket(b)
        if scan is None:
            out.append(pl.DataFrame(schema={"_ord": pl.Int64, "reason": pl.String}))
            continue
        keys = (
            scan.filter(~pl.col("_file").is_in(dropped.implode()))
            .select("episode_id", "step", "agent_id", "_ord")
            .with_columns(pl.col("episode_id").is_in(tainted.implode()).alias("_tainted"))
            .collect()
        )
        out.append(check_episodes(keys, existing))
    return out


def _commit_quarantine(
    table: DatasetTable,
    staging: _Staging,
    bad: list[pl.DataFrame],
    todo: list[tuple[str, str | None]],
    result: IngestResult,
    per_file: list[dict[str, Any]],
    kept: list[dict[str, Any]],
) -> int:
    """Write every rejected row of this ingest's kept files to the quarantine; the count."""
    from deltalake import CommitProperties, write_deltalake

    uris = [u for u, _ in todo]
    dropped = pl.Series(sorted(staging.dropped), dtype=pl.Int32).implode()
    row_rejects = [
        frame.filter(~pl.col("_file").is_in(dropped))
        for frame in (pl.read_ipc(path) for path in staging.reject_files)
    ]
    reasons: Counter[str] = Counter()
    for frame in row_rejects:
        reasons.update(frame["reason"].to_list())
    episode_rejects: list[pl.DataFrame] = []
    for f in per_file:
        f["accepted"] = f["staged"]
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
    total = sum(f["quarantined"] for f in kept)
    if total == 0:
        return 0

    def batches() -> Iterator[pa.RecordBatch]:
        for frame in row_rejects + episode_rejects:
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

    meta = _ingest_meta(table, result, kept)
    meta["quarantine_only"] = sum(f["accepted"] for f in kept) == 0
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
    from deltalake import CommitProperties, write_deltalake

    schema = arrow_schema(spec)
    casts = {
        "step": pl.Int32,
        "reward": pl.Float32,
        "action": pl.Int32 if spec.action.discrete else pl.List(pl.Float32),
    }

    dropped = pl.Series(sorted(staging.dropped), dtype=pl.Int32).implode()

    def batches() -> Iterator[pa.RecordBatch]:
        written = 0
        for b in range(staging.buckets):
            drop = bad[b]["_ord"].implode()
            # File by file, not bucket by bucket: memory stays at one staged block.
            for path in staging.bucket_files[b]:
                frame = (
                    pl.scan_ipc(path)
                    .filter(~pl.col("_ord").is_in(drop) & ~pl.col("_file").is_in(dropped))
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

    before = table.latest_version()
    meta = _ingest_meta(table, result, result.files)
    try:
        write_deltalake(
            table.uri,
            pa.RecordBatchReader.from_batches(schema, batches()),
            mode="append",
            storage_options=table.store.storage_options(),
            commit_properties=CommitProperties(custom_metadata={META_KEY: meta}),
        )
    except InjectedFault:
        raise
    except Exception as exc:
        # The commit may have landed before the error (a lost reply): it is reported as it is.
        try:
            version = _committed_version(table, result.ingest_id)
        except Exception:
            version = None
        if version is None:
            raise
        result.notes.append(f"the commit of version {version} reported an error: {exc}")
        return version
    table.__dict__.pop("history", None)  # the cached history is stale now
    try:
        _fault("read-back")
        version = _committed_version(table, result.ingest_id)
    except Exception as exc:  # committed, but the read-back failed: still committed
        version = None
        result.notes.append(f"committed, but reading the new version back failed: {exc}")
    if version is None:
        # Under the lease nobody else commits, so ours is the next version.
        version = 0 if before is None else before + 1
    return version


def _committed_version(table: DatasetTable, ingest_id: str) -> int | None:
    """The version of the commit carrying ``ingest_id``, read fresh; None if there is none.

    Under the lease ours is among the last few commits, so only those are read.
    """
    from deltalake import DeltaTable

    delta = DeltaTable(table.uri, storage_options=table.store.storage_options())
    for commit in delta.history(limit=8):
        if (commit.get(META_KEY) or {}).get("ingest_id") == ingest_id:
            return int(commit["version"])
    return None


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
    lines.extend(f"note: {note}" for note in result.notes)
    if result.spec_origin.startswith("inferred"):
        lines.append(f"spec {result.spec_origin}: {json.dumps(result.spec)}")
    return "\n".join(lines)


__all__ = ["IngestError", "IngestResult", "describe_result", "ingest_logs", "is_s3"]
