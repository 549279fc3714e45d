"""Serving benchmark: live `bentoml serve` processes on loopback, against their floors.

    python bench/serve.py [--requests 400] [--seconds 8] [--before c781ea7]
                          [--endpoints echo,predict_actions,act,imagine]
                          [--out bench/results/serve.md]

Registers default-size (untrained, seeded) world and behavior models in a temporary store
(the compute per request of a trained model of that size), starts three servers at once:

- ``after``: this checkout's service (batching on);
- ``before``: the layers (datasets, training, serving) of git ref ``--before`` (``git
  archive``), same models; skipped with ``--before ''``; refs older than the namespace
  move (c781ea7) are refused (:func:`old_code` says why);
- ``off``: this checkout's service with batching off;

and measures /echo (the HTTP floor), /predict_actions, /act and /imagine at concurrency 1,
16, 64 and 1 again right after the burst of 64 ("1 after"): requests/s, p50/p99 latency,
non-200 answers (503 = refused by the batcher) and the server's CPU time per request (its
process tree, from /proc: the number least moved by other load on the machine). /imagine
also runs with batching off (it is not batchable: the same code). The servers take turns
cell by cell, so they see the same machine load. Also measured in-process: the compute floor of the same
inputs (foresight.serving.runtime, request objects -> response objects) and the bare model call.

Each cell is bounded by --requests and --seconds; the client (a minimal asyncio HTTP/1.1
keep-alive client, one connection per concurrent caller) runs in this process, on the same
machine as the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from foresight.training.models.behavior_model import BehaviorModelConfig

CONCURRENCY = (1, 16, 64, 1)  # the second 1: right after the burst of 64
CELL_LABELS = ("1", "16", "64", "1 after")
HISTORY = BehaviorModelConfig().context  # steps of history per query: what the model reads
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
    from foresight.serving.schemas import EncodedArray

    arrays = {a: EncodedArray.of(steps).model_dump() for a, steps in obs.items()}
    # planner defaults; observations as the client sends them (base64 float32)
    act = {"obs": arrays, "past_actions": past, "egos": agents}
    return {
        "echo": ("/echo", {"message": "x" * 32}),
        # the HTTP floor of a body as large as /act's
        "echo_act": ("/echo", {"message": "x" * len(json.dumps(act))}),
        "predict_actions": ("/predict_actions", {"queries": [{"obs": obs, "past_actions": past}]}),
        "predict_actions_array": (
            "/predict_actions",
            {"queries": [{"obs": arrays, "past_actions": past}]},
        ),
        "imagine": (
            "/imagine",
            {"obs": obs, "past_actions": past, "horizon": HORIZON, "samples": SAMPLES, "seed": 0},
        ),
        "act": ("/act", act),
    }


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the cheapest possible client, so the numbers
    measure the server (an httpx client costs more CPU than the server on 2 cores)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None
        self.timing: dict[str, float] = {}
        """The last answer's ``Server-Timing`` (``{"decide": ms, "app": ms}`` on /act)."""

    async def post(self, request: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length, chunked = 0, False
        self.timing = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "server-timing":
                for metric in value.split(","):
                    key, _, ms = metric.strip().partition(";dur=")
                    self.timing[key] = float(ms)
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
    outside: dict[str, list[float]] = {}  # Server-Timing metric -> client time minus it
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
                if status == 200:
                    for key, ms in conn.timing.items():
                        outside.setdefault(key, []).append(1000 * latencies[-1] - ms)
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
        # p50 of what the client waited beyond each Server-Timing metric (/act: "decide"
        # is the planner's decision, "app" the request's time in the service)
        **{f"p50_beyond_{k}_ms": statistics.median(v) for k, v in outside.items()},
    }


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``root`` and its live descendants
    (a server and its workers), from /proc; None where /proc is not there."""
    tick, stats = os.sysconf("SC_CLK_TCK"), {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        # fields[1]: parent pid; [11], [12]: user and system time in ticks
        stats[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(stats[p][1] for p in tree if p in stats)


def compute_floor(store, bodies: dict, repeats: int) -> dict[str, dict[str, float]]:
    """In-process p50 of the same inputs: the runtime path and the bare model call."""
    from foresight.serving import runtime
    from foresight.serving.schemas import ActionQuery, ActRequest, ImagineRequest

    torch.set_num_threads(SERVER_TORCH_THREADS)  # as in the server
    host = runtime.ModelHost(runtime.refs_from_env(), store, export=False)
    models = host.current
    query = ActionQuery.model_validate(bodies["predict_actions"][1]["queries"][0])
    req = ImagineRequest.model_validate(bodies["imagine"][1])
    act = ActRequest.model_validate(bodies["act"][1])
    behavior = models.behavior.model
    window = runtime.build_window([query], behavior, behavior.context)
    window64 = runtime.build_window([query] * 64, behavior, behavior.context)
    planner = models.planner
    history = runtime.joint_history(act, planner.discrete, planner.n_actions)

    def p50(fn) -> tuple[float, float]:
        """Median wall and CPU (this thread's: torch runs on it) milliseconds of ``fn()``."""
        for _ in range(5):
            fn()
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
        return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)

    def bare_model(w):
        with torch.inference_mode():
            return behavior.action_distribution(w).probs()

    timings = {
        "predict_actions": {
            "runtime": p50(lambda: runtime.predict_actions(models, [query])),
            "model": p50(lambda: bare_model(window)),
            "model_at_64": p50(lambda: bare_model(window64)),
            "runtime_at_64": p50(lambda: runtime.predict_actions(models, [query] * 64)),
        },
        "imagine": {"runtime": p50(lambda: runtime.imagine_futures(models, req))},
        "act": {
            "runtime": p50(lambda: runtime.act(models, act)),
            "decide": p50(lambda: models.planner.decide(history, act.egos)),
        },
    }
    out: dict[str, dict[str, float]] = {}
    for endpoint, cells in timings.items():  # name_ms: wall p50, name_cpu_ms: CPU p50
        out[endpoint] = {}
        for name, (wall, cpu) in cells.items():
            per = 64 if name.endswith("_at_64") else 1
            name = name.replace("_at_64", "_per_query_at_64")
            out[endpoint] |= {f"{name}_ms": wall / per, f"{name}_cpu_ms": cpu / per}
    host.close()
    return out


SERVERS = ("after", "before", "off")
ENDPOINTS = {  # endpoint -> servers that answer it
    "echo": ("after", "before"),
    "predict_actions": ("after", "before", "off"),
    "predict_actions_array": ("after", "off"),  # observations as base64 float32
    "echo_act": ("after",),
    "act": ("after",),
    "imagine": ("after", "before", "off"),
}


NAMESPACE_MOVE = "c781ea7"
"""The commit that moved the layers under the ``foresight`` namespace."""


OLD_LAYERS = ("datasets", "training", "serving")
"""What ``--before`` serves from its ref: every layer the service imports, so the old
service runs on the code it was written against (the models are this checkout's)."""


def old_code(ref: str, into: Path, repo: Path | None = None) -> Path:
    """The layers of git ref ``ref`` (:data:`OLD_LAYERS`), laid out under ``into`` as
    ``foresight.*`` (``into`` goes first on the server's PYTHONPATH).

    Only refs in the ``foresight.*`` layout (the namespace move and later) are served:
    older ones import bare ``serving``/``training`` modules and read model cards of their
    own time; they are refused with the reason."""
    repo = repo or Path(__file__).resolve().parent.parent
    shown = subprocess.run(
        ["git", "show", f"{ref}:serving/service.py"], cwd=repo, capture_output=True, text=True
    )
    if shown.returncode != 0:
        raise SystemExit(f"--before {ref}: no serving/service.py there ({shown.stderr.strip()})")
    if "from foresight.serving" not in shown.stdout:
        raise SystemExit(
            f"--before {ref}: its serving package predates the foresight.* namespace (it "
            f"imports the bare `serving`/`training` modules); pass {NAMESPACE_MOVE} (the "
            "namespace move) or later"
        )
    into.mkdir(parents=True, exist_ok=True)
    (into / "foresight").mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", ref, *OLD_LAYERS], cwd=repo, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into / "foresight")], input=archive, check=True)
    return into


def run_servers(bodies: dict, args, tmp: Path) -> dict:
    """Every endpoint on every server that has it, the servers taking turns cell by cell."""
    from foresight.serving.launch import ServerProcess

    bench = {"extra": {"FORESIGHT_BENCH_ENDPOINTS": "1"}}  # /echo is off in the product API
    options = {"after": {"batching": True, **bench}, "off": {"batching": False, **bench}}
    if args.before:
        options["before"] = {
            "batching": True,
            "code_dir": old_code(args.before, tmp / "before", args.repo),
            **bench,
        }
    results: dict = {}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                ServerProcess(free_port(), tmp / f"{name}.log", reload_seconds=0, **opts)
            )
            for name, opts in options.items()
        }
        for endpoint, names in ENDPOINTS.items():
            if endpoint not in args.endpoints:
                continue
            path, body = bodies[endpoint]
            live = [n for n in names if n in servers]
            for name in live:  # warm-up (and batcher training)
                asyncio.run(load(servers[name].url, path, body, 4, 30, 10))
            for c, label in zip(CONCURRENCY, CELL_LABELS, strict=True):
                cheap = endpoint in ("echo", "echo_act", "predict_actions", "predict_actions_array")
                n = args.requests if cheap else args.requests // 4
                for name in live:
                    pid = servers[name].process.pid
                    cpu0 = tree_cpu_seconds(pid)
                    cell = asyncio.run(load(servers[name].url, path, body, c, n, args.seconds))
                    cpu1 = tree_cpu_seconds(pid)
                    cell["cpu_ms"] = (
                        1000 * (cpu1 - cpu0) / cell["requests"] if cpu0 is not None else None
                    )
                    results[(name, endpoint, label)] = cell
                    print(
                        f"{name:6s} {endpoint:16s} c={label:8s} {cell['rps']:7.1f} req/s  p50 "
                        f"{cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.1f} ms  non-200 "
                        f"{cell['non_200']}  cpu/req {_ms(cell['cpu_ms'])} ms  "
                        f"load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(floors: dict, res: dict, name: str = "after") -> list[str]:
    """The serving targets (BENCHMARKS.md) checked against one run's cells of server
    ``name`` (``off`` is this checkout with batching off)."""
    pa, ac = floors["predict_actions"], floors["act"]
    out = [f"`{name}`:", ""]
    echo1, echo64 = res[(name, "echo", "1")], res[(name, "echo", "64")]
    p1 = res[(name, "predict_actions", "1")]
    bound = pa["runtime_ms"] + echo1["p50_ms"] + 1
    out.append(
        f"- Low load, batching on: /predict_actions c=1 p50 {p1['p50_ms']:.2f} ms <= compute "
        f"{pa['runtime_ms']:.2f} + HTTP floor {echo1['p50_ms']:.2f} + 1 = {bound:.2f} ms: "
        f"{_met(p1['p50_ms'] <= bound)}; right after the burst of 64: "
        f"{res[(name, 'predict_actions', '1 after')]['p50_ms']:.2f} ms"
    )
    if ("off", "predict_actions", "1") in res:
        for label in ("1", "1 after"):
            on, off = res[(name, "predict_actions", label)], res[("off", "predict_actions", label)]
            gap = on["p50_ms"] - off["p50_ms"]
            out.append(
                f"- Low load, on vs off (c={label}): p50 {on['p50_ms']:.2f} vs "
                f"{off['p50_ms']:.2f} ms, {gap:+.2f} ms (target within 0.2 ms): "
                f"{_met(gap <= 0.2)}"
            )
    p64 = res[(name, "predict_actions", "64")]
    if p64.get("cpu_ms") and echo64.get("cpu_ms"):
        floor = echo64["cpu_ms"] + pa["runtime_per_query_at_64_cpu_ms"]
        ratio = p64["cpu_ms"] / floor
        out.append(
            f"- High load: /predict_actions server CPU per query at c=64 {p64['cpu_ms']:.2f} ms "
            f"vs echo CPU per request {echo64['cpu_ms']:.2f} + runtime path CPU per query at "
            f"batch 64 {pa['runtime_per_query_at_64_cpu_ms']:.2f} = {floor:.2f} ms: "
            f"**{ratio:.2f}x** (target <= 1.15x): {_met(ratio <= 1.15)}"
        )
    arr64 = res.get((name, "predict_actions_array", "64"))
    if arr64 and arr64.get("cpu_ms") and echo64.get("cpu_ms"):
        floor = echo64["cpu_ms"] + pa["runtime_per_query_at_64_cpu_ms"]
        ratio = arr64["cpu_ms"] / floor
        out.append(
            f"- High load, observations as base64 float32: server CPU per query at c=64 "
            f"{arr64['cpu_ms']:.2f} ms vs the same {floor:.2f} ms: **{ratio:.2f}x** (target "
            f"<= 1.15x): {_met(ratio <= 1.15)}"
        )
    if ("off", "predict_actions", "64") in res:
        off64 = res[("off", "predict_actions", "64")]
        out.append(
            f"- c=64 batching on vs off: {p64['rps']:.0f} vs {off64['rps']:.0f} req/s "
            f"({p64['rps'] / off64['rps']:.2f}x), CPU per query {p64['cpu_ms']:.2f} vs "
            f"{_ms(off64.get('cpu_ms'))} ms"
        )
    if (name, "act", "1") in res:
        act1 = res[(name, "act", "1")]
        added = act1["p50_ms"] - ac["decide_ms"]
        out.append(
            f"- /act: in process, runtime path {ac['runtime_ms']:.2f} ms vs one planner "
            f"decision on the same history {ac['decide_ms']:.2f} ms; over HTTP c=1 p50 "
            f"{act1['p50_ms']:.2f} ms, {added:+.2f} ms over the in-process decision"
        )
        floor = res.get((name, "echo_act", "1"), echo1)["p50_ms"]
        if "p50_beyond_decide_ms" in act1:  # the server's own Server-Timing, per request
            beyond = act1["p50_beyond_decide_ms"]
            out.append(
                f"- /act, per request (Server-Timing): the client waited {beyond:.2f} ms (p50) "
                f"beyond the planner's decision in that request, of which "
                f"{act1['p50_beyond_app_ms']:.2f} ms outside the service (target: the service "
                f"adds <= the HTTP floor of a body that size, /echo c=1 {floor:.2f} ms): "
                f"{_met(beyond <= floor)}"
            )
    mine = {(e, label): c for (server, e, label), c in res.items() if server == name}
    batched = sum(c["n_503"] for (e, _), c in mine.items() if e.startswith("predict_actions"))
    heavy = sum(c["n_503"] for (e, _), c in mine.items() if e in ("act", "imagine"))
    other = sum(c["non_200"] - c["n_503"] for c in mine.values())
    out += [
        f"- 503 from the batched endpoints (max_latency_ms): {batched}; from /act and "
        f"/imagine (the heavy queue, FORESIGHT_HEAVY_QUEUE, sheds past 4 in progress): "
        f"{heavy}; other non-200: {other}",
        "",
    ]
    return out


def report(args, floors, res, models, load_before, load_after, seconds) -> str:
    has_before = ("before", "echo", "1") in res
    pa, ac, im = floors["predict_actions"], floors["act"], floors["imagine"]
    before_arg = args.before or "''"
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `python bench/serve.py --requests {args.requests} --seconds {args.seconds}"
        f" --before {before_arg}` ({seconds:.0f} s, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}; servers: BentoML 1.4.39, 1 worker, "
        f"{SERVER_TORCH_THREADS} torch thread; client: minimal asyncio HTTP/1.1 keep-alive, same "
        f"machine. Load average (1 min) before / after: {load_before} / {load_after}: the "
        "machine is shared, absolute numbers move with it; the servers take turns cell by "
        "cell, so the comparisons between them hold.",
        "",
        "Servers: `after` = this commit; "
        + (
            f"`before` = the datasets/training/serving code of `{args.before}` with the same "
            "models; "
            if args.before
            else ""
        )
        + "`off` = this commit with "
        f"batching off. Models: default-size world ({models['world']}) and behavior ("
        f"{models['behavior']}) models, untrained (same compute as trained). Inputs: 3 "
        f"agents, {HISTORY} steps of 18-feature observations with past actions; /imagine "
        f"H={HORIZON}, K={SAMPLES}; /act: all 3 agents as egos, planner defaults (H=6, K=3, "
        f"pulse plans), observations as base64 float32 (the client's default); /echo c=1 "
        f"with a message as long as /act's body is /act's HTTP floor. Each cell: at most {args.requests} requests (/act and /imagine: a "
        f"quarter) or {args.seconds} s. '1 after' = concurrency 1 right after the cell at 64.",
        "",
        "## Floors (in-process, p50)",
        "",
        f"- /predict_actions, runtime path (request objects -> response objects): "
        f"{pa['runtime_ms']:.2f} ms; bare model call {pa['model_ms']:.2f} ms; per query in a "
        f"batch of 64: {pa['runtime_per_query_at_64_ms']:.2f} ms (model alone "
        f"{pa['model_per_query_at_64_ms']:.2f} ms); CPU: {pa['runtime_cpu_ms']:.2f} ms at "
        f"batch 1, {pa['runtime_per_query_at_64_cpu_ms']:.2f} ms per query at batch 64",
        f"- /act (3 egos), runtime path: {ac['runtime_ms']:.2f} ms; one planner decision on "
        f"the same history: {ac['decide_ms']:.2f} ms",
        f"- /imagine, runtime path: {im['runtime_ms']:.2f} ms",
        "",
        "## Results",
        "",
        "Server CPU = CPU time of the server's processes during the cell per request answered "
        "(user + system, all threads: the event loop and the model thread): the number that "
        "moves least with the machine's load.",
        "",
        "| endpoint | server | concurrency | req/s | p50 ms | p99 ms | non-200 (503) "
        "| server CPU ms/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for endpoint, names in ENDPOINTS.items():
        for name in names:
            for label in CELL_LABELS:
                cell = res.get((name, endpoint, label))
                if cell is None:
                    continue
                lines.append(
                    f"| {endpoint} | {name} | {label} | {cell['rps']:.1f} | "
                    f"{cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | {cell['non_200']} "
                    f"({cell['n_503']}) | {_ms(cell.get('cpu_ms'))} |"
                )
    lines += ["", "## Against the targets", "", *targets(floors, res)]
    if has_before:
        lines += targets(floors, res, "before")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="max requests per cell")
    parser.add_argument("--seconds", type=float, default=8.0, help="max seconds per cell")
    parser.add_argument(
        "--before",
        default=NAMESPACE_MOVE,
        help=f"git ref of the serving code to compare, {NAMESPACE_MOVE} or later ('' = none)",
    )
    parser.add_argument(
        "--endpoints",
        default=",".join(ENDPOINTS),
        help="comma-separated endpoints to load (echo and predict_actions are always run)",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="git repository to take --before from (default: the one holding this script)",
    )
    parser.add_argument("--out", default="bench/results/serve.md")
    args = parser.parse_args()
    args.endpoints = {"echo", "predict_actions", *args.endpoints.split(",")}
    if "act" in args.endpoints:  # its HTTP floor
        args.endpoints.add("echo_act")
    unknown = args.endpoints - set(ENDPOINTS)
    if unknown:
        parser.error(f"--endpoints: unknown {sorted(unknown)}; known: {list(ENDPOINTS)}")

    tmp = Path(tempfile.mkdtemp(prefix="foresight-bench-serve-"))
    os.environ["FORESIGHT_STORE"] = str(tmp / "store")
    os.environ.setdefault("BENTOML_HOME", str(tmp / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from foresight.datasets.storage import Store
    from tests.serving.helpers import register_pair, spread_spec

    store = Store(str(tmp / "store"))
    world, behavior = register_pair(store, spread_spec(), world_config={}, behavior_config={})
    wc, bc = world.card.model_config, behavior.card.model_config
    models = {
        "world": f"d_model {wc['d_model']}, {wc['n_layers']} layers",
        "behavior": f"{bc.get('architecture', 'gru/1')}, d_model {bc['d_model']}, "
        f"{bc.get('n_experts', 0)} experts, context {bc['context']}",
    }
    bodies = payloads(list(spread_spec().agents))
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    floors = compute_floor(store, bodies, repeats=200)
    print("compute floors (ms):", floors, flush=True)
    results = run_servers(bodies, args, tmp)
    text = report(
        args,
        floors,
        results,
        models,
        f"{load_before:.2f}",
        f"{os.getloadavg()[0]:.2f}",
        time.perf_counter() - started,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
