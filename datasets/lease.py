"""A lease: one holder at a time for a named resource in the store, local folder or S3.

The lease is one small JSON object, created with an exclusive write and changed only by
compare-and-swap (:meth:`FileSystem.write_if`), so two processes can never both believe
they hold it. While held, a heartbeat thread rewrites it every ``ttl / 3`` seconds. A
waiter that sees the same lease content for longer than the holder's ``ttl`` (measured on
the waiter's own monotonic clock, so clock skew between machines does not matter) takes it
over by compare-and-swap: a crashed holder cannot keep it forever. Release marks it free
(again by compare-and-swap); nothing is ever deleted, so there is no delete/create race.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from foresight.datasets.storage import Store

DEFAULT_TTL = 30.0
"""Seconds without a heartbeat after which a lease counts as abandoned."""
DEFAULT_WAIT = 1800.0
"""Seconds a waiter waits for a busy lease before giving up (a big commit can take minutes)."""


class LeaseBusy(RuntimeError):
    """The lease stayed held by a live holder for longer than the caller would wait."""


class LeaseLost(RuntimeError):
    """Another process took the lease over while we held it (our heartbeat stalled)."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from exc


@dataclass
class Lease:
    """Hold with ``with Lease(store, "leases/datasets/spread.json"):``."""

    store: Store
    rel: str
    ttl: float = field(default_factory=lambda: _env_float("FORESIGHT_LEASE_TTL", DEFAULT_TTL))
    wait: float = field(default_factory=lambda: _env_float("FORESIGHT_LEASE_WAIT", DEFAULT_WAIT))
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if not self.ttl > 0 or not self.wait >= 0:
            raise ValueError(
                f"lease ttl must be > 0 and wait >= 0 seconds (FORESIGHT_LEASE_TTL, "
                f"FORESIGHT_LEASE_WAIT), got ttl={self.ttl}, wait={self.wait}"
            )
        self.uri = self.store.uri(self.rel)
        self._token: str | None = None
        self._beat = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False
        self.waited = 0.0
        """Seconds spent waiting for another holder."""
        self.took_over: dict | None = None
        """The abandoned lease this holder replaced, if any."""

    def _body(self, free: bool = False) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "ttl": self.ttl,
                "beat": self._beat,
                "at": time.time(),
                "free": free,
            },
            sort_keys=True,
        ).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        found = self.store.fs.read_versioned(self.uri)
        if found is None:
            return None, None
        try:
            return json.loads(found[0]), found[1]
        except ValueError:  # unreadable: treat it as a lease nobody renews
            return {"ttl": self.ttl, "free": False, "owner": "?"}, found[1]

    def _claim(self, token: str | None) -> bool:
        """Write our lease over ``token`` (None: create); keep the new token on success."""
        if not self.store.fs.write_if(self.uri, self._body(), token):
            return False
        data, new_token = self._read()
        if not data or data.get("owner") != self.owner:
            return False
        self._token = new_token
        return True

    def acquire(self) -> Lease:
        start = time.monotonic()
        seen: tuple[str | None, float] | None = None  # (token, when first seen)
        while True:
            data, token = self._read()
            if data is None or data.get("free"):
                if self._claim(token):
                    break
            else:
                now = time.monotonic()
                if seen is None or seen[0] != token:
                    seen = (token, now)
                elif now - seen[1] > float(data.get("ttl") or self.ttl) and self._claim(token):
                    self.took_over = data  # unchanged for a whole ttl: the holder is gone
                    break
                if now - start > self.wait:
                    raise LeaseBusy(
                        f"{self.uri} is held by {data.get('host')} pid {data.get('pid')} and "
                        f"was not released within {self.wait:.0f}s; wait for that process, or "
                        "raise FORESIGHT_LEASE_WAIT"
                    )
            time.sleep(min(1.0, self.ttl / 6) * random.uniform(0.5, 1.0))
        self.waited = time.monotonic() - start
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="lease")
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                if self.lost or self._stop.is_set():
                    return
                self._beat += 1
                try:
                    if not self._claim(self._token):
                        self.lost = True
                        return
                except Exception:  # a storage hiccup: try again at the next beat
                    continue

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another process took the lease over."""
        if self.lost:
            raise LeaseLost(f"lost the lease {self.uri}: another process took it over")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            token, self._token = self._token, None
            if self.lost or token is None:
                return
            # an unreachable store: the lease lapses after its ttl instead
            with contextlib.suppress(Exception):
                self.store.fs.write_if(self.uri, self._body(free=True), token)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
