"""One store root, a local folder by default or ``s3://bucket/prefix``; the same calls for both.

``FORESIGHT_STORE`` picks the root (default ``./.foresight``). For S3 the endpoint comes from
``FORESIGHT_S3_ENDPOINT`` (e.g. ``http://127.0.0.1:8333``) and the credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (``AWS_REGION`` optional). Any S3 server
works: MinIO in production, SeaweedFS in tests.

Paths are URIs throughout: a local path, or ``s3://bucket/key``. Delta Lake tables get
:meth:`Store.storage_options` (polars: :meth:`Store.polars_storage_options`); plain objects
(landing files, registry JSON, spec files) go through the functions here, which use the minio
SDK on S3.

Every S3 call is bounded, so a server that accepts connections and never answers fails the
call instead of hanging it:

- ``FORESIGHT_S3_CONNECT_TIMEOUT`` (seconds, default 5): to open a connection.
- ``FORESIGHT_S3_READ_TIMEOUT`` (seconds, default 30): minio waits at most this long for the
  next bytes of an answer; Delta Lake and polars (object_store) for a whole request.
- ``FORESIGHT_S3_RETRIES`` (default 2): retries after a failed attempt. object_store retries
  until ``retries x (connect + read)`` seconds have passed since the first attempt.

One call thus gives up after about ``(retries + 1) x (connect + read)`` seconds at most.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

DEFAULT_STORE = "./.foresight"


class StorageError(RuntimeError):
    """The store (or a source) cannot be reached, read or written."""


class StorageConfigError(StorageError):
    """The storage settings (environment variables) are missing or malformed."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', for local paths and S3 alike."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def _env_number(name: str, default: float, minimum: float) -> float:
    """A positive number from the environment; a clear error naming the variable otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= minimum:  # also refuses NaN
        raise StorageConfigError(
            f"{name}={raw!r} is not a number >= {minimum:g} (seconds or a count)"
        )
    return value


def connect_timeout_from_env() -> float:
    """Seconds to open a connection to the S3 server (``FORESIGHT_S3_CONNECT_TIMEOUT``)."""
    return _env_number("FORESIGHT_S3_CONNECT_TIMEOUT", 5.0, 0.1)


def read_timeout_from_env() -> float:
    """Seconds to wait for an answer (``FORESIGHT_S3_READ_TIMEOUT``)."""
    return _env_number("FORESIGHT_S3_READ_TIMEOUT", 30.0, 0.1)


def retries_from_env() -> int:
    """Retries after a failed S3 attempt (``FORESIGHT_S3_RETRIES``)."""
    return int(_env_number("FORESIGHT_S3_RETRIES", 2, 0))


@dataclass(frozen=True)
class S3Config:
    """Where the S3 server is, how to sign requests to it and how long to wait for it."""

    endpoint: str
    """Full URL, e.g. ``http://127.0.0.1:8333``."""
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    connect_timeout: float = field(default_factory=connect_timeout_from_env)
    """Seconds to open a connection; a dead host fails fast."""
    read_timeout: float = field(default_factory=read_timeout_from_env)
    """Seconds to wait for an answer; a server that accepts and never answers fails too."""
    retries: int = field(default_factory=retries_from_env)
    """Retries after a failed attempt (connection errors, timeouts, 5xx)."""

    @property
    def retry_budget(self) -> float:
        """Seconds after the first attempt in which object_store may still retry."""
        return self.retries * (self.connect_timeout + self.read_timeout)

    def bounds(self) -> str:
        """The timeouts in force, as the variables that set them (for error messages)."""
        return (
            f"FORESIGHT_S3_CONNECT_TIMEOUT={self.connect_timeout:g}s, "
            f"FORESIGHT_S3_READ_TIMEOUT={self.read_timeout:g}s, "
            f"FORESIGHT_S3_RETRIES={self.retries}"
        )

    @classmethod
    def from_env(cls) -> S3Config:
        endpoint = os.environ.get("FORESIGHT_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            raise StorageConfigError(
                "an s3:// location needs FORESIGHT_S3_ENDPOINT (e.g. http://127.0.0.1:8333); "
                "`foresight storage up` starts a local S3 server and prints what to export"
            )
        if "://" not in endpoint:
            endpoint = "http://" + endpoint
        access = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise StorageConfigError(
                f"S3 endpoint {endpoint} needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to be set"
            )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(
            endpoint=endpoint.rstrip("/"), access_key=access, secret_key=secret, region=region
        )

    @property
    def secure(self) -> bool:
        return self.endpoint.startswith("https://")

    @property
    def host(self) -> str:
        return urlparse(self.endpoint).netloc

    def storage_options(self) -> dict[str, str]:
        """Options for deltalake (object_store): etag conditional puts for commits, bounded waits.

        ``timeout``/``connect_timeout`` are object_store client options (whole request /
        connection); ``retry_timeout`` ends its retries (default 10 retries within 3 minutes).
        Values are strings, as deltalake wants them.
        """
        opts = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "conditional_put": "etag",
            "timeout": f"{self.read_timeout:g}s",
            "connect_timeout": f"{self.connect_timeout:g}s",
            "retry_timeout": f"{self.retry_budget:g}s",
        }
        if not self.secure:
            opts["AWS_ALLOW_HTTP"] = "true"
        return opts

    def polars_storage_options(self) -> dict[str, str | int]:
        """Options for polars' own S3 reader: as for deltalake, with polars' retry keys.

        polars wants ``max_retries``/``retry_timeout_ms`` as integers and deltalake refuses
        integers, so the two get separate dictionaries (``pl.scan_delta`` drops polars' keys
        before it opens the Delta table).
        """
        opts: dict[str, str | int] = dict(self.storage_options())
        del opts["retry_timeout"]
        opts["max_retries"] = self.retries
        opts["retry_timeout_ms"] = int(self.retry_budget * 1000)
        return opts

    def client(self):
        """A minio client with bounded connect and read timeouts and a few retries."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout),
            retries=urllib3.Retry(
                total=self.retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
            maxsize=16,
        )
        return Minio(
            endpoint=self.host,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=http,
        )


_OPERATIONS = {
    "get_object": "read",
    "stat_object": "stat",
    "list_objects": "list",
    "put_object": "write",
    "_put_object": "write",
    "fput_object": "upload",
    "remove_object": "delete",
    "bucket_exists": "check the bucket of",
    "make_bucket": "create the bucket of",
}
"""minio call -> the operation named in error messages."""


def _reason(config: S3Config, exc: Exception) -> str:
    """What went wrong on the wire, in a few words (urllib3 wraps it in MaxRetryError)."""
    from urllib3 import exceptions as e

    cause = exc.reason if isinstance(exc, e.MaxRetryError) and exc.reason else exc
    if isinstance(cause, e.NewConnectionError):  # before ConnectTimeoutError: a subclass
        return "connection refused"
    if isinstance(cause, e.ConnectTimeoutError):
        return f"no connection within {config.connect_timeout:g}s"
    if isinstance(cause, e.ReadTimeoutError | TimeoutError):
        return f"no answer within {config.read_timeout:g}s"
    if isinstance(cause, e.ProtocolError):
        return "the connection dropped mid-request"
    return f"{type(cause).__name__}: {cause}"


def _s3_error(config: S3Config, uri: str, exc: Exception, op: str = "access") -> StorageError:
    """Turn a minio/urllib3 failure into one line: the endpoint, the operation, what to do."""
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        if exc.code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
            return StorageError(
                f"S3 endpoint {config.endpoint} refused the credentials ({exc.code}) to {op} "
                f"{uri}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        return StorageError(
            f"S3 endpoint {config.endpoint}: {exc.code} when trying to {op} {uri}: {exc.message}"
        )
    return StorageError(
        f"cannot {op} {uri} at S3 endpoint {config.endpoint}: {_reason(config, exc)} "
        f"({config.bounds()}); is the server running (`foresight storage up`) and "
        "FORESIGHT_S3_ENDPOINT right?"
    )


class FileSystem:
    """Reads, writes and lists local paths and ``s3://`` URIs with one set of calls."""

    def __init__(self, s3: S3Config | None = None) -> None:
        self._s3 = s3

    @property
    def s3(self) -> S3Config:
        if self._s3 is None:
            self._s3 = S3Config.from_env()
        return self._s3

    @cached_property
    def _client(self):
        return self.s3.client()

    def _call(self, uri: str, fn, *args, **kwargs):
        """Run one minio call; its failures become FileNotFoundError or a StorageError."""
        from minio.error import S3Error

        op = _OPERATIONS.get(getattr(fn, "__name__", ""), "access")
        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchBucket"}:
                raise FileNotFoundError(uri) from exc
            raise _s3_error(self.s3, uri, exc, op) from exc
        except (OSError, Exception) as exc:  # urllib3 errors are not OSError subclasses
            if isinstance(exc, FileNotFoundError | StorageError):
                raise
            if type(exc).__module__.startswith(("urllib3", "minio")) or isinstance(exc, OSError):
                raise _s3_error(self.s3, uri, exc, op) from exc
            raise

    # -- reading -------------------------------------------------------------------------
    def open_read(self, uri: str) -> BinaryIO:
        """A readable binary stream (streamed from S3, not loaded whole)."""
        if not is_s3(uri):
            return open(uri, "rb")
        bucket, key = split_s3(uri)
        response = self._call(uri, self._client.get_object, bucket_name=bucket, object_name=key)
        return _S3Stream(response)

    def read_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as fh:
            return fh.read()

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return os.path.exists(uri)
        bucket, key = split_s3(uri)
        try:
            self._call(uri, self._client.stat_object, bucket_name=bucket, object_name=key)
        except FileNotFoundError:
            return False
        return True

    def size(self, uri: str) -> int:
        if not is_s3(uri):
            return os.path.getsize(uri)
        bucket, key = split_s3(uri)
        stat = self._call(uri, self._client.stat_object, bucket_name=bucket, object_name=key)
        return int(stat.size)

    def list_files(self, prefix: str) -> list[str]:
        """Every file under ``prefix`` (recursively), sorted; empty when there is none."""
        if not is_s3(prefix):
            root = Path(prefix)
            if root.is_file():
                return [str(root)]
            if not root.is_dir():
                return []
            return sorted(str(p) for p in root.rglob("*") if p.is_file())
        bucket, key = split_s3(prefix)
        key = key.rstrip("/")
        objects = self._list_objects(prefix, recursive=True)
        files = [f"s3://{bucket}/{o.object_name}" for o in objects if not o.is_dir]
        if not files and key and self.exists(prefix):
            return [prefix]
        return sorted(files)

    def _list_objects(self, prefix: str, recursive: bool) -> list:
        """Objects under an ``s3://`` prefix (treated as a folder)."""
        bucket, key = split_s3(prefix)
        key = key.rstrip("/")

        def list_objects() -> list:  # named: the error says "cannot list ..."
            return list(
                self._client.list_objects(
                    bucket_name=bucket, prefix=key + "/" if key else None, recursive=recursive
                )
            )

        return self._call(prefix, list_objects)

    def list_dirs(self, prefix: str) -> list[str]:
        """The immediate sub-folders of ``prefix`` (S3: common prefixes), sorted."""
        if not is_s3(prefix):
            root = Path(prefix)
            return sorted(str(p) for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        bucket, _ = split_s3(prefix)
        objects = self._list_objects(prefix, recursive=False)
        return sorted(f"s3://{bucket}/{o.object_name.rstrip('/')}" for o in objects if o.is_dir)

    def glob(self, pattern: str) -> list[str]:
        """Files matching a shell glob (``*``, ``?``, ``[...]``; ``**`` for any depth)."""
        if not is_s3(pattern):
            import glob as _glob

            return sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
        first = min((pattern.find(c) for c in "*?[" if c in pattern), default=len(pattern))
        base = pattern[:first].rsplit("/", 1)[0]
        return [u for u in self.list_files(base) if fnmatch.fnmatch(u, pattern)]

    # -- writing -------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a whole object atomically: readers see the old or the new bytes, never half."""
        if not is_s3(uri):
            path = Path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return
        bucket, key = split_s3(uri)
        self._call(
            uri,
            self._client.put_object,
            bucket_name=bucket,
            object_name=key,
            data=io.BytesIO(data),
            length=len(data),
        )

    # -- conditional writes: the building block for safe concurrent writers ---------------
    def read_versioned(self, uri: str) -> tuple[bytes, str] | None:
        """The object's bytes and a token naming this exact content; None when it is absent.

        Pass the token to :meth:`write_if` to replace the object only if nobody changed it in
        between (S3: the ETag; local: the sha256 of the bytes, checked under a file lock).
        """
        if not is_s3(uri):
            try:
                data = Path(uri).read_bytes()
            except FileNotFoundError:
                return None
            return data, hashlib.sha256(data).hexdigest()
        bucket, key = split_s3(uri)
        try:
            response = self._call(uri, self._client.get_object, bucket_name=bucket, object_name=key)
        except FileNotFoundError:
            return None
        try:
            return response.read(), response.headers.get("ETag", "")
        finally:
            response.close()
            response.release_conn()

    def write_if(self, uri: str, data: bytes, token: str | None) -> bool:
        """Write ``data`` only if the object is still as :meth:`read_versioned` saw it.

        ``token=None`` means "only if it does not exist yet" (exclusive create). Returns False,
        writing nothing, when another writer got there first; the write itself is atomic.
        """
        if not is_s3(uri):
            return _local_write_if(Path(uri), data, token)
        from minio.error import S3Error

        bucket, key = split_s3(uri)
        headers = {"If-None-Match": "*"} if token is None else {"If-Match": token}
        try:
            self._client._put_object(bucket, key, data, headers=headers)
        except S3Error as exc:
            if exc.code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                return False
            if exc.code == "NoSuchKey" and token is not None:
                return False
            raise _s3_error(self.s3, uri, exc, "write") from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("urllib3", "minio")) or isinstance(exc, OSError):
                raise _s3_error(self.s3, uri, exc, "write") from exc
            raise
        return True

    def upload(self, local_path: str, uri: str) -> None:
        if not is_s3(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_path, uri)
            return
        bucket, key = split_s3(uri)
        self._call(
            uri, self._client.fput_object, bucket_name=bucket, object_name=key, file_path=local_path
        )

    def delete_tree(self, prefix: str) -> None:
        """Remove everything under ``prefix``; a missing prefix is not an error."""
        if not is_s3(prefix):
            if os.path.isdir(prefix):
                shutil.rmtree(prefix)
            elif os.path.exists(prefix):
                os.remove(prefix)
            return
        bucket, _ = split_s3(prefix)
        for uri in self.list_files(prefix):
            _, key = split_s3(uri)
            self._call(uri, self._client.remove_object, bucket_name=bucket, object_name=key)

    def ensure_bucket(self, uri: str) -> None:
        """Create the bucket of an ``s3://`` URI if it does not exist yet."""
        if not is_s3(uri):
            Path(uri).mkdir(parents=True, exist_ok=True)
            return
        from minio.error import S3Error

        bucket, _ = split_s3(uri)
        if self._call(uri, self._client.bucket_exists, bucket_name=bucket):
            return
        try:
            self._call(uri, self._client.make_bucket, bucket_name=bucket)
        except StorageError as exc:  # another process made it between the check and here
            cause = exc.__cause__
            if not (isinstance(cause, S3Error) and cause.code == "BucketAlreadyOwnedByYou"):
                raise


def _local_write_if(path: Path, data: bytes, token: str | None) -> bool:
    """Compare-and-swap of a local file: the check and the rename happen under one flock."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = path.read_bytes()
        except FileNotFoundError:
            current = None
        if token is None:
            if current is not None:
                return False
        elif current is None or hashlib.sha256(current).hexdigest() != token:
            return False
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True


class ConflictError(StorageError):
    """A conditional update kept losing to other writers and gave up."""


class _S3Stream(io.RawIOBase):
    """A file-like view of a minio response that releases the connection on close."""

    def __init__(self, response) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._response.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self._response.read()
        return self._response.read(size)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


class Store:
    """The store root and the layout under it (see the architecture doc)."""

    def __init__(self, root: str | None = None, s3: S3Config | None = None) -> None:
        root = root or os.environ.get("FORESIGHT_STORE") or DEFAULT_STORE
        if not is_s3(root):
            root = str(Path(root).expanduser().resolve())
        self.root = root.rstrip("/")
        self.fs = FileSystem(s3)

    @classmethod
    def from_env(cls) -> Store:
        return cls()

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    @property
    def is_s3(self) -> bool:
        return is_s3(self.root)

    def uri(self, *parts: str) -> str:
        return join(self.root, *parts)

    def storage_options(self) -> dict[str, str] | None:
        """deltalake's options for this store (None for a local folder)."""
        return self.fs.s3.storage_options() if self.is_s3 else None

    def polars_storage_options(self) -> dict[str, str | int] | None:
        """polars' options for this store (None for a local folder)."""
        return self.fs.s3.polars_storage_options() if self.is_s3 else None

    def ensure(self) -> None:
        """Make sure the root exists (folder or bucket)."""
        self.fs.ensure_bucket(self.root)

    def table_uri(self, name: str) -> str:
        return self.uri("lake", name)

    def landing_uri(self, *parts: str) -> str:
        return self.uri("landing", *parts)

    def local_scratch(self) -> tempfile.TemporaryDirectory:
        """A scratch folder on the local disk for staging (removed on exit)."""
        return tempfile.TemporaryDirectory(prefix="foresight-")

    def read_json(self, rel: str) -> dict | None:
        import json

        uri = self.uri(rel)
        try:
            return json.loads(self.fs.read_bytes(uri))
        except FileNotFoundError:
            return None

    def write_json(self, rel: str, data: dict) -> None:
        import json

        self.fs.write_bytes(self.uri(rel), json.dumps(data, indent=2, sort_keys=True).encode())

    def update_json(self, rel: str, change, attempts: int = 50) -> dict:
        """Read-modify-write of a JSON document that no concurrent writer can lose.

        ``change(data)`` gets the current document (None when absent), returns the new one and
        may raise to abort; it is re-run on the fresh document whenever another writer won the
        race, so every update that returns is in the final state. Returns what was written.
        """
        import json
        import random
        import time

        uri = self.uri(rel)
        for attempt in range(attempts):
            found = self.fs.read_versioned(uri)
            current, token = (json.loads(found[0]), found[1]) if found else (None, None)
            new = change(current)
            body = json.dumps(new, indent=2, sort_keys=True).encode()
            if self.fs.write_if(uri, body, token):
                return new
            time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise ConflictError(
            f"could not update {uri} after {attempts} attempts: other writers kept changing it"
        )
