"""POST /episodes benchmark: what checking costs, what a live server takes, what it costs the
decision endpoints.

    python bench/episodes.py [--seconds 8]

Episodes are simple_spread-shaped (25 steps x 3 agents = 75 rows, 18-float observations).

1. In process: :func:`foresight.serving.episodes.check_request` on 1, 10, 100 and 266
   episodes (266 x 75 = 19,950 rows: the default request limit), against its floor, the
   ingest reader alone on the same JSON lines (``iter_chunks``: what ``foresight ingest``
   pays to read them).
2. A live ``bentoml serve`` (tiny untrained models, as tests/serving): requests of 10
   episodes posted back to back by one client for ``--seconds``: requests/s, rows/s, p50/p99.
3. ``/predict_actions`` at 1 client alone, then while a second client posts max-size
   ``/episodes`` requests back to back: p50/p99 latency, what a heavy writer costs the
   decision-time endpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def spread_episode(eid: str, steps: int = 25, agents: int = 3) -> list[dict]:
    return [
        {
            "episode_id": eid,
            "step": t,
            "agent_id": f"agent_{n}",
            "obs": [0.001 * (t * 7 + n * 3 + k) for k in range(18)],
            "action": (t + n) % 5,
            "reward": -0.5,
            "terminated": False,
            "truncated": t == steps - 1,
            "policy_id": "anticipatory(world@1,behavior@1)",
        }
        for t in range(steps)
        for n in range(agents)
    ]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def in_process(repeats: int = 5) -> list[dict]:
    from foresight.datasets.readers import iter_chunks
    from foresight.serving.episodes import check_request
    from tests.serving.helpers import spread_spec

    spec = spread_spec()
    out = []
    for n in (1, 10, 100, 266):
        episodes = [spread_episode(f"e{i}") for i in range(n)]
        rows = sum(map(len, episodes))
        data = b"".join(json.dumps(r).encode() + b"\n" for e in episodes for r in e)
        check, floor = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            _, _, problems = check_request(episodes, spec)
            check.append(time.perf_counter() - t)
            assert not problems, problems[:3]
            t = time.perf_counter()
            for _chunk in iter_chunks(io.BytesIO(data), "x.jsonl", spec):
                pass
            floor.append(time.perf_counter() - t)
        c, f = statistics.median(check), statistics.median(floor)
        out.append({"episodes": n, "rows": rows, "check_ms": c * 1e3, "reader_ms": f * 1e3})
    return out


def live(seconds: float) -> dict:
    import httpx

    from foresight.datasets.storage import Store
    from foresight.serving.launch import ServerProcess
    from tests.serving.helpers import free_port, register_pair

    tmp = Path(tempfile.mkdtemp(prefix="bench-episodes-"))
    store = Store(str(tmp / "store"))
    register_pair(store)
    os.environ["FORESIGHT_STORE"] = store.root
    extra = {"FORESIGHT_EPISODES_FLUSH_SECONDS": "5"}
    res: dict = {}
    with ServerProcess(free_port(), tmp / "serve.log", reload_seconds=0, extra=extra) as srv:  # noqa: SIM117
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            count = 0

            def body(n: int) -> dict:
                nonlocal count
                count += 1
                return {"episodes": [spread_episode(f"r{count}-{i}") for i in range(n)]}

            lat = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                b = body(10)
                t = time.perf_counter()
                r = http.post("/episodes", json=b)
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            res["post10"] = {
                "requests": len(lat),
                "rps": len(lat) / sum(lat),
                "rows_per_s": 750 * len(lat) / sum(lat),
                "p50_ms": pct(lat, 0.5) * 1e3,
                "p99_ms": pct(lat, 0.99) * 1e3,
            }
            obs = {f"agent_{n}": [[0.01] * 18] * 8 for n in range(3)}
            query = {"queries": [{"obs": obs}]}

            def decisions(window: float) -> list[float]:
                out, stop = [], time.monotonic() + window
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    assert http.post("/predict_actions", json=query).status_code == 200
                    out.append(time.perf_counter() - t)
                return out

            alone = decisions(seconds)
            stop = threading.Event()
            writes: list[float] = []

            def writer() -> None:
                with httpx.Client(base_url=srv.url, timeout=60) as w:
                    while not stop.is_set():
                        b = {
                            "episodes": [spread_episode(f"w{len(writes)}-{i}") for i in range(266)]
                        }
                        t = time.perf_counter()
                        r = w.post("/episodes", json=b)
                        writes.append(time.perf_counter() - t)
                        assert r.status_code == 200, r.text

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(0.5)
            beside = decisions(seconds)
            stop.set()
            thread.join()
            res["decisions"] = {
                "alone": (pct(alone, 0.5) * 1e3, pct(alone, 0.99) * 1e3, len(alone)),
                "beside": (pct(beside, 0.5) * 1e3, pct(beside, 0.99) * 1e3, len(beside)),
                "max_posts": (len(writes), pct(writes, 0.5) * 1e3),
            }
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    load = os.getloadavg()
    rows = in_process()
    res = live(args.seconds)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; load {load[0]:.1f} -> "
        f"{os.getloadavg()[0]:.1f}"
    )
    print("| episodes | rows | check_request | ingest reader alone | check / reader |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['episodes']} | {r['rows']:,} | {r['check_ms']:.1f} ms | "
            f"{r['reader_ms']:.1f} ms | {r['check_ms'] / r['reader_ms']:.1f}x |"
        )
    p = res["post10"]
    print(
        f"\nPOST /episodes, 10 episodes (750 rows) per request, 1 client: {p['rps']:.1f} req/s, "
        f"{p['rows_per_s']:,.0f} rows/s, p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms "
        f"({p['requests']} requests)"
    )
    d = res["decisions"]
    print(
        f"/predict_actions, 1 client: alone p50 {d['alone'][0]:.1f} ms p99 {d['alone'][1]:.1f} ms "
        f"({d['alone'][2]} requests); beside max-size /episodes posts p50 {d['beside'][0]:.1f} ms "
        f"p99 {d['beside'][1]:.1f} ms ({d['beside'][2]} requests; {d['max_posts'][0]} posts of "
        f"19,950 rows, p50 {d['max_posts'][1]:.0f} ms)"
    )


if __name__ == "__main__":
    main()
