"""The registry under real concurrent processes, on a local folder and on S3.

Each test starts its worker processes once ('spawn', so nothing is shared but the store) and
lines them up at a barrier before every operation, for several rounds: every round is a fresh
race. What must hold: no version number is given twice and no registration is lost; every
alias move that reported success is in the log; concurrent rollbacks each go one step further
back; a deleted number is never given again.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue as queue_mod

import pytest
import torch

from foresight.datasets.storage import Store
from foresight.training.registry import ModelRegistry

# real concurrent processes, servers or faults, several rounds: the whole suite runs them
pytestmark = pytest.mark.slow

WORKERS = 4
ROUNDS = 3


def tensors(worker: int, round_: int) -> dict[str, torch.Tensor]:
    """Weights that say who registered them: each (worker, round) gets its own values."""
    g = torch.Generator().manual_seed(1000 * worker + round_)
    return {"w": torch.randn(3, 2, generator=g)}


def _worker(root: str, env: dict, op: str, worker: int, rounds: int, barrier, results) -> None:
    """Do ``op`` once per round, each time released together with the other workers."""
    os.environ.update(env)
    registry = ModelRegistry(Store(root))
    for round_ in range(rounds):
        barrier.wait(120)
        try:
            if op == "register":
                card = {"kind": "test", "worker": worker, "round": round_, "git_sha": "x"}
                out = registry.register("world", tensors(worker, round_), card).version
            elif op == "promote":
                out = registry.promote(f"world@{worker + 1}", "production")
            elif op == "rollback":
                out = registry.rollback("world", "production")
            elif op == "delete-this-round":
                out = registry.delete(f"world@{round_ + 1}")
            elif op == "promote-this-round":
                out = registry.promote(f"world@{round_ + 1}", "production")
            else:
                raise AssertionError(op)
            results.put((worker, round_, "ok", out))
        except Exception as exc:  # reported to the parent, which fails the test with it
            results.put((worker, round_, "error", f"{type(exc).__name__}: {exc}"))


def race(
    store: Store, op: str | list[str], workers: int = WORKERS, rounds: int = ROUNDS
) -> list[tuple]:
    """Run ``op`` (or worker i: ``op[i]``) in ``workers`` processes for ``rounds`` rounds.

    Returns every (worker, round, "ok" | "error", result or error text).
    """
    ops = op if isinstance(op, list) else [op] * workers
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FORESIGHT_S3"))}
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(store.root, env, ops[w], w, rounds, barrier, results))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    out = []
    try:
        for _ in range(workers * rounds):
            out.append(results.get(timeout=300))
    except queue_mod.Empty:
        pytest.fail(f"workers reported {len(out)} of {workers * rounds} results: {out}")
    finally:
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0] * workers
    return out


def test_concurrent_registrations_get_distinct_numbers_and_all_survive(store: Store):
    results = race(store, "register")
    errors = [r for r in results if r[2] != "ok"]
    assert not errors, errors
    given = sorted(r[3] for r in results)
    assert given == list(range(1, WORKERS * ROUNDS + 1)), given  # never the same number twice
    registry = ModelRegistry(store)
    assert registry.version_numbers("world") == given
    for worker, round_, _, version in results:
        loaded, mv = registry.load(f"world@{version}")
        # The card and the weights under this number are this process's, not a neighbour's.
        assert (mv.card["worker"], mv.card["round"]) == (worker, round_)
        assert torch.equal(loaded["w"], tensors(worker, round_)["w"])


def test_concurrent_promotes_are_all_in_the_alias_log(store: Store):
    registry = ModelRegistry(store)
    for w in range(WORKERS):
        registry.register("world", tensors(w, 0), {"kind": "test", "git_sha": "x"})
    results = race(store, "promote")
    errors = [r for r in results if r[2] != "ok"]
    assert not errors, errors
    log = registry.alias_log("world")
    assert len(log) == WORKERS * ROUNDS
    reported = sorted((e["at"], e["from"], e["to"]) for *_, e in results)
    assert sorted((e["at"], e["from"], e["to"]) for e in log) == reported
    # The log is one chain of moves: each starts where the one before it ended.
    assert log[0]["from"] is None
    assert all(a["to"] == b["from"] for a, b in itertools.pairwise(log)), log
    assert registry.aliases("world")["production"] == log[-1]["to"]


def test_concurrent_rollbacks_each_go_one_step_further_back(store: Store):
    registry = ModelRegistry(store)
    moves = WORKERS * 2
    for v in range(1, moves + 2):
        registry.register("world", tensors(v, 0), {"kind": "test", "git_sha": "x"})
        registry.promote(f"world@{v}", "production")
    results = race(store, "rollback", rounds=2)
    errors = [r for r in results if r[2] != "ok"]
    assert not errors, errors
    targets = sorted(e["to"] for *_, e in results)
    assert targets == list(range(1, moves + 1)), targets  # no two went to the same place
    assert registry.aliases("world")["production"] == 1
    assert [e["action"] for e in registry.alias_log("world")] == ["promote"] * (moves + 1) + [
        "rollback"
    ] * moves


def test_a_delete_racing_a_promote_of_the_same_version_never_leaves_the_alias_dangling(
    store: Store,
):
    rounds = 4
    registry = ModelRegistry(store)
    for v in range(rounds + 1):
        registry.register("world", tensors(v, 0), {"kind": "test", "git_sha": "x"})
    registry.promote(f"world@{rounds + 1}", "staging")  # keeps the model listed
    results = race(store, ["delete-this-round", "promote-this-round"], workers=2, rounds=rounds)
    by_round = {r: {} for r in range(rounds)}
    for worker, round_, status, out in results:
        by_round[round_][worker] = (status, out)
    log = registry.alias_log("world")
    for round_, outcome in by_round.items():
        deleted, promoted = outcome[0][0] == "ok", outcome[1][0] == "ok"
        assert deleted != promoted, (round_, outcome)  # exactly one of them wins, each round
        if promoted:
            assert outcome[0][1].startswith("RegistryError"), outcome
            assert round_ + 1 in registry.version_numbers("world")
        else:
            assert any(e["to"] == round_ + 1 for e in log) is False, log
    production = registry.aliases("world").get("production")
    if production is not None:
        assert production in registry.version_numbers("world")


@pytest.mark.parametrize("round_", range(3))
def test_a_deleted_number_is_never_given_again(store: Store, round_):
    registry = ModelRegistry(store)
    for v in range(round_ + 2):
        registry.register("world", tensors(v, round_), {"kind": "test", "git_sha": "x"})
    highest = registry.version_numbers("world")[-1]
    registry.delete(f"world@{highest}")
    assert registry.version_numbers("world") == list(range(1, highest))
    fresh = registry.register("world", tensors(99, round_), {"kind": "test", "git_sha": "x"})
    assert fresh.version == highest + 1
    assert registry.version_numbers("world") == [*range(1, highest), highest + 1]
