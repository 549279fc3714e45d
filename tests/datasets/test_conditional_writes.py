"""Conditional writes on both stores: exclusive create, compare-and-swap, and update_json under
real concurrent processes (the same workers with a plain read-then-write lose updates: the note on issue 11 has the
numbers)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from foresight.datasets.storage import Store


def test_write_if_exclusive_and_compare_and_swap(store: Store):
    uri = store.uri("registry", "cas.json")
    assert store.fs.read_versioned(uri) is None
    assert store.fs.write_if(uri, b"one", None)
    assert not store.fs.write_if(uri, b"two", None)  # exists: exclusive create refused
    data, token = store.fs.read_versioned(uri)
    assert data == b"one"
    assert store.fs.write_if(uri, b"three", token)
    assert not store.fs.write_if(uri, b"four", token)  # stale token: refused
    assert store.fs.read_bytes(uri) == b"three"


def _append_many(root: str, s3_env: dict, worker: int, count: int, naive: bool) -> None:
    import os

    os.environ.update(s3_env)
    store = Store(root)
    for i in range(count):
        if naive:
            data = store.read_json("registry/log.json") or {"items": []}
            data["items"].append(f"{worker}-{i}")
            store.write_json("registry/log.json", data)
        else:
            store.update_json(
                "registry/log.json",
                lambda d, i=i: {"items": [*(d or {"items": []})["items"], f"{worker}-{i}"]},
            )


def _race(store: Store, naive: bool, workers: int = 4, count: int = 15) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FORESIGHT_S3"))}
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_append_many, args=(store.root, env, w, count, naive))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return store.read_json("registry/log.json")["items"]


@pytest.mark.parametrize("round_", range(3))
def test_update_json_loses_nothing_under_concurrent_processes(store: Store, round_):
    store.fs.delete_tree(store.uri("registry", "log.json"))
    items = _race(store, naive=False)
    assert sorted(items) == sorted(f"{w}-{i}" for w in range(4) for i in range(15))
