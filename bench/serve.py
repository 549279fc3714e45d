"""Serving benchmark: a live `bentoml serve` on loopback, against its floors.

    python bench/serve.py [--requests 400] [--seconds 8] [--out bench/results/serve.md]

Registers default-size (untrained, seeded) world and behavior models in a temporary store
(the compute per request of a trained model of that size), then in one run measures:

- /predict_actions and /imagine at concurrency 1, 16, 64: requests/s, p50/p99 latency,
  non-200 answers (503 = refused by the batcher);
- (a) the compute floor: the same inputs through the in-process code path
  (serving.runtime, request objects -> response objects) and the bare model call;
- (b) the HTTP floor: the /echo endpoint of the same server;
- (c) the same endpoints on a second server started with batching off.

Each cell is bounded by --requests and --seconds; the client (a minimal asyncio HTTP/1.1
keep-alive client, one connection per concurrent caller) runs in this process, on the same
machine as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

CONCURRENCY = (1, 16, 64)
HISTORY = 16  # steps of history per query (the behavior model's default context)
HORIZON, SAMPLES = 10, 8  # /imagine: a typical planning query
SERVER_TORCH_THREADS = 1  # the service default (FORESIGHT_TORCH_THREADS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payloads(agents: list[str]) -> dict[str, tuple[str, dict]]:
    g = torch.Generator().manual_seed(0)
    obs = {a: torch.randn(HISTORY, 18, generator=g).tolist() for a in agents}
    past = {a: torch.randint(0, 5, (HISTORY - 1,), generator=g).tolist() for a in agents}
    return {
        "echo": ("/echo", {"message": "x" * 32}),
        "predict_actions": ("/predict_actions", {"queries": [{"obs": obs, "past_actions": past}]}),
        "imagine": (
            "/imagine",
            {"obs": obs, "past_actions": past, "horizon": HORIZON, "samples": SAMPLES, "seed": 0},
        ),
    }


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the cheapest possible client, so the numbers
    measure the server (an httpx client costs more CPU than the server on 2 cores)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            while (size := int((await self.reader.readline()).strip() or b"0", 16)) > 0:
                await self.reader.readexactly(size + 2)
            await self.reader.readline()
        else:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def http_request(host: str, port: int, path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + data


async def load(url: str, path: str, body: dict, concurrency: int, n: int, seconds: float):
    """``concurrency`` connections send requests until ``n`` are done or ``seconds`` pass."""
    host, port = url.removeprefix("http://").split(":")
    request = http_request(host, int(port), path, body)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal sent
        conn = Connection(host, int(port))
        try:
            while sent < n and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                try:
                    status = await conn.post(request)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    status = -1
                    conn.close()
                    conn = Connection(host, int(port))
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    done = len(latencies)
    return {
        "requests": done,
        "rps": done / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "non_200": sum(c for s, c in statuses.items() if s != 200),
        "n_503": statuses.get(503, 0),
    }


def compute_floor(store, bodies: dict, repeats: int) -> dict[str, dict[str, float]]:
    """In-process p50 of the same inputs: the runtime path and the bare model call."""
    from serving import runtime
    from serving.schemas import ActionQuery, ImagineRequest

    torch.set_num_threads(SERVER_TORCH_THREADS)  # as in the server
    host = runtime.ModelHost(runtime.refs_from_env(), store, export=False)
    models = host.current
    query = ActionQuery.model_validate(bodies["predict_actions"][1]["queries"][0])
    req = ImagineRequest.model_validate(bodies["imagine"][1])
    behavior = models.behavior.model
    window = runtime.build_window([query], behavior, behavior.context)
    window64 = runtime.build_window([query] * 64, behavior, behavior.context)

    def p50(fn) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    def bare_model(w):
        with torch.inference_mode():
            return behavior.action_distribution(w).probs()

    out = {
        "predict_actions": {
            "runtime_ms": p50(lambda: runtime.predict_actions(models, [query])),
            "model_ms": p50(lambda: bare_model(window)),
            "model_per_query_at_64_ms": p50(lambda: bare_model(window64)) / 64,
            "runtime_per_query_at_64_ms": p50(lambda: runtime.predict_actions(models, [query] * 64))
            / 64,
        },
        "imagine": {"runtime_ms": p50(lambda: runtime.imagine_futures(models, req))},
    }
    host.close()
    return out


def run_server(label: str, batching: bool, bodies: dict, args, logdir: Path) -> dict:
    from serving.launch import ServerProcess

    port = free_port()
    results = {}
    with ServerProcess(
        port, logdir / f"{label}.log", reload_seconds=0, batching=batching
    ) as server:
        endpoints = ["echo", "predict_actions", "imagine"] if batching else ["predict_actions"]
        for name in endpoints:
            path, body = bodies[name]
            asyncio.run(load(server.url, path, body, 4, 30, 10))  # warm-up (and batcher training)
            for c in CONCURRENCY:
                n = args.requests if name != "imagine" else args.requests // 2
                cell = asyncio.run(load(server.url, path, body, c, n, args.seconds))
                results[(name, c)] = cell
                print(
                    f"{label:9s} {name:16s} c={c:<3d} {cell['rps']:7.1f} req/s  p50 "
                    f"{cell['p50_ms']:6.1f} ms  p99 {cell['p99_ms']:6.1f} ms  non-200 "
                    f"{cell['non_200']}",
                    flush=True,
                )
    return results


def report(args, floors, batched, unbatched, load_before, load_after, seconds) -> str:
    echo = {c: batched[("echo", c)] for c in CONCURRENCY}
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `python bench/serve.py --requests {args.requests} --seconds {args.seconds}`"
        f" ({seconds:.0f} s). Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"server: BentoML 1.4.39, 1 worker, {SERVER_TORCH_THREADS} torch thread; client: "
        "minimal asyncio HTTP/1.1 keep-alive, same machine. Load average before / after: "
        f"{load_before} / {load_after} (the machine is shared: numbers are noisy, ratios "
        "within this run matter most).",
        "",
        "Models: default-size world (d_model 128, 2 layers) and behavior (GRU, d_model 128, "
        f"context 16) models, untrained (same compute as trained). Inputs: 3 agents, "
        f"{HISTORY} steps of 18-feature observations with past actions; /imagine H={HORIZON}, "
        f"K={SAMPLES}. Each cell: at most {args.requests} requests (/imagine: half) or "
        f"{args.seconds} s.",
        "",
        "## Floors",
        "",
        f"- compute, /predict_actions, in-process runtime path (request objects -> response "
        f"objects): p50 {floors['predict_actions']['runtime_ms']:.2f} ms; bare model call "
        f"{floors['predict_actions']['model_ms']:.2f} ms; per query when 64 are batched: "
        f"{floors['predict_actions']['runtime_per_query_at_64_ms']:.2f} ms (model alone "
        f"{floors['predict_actions']['model_per_query_at_64_ms']:.2f} ms)",
        f"- compute, /imagine, in-process: p50 {floors['imagine']['runtime_ms']:.2f} ms",
        f"- HTTP, /echo on the same server: c=1 {echo[1]['rps']:.0f} req/s p50 "
        f"{echo[1]['p50_ms']:.2f} ms; c=64 {echo[64]['rps']:.0f} req/s",
        "",
        "## Results",
        "",
        "| endpoint | server | concurrency | req/s | p50 ms | p99 ms | non-200 (503) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [("echo", "batched", batched), ("predict_actions", "batched", batched)]
    rows += [("predict_actions", "batching off", unbatched), ("imagine", "batched", batched)]
    for name, label, res in rows:
        for c in CONCURRENCY:
            cell = res[(name, c)]
            lines.append(
                f"| {name} | {label} | {c} | {cell['rps']:.1f} | {cell['p50_ms']:.2f} | "
                f"{cell['p99_ms']:.2f} | {cell['non_200']} ({cell['n_503']}) |"
            )
    pa, pu = batched, unbatched
    target1 = floors["predict_actions"]["runtime_ms"] + echo[1]["p50_ms"] + 1
    target1_im = floors["imagine"]["runtime_ms"] + echo[1]["p50_ms"] + 1
    lines += [
        "",
        "## Against the targets",
        "",
        f"- c=1 p50 <= compute + HTTP floor + 1 ms: /predict_actions "
        f"{pa[('predict_actions', 1)]['p50_ms']:.2f} ms vs {target1:.2f} ms "
        f"({'met' if pa[('predict_actions', 1)]['p50_ms'] <= target1 else 'NOT met'}); "
        f"/imagine {pa[('imagine', 1)]['p50_ms']:.2f} ms vs {target1_im:.2f} ms "
        f"({'met' if pa[('imagine', 1)]['p50_ms'] <= target1_im else 'NOT met'})",
        f"- c=64 batched throughput >= 0.8x HTTP floor: /predict_actions "
        f"{pa[('predict_actions', 64)]['rps']:.0f} vs 0.8 x {echo[64]['rps']:.0f} = "
        f"{0.8 * echo[64]['rps']:.0f} req/s "
        f"({'met' if pa[('predict_actions', 64)]['rps'] >= 0.8 * echo[64]['rps'] else 'NOT met'})",
        f"- c=64 batched vs batching off: /predict_actions "
        f"{pa[('predict_actions', 64)]['rps'] / pu[('predict_actions', 64)]['rps']:.2f}x",
        f"- refused (503) or other non-200 answers over the whole run: "
        f"{sum(c['non_200'] for r in (batched, unbatched) for c in r.values())}",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="max requests per cell")
    parser.add_argument("--seconds", type=float, default=8.0, help="max seconds per cell")
    parser.add_argument("--out", default="bench/results/serve.md")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="foresight-bench-serve-"))
    os.environ["FORESIGHT_STORE"] = str(tmp / "store")
    os.environ.setdefault("BENTOML_HOME", str(tmp / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from datasets.storage import Store
    from serving.testing import register_pair, spread_spec

    store = Store(str(tmp / "store"))
    register_pair(store, spread_spec(), world_config={}, behavior_config={})
    bodies = payloads(list(spread_spec().agents))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    floors = compute_floor(store, bodies, repeats=200)
    print("compute floors (ms):", floors, flush=True)
    batched = run_server("batched", True, bodies, args, tmp)
    unbatched = run_server("unbatched", False, bodies, args, tmp)
    text = report(
        args,
        floors,
        batched,
        unbatched,
        f"{load_before:.2f}",
        f"{os.getloadavg()[0]:.2f}",
        time.perf_counter() - started,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
