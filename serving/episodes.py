"""``POST /episodes``: episodes that served agents lived through, into the landing zone.

One request (:meth:`EpisodeSink.post`):

1. Size: more than ``max_rows`` rows (FORESIGHT_EPISODES_MAX_ROWS) is a 413; the
   middleware's body limit (FORESIGHT_MAX_BODY_BYTES) bounds the bytes before that.
2. Dataset: the request's, else the one the served world model was trained on. Its spec:
   the lake's, else the ``foresight_spec.json`` in its landing folder, else the served
   models' (written beside the first file, so ingest creates the dataset with it).
3. Checks: the rows are written as JSON lines and read back by ingest's own reader
   (:func:`foresight.datasets.readers.iter_chunks`), then checked by
   :func:`~foresight.datasets.validate.check_rows` and
   :func:`~foresight.datasets.validate.check_episodes`: the rules and reasons of
   ``foresight ingest``. A request adds what "whole episodes" means: each list holds one
   episode, no episode comes twice, and its last step ends it (a row terminated or
   truncated). Any problem is a 400 naming each row (``episodes.<i>.<j>``) and its reason,
   and nothing of the request is kept. An episode already in the dataset is quarantined
   at ingest, as every duplicate is.
4. Buffer: accepted rows wait in memory, per dataset, and are written as one JSONL file
   ``landing/<dataset>/served-<time>-<id>.jsonl`` each (``Store.fs.write_bytes``: a
   dot-named temporary file renamed into place on a local folder, one PUT on S3, so no
   half file is ever listed; the landing sensor and ingest skip dot-names). The buffer is
   written when its oldest episode is ``flush_seconds`` old (FORESIGHT_EPISODES_FLUSH_SECONDS),
   when a request asks (``flush: true``: the buffer, then that request as a file of its
   own), when the service shuts down (SIGTERM included),
   and when a request would take it past ``buffer_rows`` / ``buffer_bytes``
   (FORESIGHT_EPISODES_BUFFER_ROWS / _BYTES): that request first writes the buffer, then
   joins it. So a full buffer costs one write, not a refusal, while the store takes writes.
5. The store refusing a write: the request that needed it gets 503 with the reason and
   ``Retry-After``, and is not accepted (so a client that retries doubles nothing); what
   was accepted before stays buffered and is written again, under the same file name (so
   a write that did land is not doubled), at the next flush.

A process killed without SIGTERM (SIGKILL, out of memory) loses what it buffered: at most
``flush_seconds`` of episodes. FORESIGHT_EPISODES_FLUSH_SECONDS=0 trades that for one
landing file per request: each is written before it is answered.

More than ``concurrency`` requests checked at once (FORESIGHT_EPISODES_CONCURRENCY) get
503 with ``Retry-After`` at once: checking is CPU work beside the models' event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from foresight.datasets.catalog import DatasetError, DatasetTable, check_name
from foresight.datasets.readers import iter_chunks
from foresight.datasets.schema import SPEC_FILENAME, DatasetSpec, SpecError
from foresight.datasets.storage import StorageError, Store
from foresight.datasets.validate import check_episodes, check_rows
from foresight.serving.schemas import EpisodesRequest, EpisodesResponse

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
MAX_PROBLEMS = 20
"""Rows named in one 400 answer; the rest are counted."""
SPEC_TTL_S = 60.0
"""How long a dataset's spec is reused before it is read again."""
FILE_PREFIX = "served-"
"""Landing files written by the service start with this."""


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _env_float(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class EpisodeLimits:
    """Bounds of ``/episodes`` (environment names in the module doc)."""

    max_rows: int = 20_000
    """Rows per request: ~5 MB of simple_spread JSON, inside the 8 MiB body limit."""
    buffer_rows: int = 100_000
    """Accepted rows held in memory before they must be written."""
    buffer_bytes: int = 64 << 20
    """Accepted JSON bytes held in memory before they must be written."""
    flush_seconds: float = 30.0
    """Longest an accepted episode waits in memory; 0 writes each request at once."""
    concurrency: int = 2
    """Requests checked at once; past it 503 (checking is CPU work)."""

    @classmethod
    def from_env(cls) -> EpisodeLimits:
        return cls(
            max_rows=_env_int("FORESIGHT_EPISODES_MAX_ROWS", cls.max_rows, 1),
            buffer_rows=_env_int("FORESIGHT_EPISODES_BUFFER_ROWS", cls.buffer_rows, 1),
            buffer_bytes=_env_int("FORESIGHT_EPISODES_BUFFER_BYTES", cls.buffer_bytes, 1024),
            flush_seconds=_env_float("FORESIGHT_EPISODES_FLUSH_SECONDS", cls.flush_seconds, 0),
            concurrency=_env_int("FORESIGHT_EPISODES_CONCURRENCY", cls.concurrency, 1),
        )


class EpisodesRejected(Exception):
    """A request the sink does not accept: its HTTP status, message and per-row detail."""

    def __init__(
        self, status: int, message: str, detail: list | None = None, retry: bool = False
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.detail, self.retry = status, message, detail or [], retry

    def response(self):
        from starlette.responses import JSONResponse

        headers = {"Retry-After": str(RETRY_AFTER_S)} if self.retry else None
        body = {"error": self.message, "detail": self.detail}
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass
class _Batch:
    """Accepted lines of one dataset that will be one landing file."""

    dataset: str
    name: str = field(
        default_factory=lambda: (
            f"{FILE_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:16]}.jsonl"
        )
    )
    lines: list[bytes] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    episodes: int = 0
    since: float = field(default_factory=time.monotonic)
    spec: DatasetSpec | None = None
    """Written beside the file when the dataset and its landing folder have no spec yet."""


def _problem(where: tuple[int, int] | tuple[int], reason: str) -> dict[str, Any]:
    """One rejected row as a pydantic-style error item: the middleware prints it as
    ``episodes.<i>.<j>: <reason>``."""
    return {"loc": ["episodes", *where], "msg": reason, "type": "trajectory_contract"}


def _json_line(row: dict[str, Any]) -> bytes:
    """One row as a JSON line. orjson (fast) writes NaN and inf as null, which would read
    back as a missing value, so a line with a null is written again by the json module,
    which keeps them as the ``NaN`` tokens the ingest reader names."""
    try:
        line = orjson.dumps(row)
    except TypeError:  # an int beyond 64 bits: the json module writes it, the reader says why
        line = b"null"
    if b"null" in line:
        line = json.dumps(row, separators=(",", ":"), allow_nan=True).encode()
    return line


def check_request(
    episodes: Sequence[Sequence[dict[str, Any]]], spec: DatasetSpec
) -> tuple[list[bytes], list[str], list[dict[str, Any]]]:
    """The JSON lines of each episode, the episode ids, and the problems (empty when all
    is well), checked as ``foresight ingest`` checks rows plus the whole-episode rules."""
    lines: list[bytes] = []
    where: list[tuple[int, int]] = []
    problems: list[tuple[int, dict[str, Any]]] = []  # (line, item) to sort by line
    for i, episode in enumerate(episodes):
        if not episode:
            problems.append((len(lines), _problem((i,), "an episode needs at least one row")))
        for j, row in enumerate(episode):
            lines.append(_json_line(row))
            where.append((i, j))
    data = b"\n".join(lines) + b"\n" if lines else b""
    valid_parts: list[pl.DataFrame] = []
    tainted: set[str] = set()
    for chunk in iter_chunks(io.BytesIO(data), "episodes.jsonl", spec) if data else ():
        valid, invalid = check_rows(chunk.rows, spec)
        for line, reason in zip(chunk.rejected["_line"], chunk.rejected["reason"], strict=True):
            problems.append((line, _problem(where[line - 1], reason)))
        for line, reason, episode_id in zip(
            invalid["_line"], invalid["reason"], invalid["episode_id"], strict=True
        ):
            problems.append((line, _problem(where[line - 1], reason)))
            if episode_id is not None:
                tainted.add(episode_id)
        valid_parts.append(valid)
    rows = pl.concat(valid_parts) if valid_parts else pl.DataFrame()
    ids: list[str] = []
    if rows.height:
        index = pl.Series("_episode", [i for i, _ in where], dtype=pl.Int64)
        rows = rows.with_columns(index.gather(rows["_line"] - 1))
        keys = rows.select(
            "episode_id",
            "step",
            "agent_id",
            pl.col("_line").cast(pl.Int64).alias("_ord"),
            pl.col("episode_id")
            .is_in(pl.Series(sorted(tainted), dtype=pl.String).implode())
            .alias("_tainted"),
        )
        flagged = check_episodes(keys, None).join(
            keys.select("_ord", "episode_id", "_tainted"), on="_ord"
        )
        # One item per episode and reason (first row), and none for the "other rows were
        # quarantined" reason: those rows are named already.
        flagged = flagged.filter(~pl.col("_tainted") | pl.col("reason").str.starts_with("dup"))
        for line, reason in (
            (
                flagged.sort("_ord").unique(
                    ["episode_id", "reason"], keep="first", maintain_order=True
                )
            )
            .select("_ord", "reason")
            .iter_rows()
        ):
            problems.append((line, _problem(where[line - 1], reason)))
        problems.extend(_whole_episode_problems(rows, where))
        ids = (
            rows.group_by("_episode")
            .agg(pl.col("episode_id").first())
            .sort("_episode")["episode_id"]
            .to_list()
        )
    problems.sort(key=lambda p: p[0])
    per_episode: list[bytes] = []
    start = 0
    for episode in episodes:
        per_episode.append(b"".join(line + b"\n" for line in lines[start : start + len(episode)]))
        start += len(episode)
    return per_episode, ids, [item for _, item in problems]


def _whole_episode_problems(
    rows: pl.DataFrame, where: list[tuple[int, int]]
) -> list[tuple[int, dict[str, Any]]]:
    """What a request adds to ingest's rules: one episode per list, each once, each ended."""
    out: list[tuple[int, dict[str, Any]]] = []
    first = (
        rows.sort("_line")
        .group_by("_episode", maintain_order=True)
        .agg(pl.col("episode_id").first().alias("first_id"), pl.col("_line").first())
    )
    mixed = rows.join(first.select("_episode", "first_id"), on="_episode").filter(
        pl.col("episode_id") != pl.col("first_id")
    )
    for line, eid, first_id in (
        mixed.sort("_line").select("_line", "episode_id", "first_id").iter_rows()
    ):
        out.append(
            (
                line,
                _problem(
                    where[line - 1],
                    f"episode_id '{eid}' differs from its episode's first row ('{first_id}'); "
                    "each list holds one episode",
                ),
            )
        )
    seen: dict[str, int] = {}
    for episode, eid, line in first.select("_episode", "first_id", "_line").iter_rows():
        if eid in seen:
            out.append(
                (
                    line,
                    _problem(
                        where[line - 1],
                        f"episode '{eid}' is also episodes.{seen[eid]}; post each episode once",
                    ),
                )
            )
        else:
            seen[eid] = episode
    last = rows.group_by("_episode").agg(
        pl.col("step").max().alias("last_step"),
        (pl.col("terminated") | pl.col("truncated"))
        .filter(pl.col("step") == pl.col("step").max())
        .any()
        .alias("ends"),
        pl.col("episode_id").first(),
        pl.col("_line").max(),
    )
    for _, eid, step, line in (
        last.filter(~pl.col("ends"))
        .sort("_line")
        .select("_episode", "episode_id", "last_step", "_line")
    ).iter_rows():
        out.append(
            (
                line,
                _problem(
                    where[line - 1],
                    f"episode '{eid}' has not ended: no row of its last step {step} is "
                    "terminated or truncated; post whole episodes",
                ),
            )
        )
    return out


class EpisodeSink:
    """Checks, buffers and writes posted episodes (see the module doc)."""

    def __init__(
        self,
        store: Store,
        served_card: Callable[[], dict[str, Any] | None] = lambda: None,
        limits: EpisodeLimits | None = None,
    ) -> None:
        """``served_card``: the served world model's card, read per request (a reload may
        change it); it names the default dataset and the fallback spec."""
        self.store = store
        self.served_card = served_card
        self.limits = limits or EpisodeLimits.from_env()
        self._lock = threading.Lock()  # the buffer
        self._flush_lock = threading.Lock()  # one writer at a time
        self._open: dict[str, _Batch] = {}
        self._sealed: list[_Batch] = []  # taken for writing, not yet written
        self._specs: dict[str, tuple[DatasetSpec, bool, float]] = {}
        self._active = 0
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self.last_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> EpisodeSink:
        """Start the thread that writes episodes older than ``flush_seconds``."""
        if self._timer is None and self.limits.flush_seconds > 0:
            self._timer = threading.Thread(
                target=self._flush_when_due, name="foresight-episodes", daemon=True
            )
            self._timer.start()
        return self

    def close(self, attempts: int = 3) -> list[str]:
        """Stop the timer and write everything buffered (retried a few times): the
        shutdown hook, so a SIGTERM loses nothing accepted."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=30)
        for attempt in range(attempts):
            try:
                return self.flush()
            except StorageError as exc:
                log.error("episodes: shutdown flush %d failed: %s", attempt + 1, exc)
                time.sleep(0.5 * (attempt + 1))
        lost = self.buffered_rows
        log.error("episodes: %d accepted rows could not be written at shutdown", lost)
        return []

    def _flush_when_due(self) -> None:
        period = self.limits.flush_seconds
        while not self._stop.wait(min(period, 1.0)):
            with self._lock:
                due = self._sealed or any(
                    time.monotonic() - b.since >= period for b in self._open.values()
                )
            if due:
                try:
                    self.flush()
                except StorageError as exc:
                    log.warning("episodes: flush failed, retrying later: %s", exc)

    # -- state -----------------------------------------------------------------------------
    @property
    def buffered_rows(self) -> int:
        with self._lock:
            return sum(b.rows for b in (*self._open.values(), *self._sealed))

    def _buffered(self) -> tuple[int, int]:
        batches = (*self._open.values(), *self._sealed)
        return sum(b.rows for b in batches), sum(b.nbytes for b in batches)

    # -- writing ---------------------------------------------------------------------------
    def flush(self) -> list[str]:
        """Write every buffered batch into its landing folder; the URIs written. A batch
        that fails stays buffered under its name; StorageError says why."""
        with self._flush_lock:
            with self._lock:
                self._sealed.extend(self._open.values())
                self._open.clear()
                todo = list(self._sealed)
            written = []
            for batch in todo:
                uri = self._write(batch)
                with self._lock:
                    self._sealed.remove(batch)
                written.append(uri)
            return written

    def _write(self, batch: _Batch) -> str:
        fs = self.store.fs
        folder = self.store.landing_uri(batch.dataset)
        uri = f"{folder}/{batch.name}"
        try:
            if batch.spec is not None:  # the dataset's first episodes: its spec goes beside
                spec_uri = f"{folder}/{SPEC_FILENAME}"
                if not fs.exists(spec_uri) and not DatasetTable(self.store, batch.dataset).exists():
                    fs.write_if(spec_uri, batch.spec.to_json().encode(), None)
            fs.write_bytes(uri, b"".join(batch.lines))
        except StorageError as exc:
            self.last_error = str(exc)
            raise
        except OSError as exc:  # a local folder that is not writable
            self.last_error = f"cannot write {uri}: {exc}"
            raise StorageError(self.last_error) from exc
        self.last_error = None
        log.info("episodes: wrote %d episodes (%d rows) to %s", batch.episodes, batch.rows, uri)
        return uri

    # -- one request -----------------------------------------------------------------------
    def _dataset(self, requested: str | None) -> str:
        if not requested:
            card = self.served_card() or {}
            requested = (card.get("dataset") or {}).get("name")
            if not requested:
                raise EpisodesRejected(
                    400, "dataset: the served world model's card names no dataset; give one"
                )
        try:
            return check_name(requested)
        except DatasetError as exc:
            raise EpisodesRejected(400, f"dataset: {exc}") from exc

    def spec_for(self, dataset: str) -> tuple[DatasetSpec, bool]:
        """The spec episodes of ``dataset`` are checked against, and whether it still has
        to be written beside them (it came from the served models)."""
        cached = self._specs.get(dataset)
        if cached and time.monotonic() - cached[2] < SPEC_TTL_S:
            return cached[0], cached[1]
        try:
            spec = DatasetTable(self.store, dataset).spec()
            pending = False
            if spec is None:
                spec_uri = self.store.landing_uri(dataset, SPEC_FILENAME)
                if self.store.fs.exists(spec_uri):
                    spec = DatasetSpec.from_json(self.store.fs.read_bytes(spec_uri))
            if spec is None:
                card = self.served_card() or {}
                if "spec" not in card:
                    raise EpisodesRejected(
                        409,
                        f"dataset: {dataset!r} does not exist and the served models carry no "
                        "spec to start it with; ingest its first logs with `foresight ingest`",
                    )
                spec, pending = DatasetSpec.from_dict(card["spec"]), True
        except StorageError as exc:
            raise EpisodesRejected(
                503, f"landing: cannot read the spec of {dataset!r}: {exc}", retry=True
            ) from exc
        except SpecError as exc:
            raise EpisodesRejected(
                409, f"dataset {dataset!r}: its spec is unusable: {exc}"
            ) from exc
        self._specs[dataset] = (spec, pending, time.monotonic())
        return spec, pending

    def post(self, request: EpisodesRequest) -> EpisodesResponse:
        """Check one request and buffer it (or raise :class:`EpisodesRejected`)."""
        n_rows = sum(len(e) for e in request.episodes)
        if n_rows > self.limits.max_rows:
            raise EpisodesRejected(
                413,
                f"episodes: {n_rows} rows in {len(request.episodes)} episodes, more than the "
                f"limit of {self.limits.max_rows} rows per request "
                "(FORESIGHT_EPISODES_MAX_ROWS); post fewer episodes per request",
            )
        dataset = self._dataset(request.dataset)
        written: list[str] = []
        ids: list[str] = []
        if request.episodes:
            spec, pending = self.spec_for(dataset)
            blocks, ids, problems = check_request(request.episodes, spec)
            if problems:
                shown = problems[:MAX_PROBLEMS]
                if len(problems) > MAX_PROBLEMS:
                    shown.append(
                        {
                            "loc": ["episodes"],
                            "msg": f"and {len(problems) - MAX_PROBLEMS} more problems",
                            "type": "trajectory_contract",
                        }
                    )
                raise EpisodesRejected(
                    400,
                    f"episodes: {len(problems)} problems; nothing of this request was kept",
                    shown,
                )
            batch = _Batch(dataset, spec=spec if pending else None)
            batch.lines, batch.rows, batch.episodes = blocks, n_rows, len(blocks)
            batch.nbytes = sum(len(b) for b in blocks)
        else:
            batch = None
        if request.flush or self.limits.flush_seconds == 0:
            # written now, after what was buffered: a 503 means this request was not accepted
            written = self._flush_or_503()
            if batch is not None:
                written.append(self._write_or_503(batch))
        elif batch is not None:
            written = self._add(batch)
        return EpisodesResponse(
            dataset=dataset,
            episode_ids=ids,
            rows=n_rows,
            buffered_rows=self.buffered_rows,
            written=written,
        )

    def _flush_or_503(self) -> list[str]:
        try:
            return self.flush()
        except StorageError as exc:
            raise EpisodesRejected(
                503,
                f"landing: cannot write to the landing zone ({exc}); this request was not "
                "accepted, the episodes accepted before it stay buffered and are written when "
                "the landing zone is writable again",
                retry=True,
            ) from exc

    def _write_or_503(self, batch: _Batch) -> str:
        try:
            with self._flush_lock:
                return self._write(batch)
        except StorageError as exc:
            raise EpisodesRejected(
                503,
                f"landing: cannot write to the landing zone ({exc}); this request was not accepted",
                retry=True,
            ) from exc

    def _add(self, new: _Batch) -> list[str]:
        """Buffer a checked request (writing the buffer first when it would overflow)."""
        rows, nbytes = new.rows, new.nbytes
        limits = self.limits
        written: list[str] = []
        with self._lock:
            held_rows, held_bytes = self._buffered()
        if held_rows and (
            held_rows + rows > limits.buffer_rows or held_bytes + nbytes > limits.buffer_bytes
        ):
            try:
                written = self.flush()
            except StorageError as exc:
                raise EpisodesRejected(
                    503,
                    f"landing: the episode buffer is full ({held_rows} rows) and cannot be "
                    f"written ({exc}); this request was not accepted, retry later",
                    retry=True,
                ) from exc
        with self._lock:
            batch = self._open.get(new.dataset)
            if batch is None:
                self._open[new.dataset] = new
            else:
                batch.lines.extend(new.lines)
                batch.rows += rows
                batch.nbytes += nbytes
                batch.episodes += new.episodes
                batch.spec = batch.spec or new.spec
        return written

    async def handle(self, request: EpisodesRequest):
        """The route's body: :meth:`post` in a worker thread, at most ``concurrency`` at
        once; an :class:`EpisodesResponse`, or a JSON error response."""
        with self._lock:
            busy = self._active >= self.limits.concurrency
            if not busy:
                self._active += 1
        if busy:
            return EpisodesRejected(
                503,
                f"overloaded: {self.limits.concurrency} /episodes requests already being "
                f"checked; retry after {RETRY_AFTER_S} s",
                retry=True,
            ).response()
        try:
            return await asyncio.to_thread(self.post, request)
        except EpisodesRejected as exc:
            return exc.response()
        finally:
            with self._lock:
                self._active -= 1
