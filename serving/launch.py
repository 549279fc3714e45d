"""Start the service (``foresight serve``), build a bento, write the OpenAPI spec.

    serve(port=3000, world="world@production", behavior="behavior@production")

runs ``bentoml serve foresight.serving.service:Foresight`` in a child process with the references in
its environment. The models are loaded here first, weights included: ``bentoml serve``
restarts a worker whose start-up fails, forever, so a reference that does not resolve or a
truncated ``weights.safetensors`` would otherwise show up only as a loop of tracebacks.
SIGTERM and SIGINT are forwarded to the server's whole process group, and ``serve``
returns once the server is gone and its port closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foresight.datasets.storage import Store
from foresight.serving.runtime import ENV_REFS, ROLES, SOURCE_ENV, ModelLoadError, refs_from_env
from foresight.training.registry import ModelRegistry, RegistryError

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE = "foresight.serving.service:Foresight"
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"


def check_refs(refs: Mapping[str, str], store: Store | None = None) -> dict[str, str]:
    """Resolve each role's reference to a version of the right kind, or ModelLoadError."""
    store = store or Store.from_env()
    registry = ModelRegistry(store)
    resolved = {}
    for role in ROLES:
        ref = refs[role]
        try:
            mv = registry.resolve(ref)
        except RegistryError as exc:
            raise ModelLoadError(
                f"{role} model {ref!r} does not resolve in {store.root}: {exc}. Register and "
                f"promote one (`foresight models promote`) or pass another reference "
                f"(--{role} / {ENV_REFS[role]})"
            ) from exc
        if mv.card.get("kind") != role:
            raise ModelLoadError(
                f"{role} model {ref!r} resolves to {mv.ref}, a {mv.card.get('kind')!r} model"
            )
        resolved[role] = mv.ref
    return resolved


def check_models(refs: Mapping[str, str], store: Store | None = None) -> dict[str, str]:
    """Resolve and load each role's model, weights included, or ModelLoadError naming the
    version: what the server's worker would do at start-up, once, in this process."""
    from foresight.serving.runtime import load_model_ref

    store = store or Store.from_env()
    resolved = check_refs(refs, store)
    for role in ROLES:
        try:
            load_model_ref(role, resolved[role], store, export=False)
        except ModelLoadError:
            raise
        except Exception as exc:  # a truncated or corrupt weights file, a bad config
            raise ModelLoadError(
                f"{role} model {refs[role]!r} resolves to {resolved[role]}, which cannot be "
                f"loaded: {type(exc).__name__}: {exc}. Register the version again, or serve "
                f"another (`foresight models rollback {resolved[role].split('@')[0]}`, "
                f"--{role})"
            ) from exc
    return resolved


def server_env(
    world: str | None = None,
    behavior: str | None = None,
    api_key: str | None = None,
    reload_seconds: float | None = None,
    batching: bool = True,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's environment: ours plus the references and options."""
    env = dict(os.environ)
    refs = refs_from_env(world, behavior)
    env.update({ENV_REFS[role]: refs[role] for role in ROLES})
    if api_key:
        env["FORESIGHT_API_KEY"] = api_key
    if reload_seconds is not None:
        env["FORESIGHT_RELOAD_SECONDS"] = str(reload_seconds)
    env["FORESIGHT_BATCHING"] = "1" if batching else "0"
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.update(extra or {})
    return env


def serve_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(child: subprocess.Popen, sig: int, grace: float = 15.0) -> int:
    """Send ``sig`` to the child's process group, wait for the group to go (SIGKILL after
    ``grace`` seconds); the child's exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, sig)
    deadline = time.monotonic() + grace
    try:
        code = child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        code = None
    while _group_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # workers exit after their arbiter
    if code is None or _group_alive(child.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        code = child.wait() if code is None else code
    return code


def serve(
    port: int = 3000,
    host: str = "127.0.0.1",
    world: str | None = None,
    behavior: str | None = None,
    api_key: str | None = None,
    reload_seconds: float | None = None,
) -> int:
    """Serve until the server exits or we get SIGTERM/SIGINT (what ``foresight serve``
    calls); the server's exit code, 0 after a forwarded signal.

    Raises ModelLoadError before starting when a model does not resolve or load. The
    server runs in its own process group, so a signal reaches its workers too; we return
    once the whole group is gone and the port is closed.
    """
    env = server_env(world, behavior, api_key, reload_seconds)
    if env.get(SOURCE_ENV, "registry") == "registry":
        check_models({role: env[ENV_REFS[role]] for role in ROLES})
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        child = subprocess.Popen(
            serve_command(host, port), env=env, cwd=REPO_ROOT, start_new_session=True
        )
        while not received:
            try:
                code = child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        if received:
            code = stop_group(child, received[0])
        elif _group_alive(child.pid):  # the arbiter died: take its workers with it
            stop_group(child, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while port_open(host, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return 0 if received else code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class ServerProcess:
    """A ``bentoml serve`` child on loopback, for tests and benchmarks (a context manager)."""

    def __init__(
        self,
        port: int,
        log_path: str | os.PathLike,
        host: str = "127.0.0.1",
        ready_timeout: float = 90.0,
        code_dir: str | os.PathLike | None = None,
        **env_options: Any,
    ) -> None:
        """``code_dir``: serve the ``serving`` package found there instead of this one
        (benchmarks compare against an earlier version of it)."""
        self.host, self.port, self.log_path = host, port, Path(log_path)
        self.url = f"http://{host}:{port}"
        self.env = server_env(**env_options)
        self.cwd = Path(code_dir) if code_dir else REPO_ROOT
        if code_dir:
            path = [str(code_dir), self.env.get("PYTHONPATH", "")]
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        import httpx

        if self.env.get(SOURCE_ENV, "registry") == "registry":
            check_models({role: self.env[ENV_REFS[role]] for role in ROLES})
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (the child writes it; closed in stop)
        self.process = subprocess.Popen(
            serve_command(self.host, self.port),
            env=self.env,
            cwd=self.cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"bentoml serve on {self.url} did not become ready:\n{tail}")

    def stop(self) -> None:
        if self.process is not None and (
            self.process.poll() is None or _group_alive(self.process.pid)
        ):
            stop_group(self.process, signal.SIGINT)  # its own session: the server and workers
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def openapi_spec() -> dict[str, Any]:
    """The service's OpenAPI document (what ``/docs.json`` serves), without importing models;
    without the benchmarking endpoints, as the product API."""
    from foresight.serving.middleware import public_spec
    from foresight.serving.service import Foresight

    return public_spec(Foresight.openapi_spec.asdict())


def comparable_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The parts of an OpenAPI document that describe the API (paths and schemas)."""
    return {"paths": spec.get("paths", {}), "components": spec.get("components", {})}


def write_openapi(path: str | os.PathLike = OPENAPI_PATH) -> Path:
    """Write the spec kept in the repo (``serving/openapi.json``)."""
    path = Path(path)
    path.write_text(json.dumps(openapi_spec(), indent=2, sort_keys=True) + "\n")
    return path


def stage_bento(context: str | os.PathLike) -> str:
    """The bento's build context: bentofile.yaml and the layers the service imports, laid out
    under ``foresight/`` as they are installed (the repo keeps them at its root)."""
    context = Path(context)
    shutil.copy(REPO_ROOT / "bentofile.yaml", context / "bentofile.yaml")
    for layer in ("datasets", "training", "serving"):
        shutil.copytree(
            REPO_ROOT / layer,
            context / "foresight" / layer,
            ignore=shutil.ignore_patterns("__pycache__", "README.md"),
        )
    return str(context)


def build_bento(world: str | None = None, behavior: str | None = None) -> str:
    """Put the referenced versions into BentoML's model store and ``bentoml build``; the tag.

    The bento packages the exported models (bentofile.yaml lists ``foresight-world`` and
    ``foresight-behavior``, latest); its container serves them with
    FORESIGHT_MODEL_SOURCE=bento, no store needed.
    """
    from foresight.serving.runtime import load_model_ref

    refs = refs_from_env(world, behavior)
    check_refs(refs)
    for role in ROLES:
        load_model_ref(role, refs[role], Store.from_env())  # exports as a side effect
    with tempfile.TemporaryDirectory(prefix="foresight-bento-") as context:
        out = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "--output", "tag", stage_bento(context)],
            cwd=context,
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


if __name__ == "__main__":
    if sys.argv[1:] == ["openapi"]:
        print(write_openapi())
    else:
        sys.exit(
            "usage: python -m foresight.serving.launch openapi   (rewrites serving/openapi.json)"
        )
