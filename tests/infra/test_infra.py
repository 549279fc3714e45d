"""Static checks of the deployment files under infra/ (nothing here starts Docker or Kubernetes).

They hold the files to what the README and docs/deployment.md promise: the compose services and
ports, every variable documented in infra/.env.example and no secret written down, PostgreSQL
storage with credentials from the environment, images that install what the Makefile installs,
Helm values using the Dagster chart's keys, and Kubernetes manifests whose probes, Service and
autoscaler point at the right things.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

SERVICES = {
    "minio",
    "minio-init",
    "postgres",
    "dagster-webserver",
    "dagster-daemon",
    "code-location",
    "prediction-service",
}
DAGSTER_SERVICES = ("code-location", "dagster-webserver", "dagster-daemon")
STORE_VARS = (
    "FORESIGHT_STORE",
    "FORESIGHT_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)
DOCUMENTED_VARS = {
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "FORESIGHT_STORE",
    "FORESIGHT_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "DAGSTER_HOME",
    "FORESIGHT_API_KEY",
}
# Environment keys whose values are credentials: never a literal in compose.
SECRET_KEY = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|API_KEY|TOKEN")
PLACEHOLDER = re.compile(r"change-me")


# -- helpers -------------------------------------------------------------------------------------


def load_yaml(name: str):
    return yaml.safe_load((INFRA / name).read_text())


def load_yaml_docs(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((INFRA / name).read_text()) if doc is not None]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file; comments and blank lines skipped."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}:{number}: {line!r}"
        values[key] = value
    return values


def variable_refs(text: str) -> set[str]:
    """Names compose interpolates in `text`: ${NAME}, ${NAME:-x}, ${NAME:?msg}, $NAME; not $$."""
    text = text.replace("$$", "")
    braced = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)
    bare = re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text)
    return set(braced) | set(bare)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose-style ${NAME}, ${NAME:-default}, ${NAME:?error} with `env`; $$ stays a $."""

    def replace(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name, "")
        if op == ":?" and not value:
            raise AssertionError(f"compose would stop: {name} is unset ({arg})")
        if op == ":-" and not value:
            return arg
        return value

    text = text.replace("$$", "\0")
    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", replace, text)
    return text.replace("\0", "$")


def compose(name: str = "compose.yaml") -> dict:
    """The compose file as compose sees it with infra/.env.example as its --env-file."""
    text = (INFRA / name).read_text()
    return yaml.safe_load(interpolate(text, read_env_file(INFRA / ".env.example")))


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def published_ports(service: dict) -> dict[int, str]:
    """container port -> "host_ip:host_port" (or "host_port") for short-syntax port strings."""
    ports = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(container)] = host
    return ports


def pip_requirements(command: str) -> list[str] | None:
    """The packages a `pip install` command installs, normalized; None if it is no pip install.

    Options (-q, -e, --no-cache-dir, --index-url URL, ...) are dropped: they say how, not what.
    For the local project (".", "./x") extras are dropped too: images leave out the [dev] tools.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for index in range(len(words) - 1):
        if words[index] == "pip" and words[index + 1] == "install":
            break
    else:
        return None
    with_value = {"--index-url", "-i", "--extra-index-url", "--find-links", "-f", "-c", "-r"}
    requirements, skip = [], False
    for word in words[index + 2 :]:
        if word in {"&&", ";", "||"}:
            break
        if skip:
            skip = False
            continue
        if word in with_value:
            skip = True
            continue
        if word.startswith("-"):
            continue
        if word.startswith((".", "/")):
            word = re.sub(r"\[.*\]$", "", word)
        requirements.append(word)
    return sorted(requirements)


def makefile_pip_installs() -> list[list[str]]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    found = [pip_requirements(line.strip()) for line in lines if "pip install" in line]
    return [req for req in found if req]


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in (INFRA / name).read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_pip_installs(name: str) -> list[list[str]]:
    found = [
        pip_requirements(args) for kind, args in dockerfile_instructions(name) if kind == "RUN"
    ]
    return [req for req in found if req]


def exec_form(args: str) -> list[str]:
    return yaml.safe_load(args)  # a JSON array is YAML


# -- the helpers themselves ----------------------------------------------------------------------


def test_variable_refs_reads_compose_syntax():
    text = 'a: ${ONE}\nb: "${TWO:-x}"\nc: ${THREE:?set it}\nd: $FOUR\ne: $${NOT_ME} $$NOR_ME'
    assert variable_refs(text) == {"ONE", "TWO", "THREE", "FOUR"}


def test_pip_requirements_normalizes():
    assert pip_requirements("$(BIN)/python -m pip install -q torch==2.13.0") == ["torch==2.13.0"]
    assert pip_requirements("python -m pip install --no-cache-dir -e '.[dev]'") == ["."]
    assert pip_requirements('pip install --index-url "$URL" torch==2.13.0') == ["torch==2.13.0"]
    assert pip_requirements("pip install a==1 b==2 && rm -rf /x") == ["a==1", "b==2"]
    assert pip_requirements("touch $(STAMP)") is None


# -- compose ---------------------------------------------------------------------------------------


def test_compose_names_the_documented_services():
    services = set(compose()["services"])
    assert services >= SERVICES, f"missing services: {SERVICES - services}"


def test_compose_publishes_the_documented_ports():
    services = compose()["services"]
    env = read_env_file(INFRA / ".env.example")
    minio = published_ports(services["minio"])
    assert set(minio) == {9000, 9001}, "MinIO: S3 API on 9000, console on 9001"
    assert published_ports(services["dagster-webserver"]) == {3000: env["DAGSTER_WEBSERVER_PORT"]}
    assert published_ports(services["prediction-service"]) == {3000: "3001"}
    postgres = published_ports(services["postgres"])
    assert postgres[5432].startswith("127.0.0.1:"), "PostgreSQL is published on loopback only"
    assert "ports" not in services["code-location"], "gRPC stays inside the compose network"


def test_every_compose_variable_is_in_env_example():
    documented = set(read_env_file(INFRA / ".env.example"))
    for name in ("compose.yaml", "compose.gpu.yaml"):
        used = variable_refs((INFRA / name).read_text())
        assert used <= documented, (
            f"{name} uses variables missing from .env.example: {used - documented}"
        )


def test_env_example_lists_the_documented_variables_with_placeholders():
    env = read_env_file(INFRA / ".env.example")
    assert set(env) >= DOCUMENTED_VARS, f"missing: {DOCUMENTED_VARS - set(env)}"
    assert env["FORESIGHT_STORE"] == f"s3://{env['FORESIGHT_BUCKET']}/store"
    assert env["FORESIGHT_S3_ENDPOINT"] == "http://minio:9000"
    for key, value in env.items():
        if SECRET_KEY.search(key) and key != "FORESIGHT_API_KEY":
            assert PLACEHOLDER.search(value), f".env.example: {key} must be a change-me placeholder"
    assert env["FORESIGHT_API_KEY"] == "", "the API key is optional: empty by default"
    assert ".env" in (INFRA / ".gitignore").read_text().split(), "infra/.env must stay out of git"


def test_compose_writes_no_literal_secret():
    raw = yaml.safe_load((INFRA / "compose.yaml").read_text())  # before interpolation
    reference = re.compile(r"\$\{[A-Z_][A-Z0-9_]*(?::\?[^}]*|:-)?\}")
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert reference.fullmatch(value), (
                    f"{name}.{key} must come from infra/.env: {value!r}"
                )
    text = (INFRA / "compose.yaml").read_text()
    for key, value in read_env_file(INFRA / ".env.example").items():
        if SECRET_KEY.search(key) and value:
            assert value not in text, f"compose.yaml contains the value of {key}"


def test_dagster_services_get_what_the_instance_file_reads():
    fields = load_yaml("dagster.yaml")["storage"]["postgres"]["postgres_db"].values()
    instance_vars = {field["env"] for field in fields if isinstance(field, dict)}
    services = compose()["services"]
    for name in DAGSTER_SERVICES:
        env = environment(services[name])
        missing = (instance_vars | {"DAGSTER_HOME", *STORE_VARS}) - set(env)
        assert not missing, f"{name} lacks {missing}"
        assert env["POSTGRES_HOST"] == "postgres" and env["POSTGRES_PORT"] == "5432"
        mounts = [str(volume).split(":") for volume in services[name]["volumes"]]
        targets = {target: source for source, target, *_ in mounts}
        home = env["DAGSTER_HOME"]
        for file in ("dagster.yaml", "workspace.yaml"):
            source = targets.get(f"{home}/{file}")
            assert source and (INFRA / source).resolve() == INFRA / file, f"{name}: {file} mount"
        assert f"{home}/storage" in targets, f"{name}: compute logs shared through a volume"


def test_prediction_service_gets_the_store_and_the_api_key():
    service = compose()["services"]["prediction-service"]
    env = environment(service)
    assert {*STORE_VARS, "FORESIGHT_API_KEY"} <= set(env)
    assert service["command"] == ["foresight", "serve", "--port", "3000"]
    assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_code_location_serves_our_definitions_where_the_workspace_looks():
    services = compose()["services"]
    command = services["code-location"]["command"]
    assert command[:3] in (["dagster", "code-server", "start"], ["dagster", "api", "grpc"])
    assert command[command.index("-m") + 1] == "foresight.pipelines.definitions"
    assert command[command.index("-h") + 1] == "0.0.0.0"
    port = int(command[command.index("-p") + 1])
    (entry,) = load_yaml("workspace.yaml")["load_from"]
    assert entry["grpc_server"] == {
        "host": "code-location",
        "port": port,
        "location_name": command[command.index("--location-name") + 1],
    }
    assert str(port) in services["code-location"]["healthcheck"]["test"]
    home = environment(services["dagster-webserver"])["DAGSTER_HOME"]
    for name in ("dagster-webserver", "dagster-daemon"):
        command = services[name]["command"]
        assert command[command.index("-w") + 1] == f"{home}/workspace.yaml"


def test_compose_dependencies_wait_for_health_and_init():
    services = compose()["services"]
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in conditions
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{target} needs a healthcheck"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    code = services["code-location"]["depends_on"]
    assert code["postgres"]["condition"] == "service_healthy"
    assert code["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("dagster-webserver", "dagster-daemon"):
        assert services[name]["depends_on"]["code-location"]["condition"] == "service_healthy"


def test_minio_init_creates_the_store_bucket():
    services = compose()["services"]
    script = " ".join(services["minio-init"]["command"])
    assert "mc mb --ignore-existing" in script and "$FORESIGHT_BUCKET" in script
    assert "$FORESIGHT_BUCKET" in script.split("mc mb", 1)[1].splitlines()[0]
    assert services["minio-init"]["image"].startswith("quay.io/minio/mc:RELEASE.")
    assert services["minio"]["image"].startswith("quay.io/minio/minio:RELEASE.")


def test_compose_builds_from_the_two_dockerfiles():
    services = compose()["services"]
    builds = {name: s["build"] for name, s in services.items() if "build" in s}
    assert builds["code-location"]["dockerfile"] == "infra/Dockerfile.code"
    assert builds["prediction-service"]["dockerfile"] == "infra/Dockerfile.service"
    for name, build in builds.items():
        context = (INFRA / build["context"]).resolve()
        assert context == ROOT, f"{name} builds from the repository root"
        assert (context / build["dockerfile"]).is_file()
    images = {services[name]["image"] for name in DAGSTER_SERVICES}
    assert len(images) == 1, "the Dagster processes share one image (one Dagster version)"


def test_gpu_override_targets_existing_services():
    services = compose()["services"]
    for name, service in compose("compose.gpu.yaml")["services"].items():
        assert name in services
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


# -- Dagster instance --------------------------------------------------------------------------------


def test_instance_stores_everything_in_postgres_with_env_credentials():
    config = load_yaml("dagster.yaml")
    assert set(config["storage"]) == {"postgres"}
    fields = config["storage"]["postgres"]["postgres_db"]
    assert set(fields) >= {"username", "password", "hostname", "db_name", "port"}
    # The driver that dagster-postgres installs: SQLAlchemy 2.1 reads plain "postgresql" as
    # psycopg 3 and the instance would not load (seen against a real PostgreSQL).
    assert fields.pop("scheme") == "postgresql+psycopg2"
    for key, value in fields.items():
        assert isinstance(value, dict) and set(value) == {"env"}, f"{key} must come from env"
    documented = set(read_env_file(INFRA / ".env.example")) | {"POSTGRES_HOST", "POSTGRES_PORT"}
    assert {value["env"] for value in fields.values()} <= documented
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_launcher"]["class"] in {"DefaultRunLauncher", "DockerRunLauncher"}
    assert config["telemetry"] == {"enabled": False}


def test_instance_and_workspace_pass_dagsters_own_schema():
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._core.workspace.config_schema import process_workspace_config

    config, custom_class = dagster_instance_config(str(INFRA))
    assert custom_class is None
    coordinator = config["run_coordinator"].get("config") or {}
    assert validate_config(QueuedRunCoordinator.config_type(), coordinator).success
    if config["run_launcher"]["class"] == "DefaultRunLauncher":
        launcher = config["run_launcher"].get("config") or {}
        assert validate_config(DefaultRunLauncher.config_type(), launcher).success
    assert process_workspace_config(load_yaml("workspace.yaml")).success


# -- images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile.code", "Dockerfile.service"])
def test_images_install_what_the_makefile_installs(dockerfile):
    makefile = makefile_pip_installs()
    assert makefile, "no pip install line found in the Makefile"
    image = dockerfile_pip_installs(dockerfile)
    positions = []
    for requirements in makefile:
        assert requirements in image, f"{dockerfile} lacks `pip install {' '.join(requirements)}`"
        positions.append(image.index(requirements))
    assert positions == sorted(positions), f"{dockerfile} installs in another order than make"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.code", "Dockerfile.service"])
def test_images_are_slim_non_root_and_copy_every_package(dockerfile):
    steps = dockerfile_instructions(dockerfile)
    kinds = [kind for kind, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    user = [args for kind, args in steps if kind == "USER"]
    assert user and user[-1] not in {"root", "0"}, "the image must run as a non-root user"
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN"), (
        "USER comes after the install steps"
    )
    # COPY src... dest: every word but the last is a path in the build context (the repo root).
    copied = {word for kind, args in steps if kind == "COPY" for word in args.split()[:-1]}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # the package folders: foresight.<layer>... lives in <layer>/ (package-dir maps foresight)
    packages = {p.split(".")[1] for p in pyproject["tool"]["setuptools"]["packages"]}
    assert packages | {"pyproject.toml", "README.md"} <= copied
    for path in copied:
        assert (ROOT / path).exists(), f"{dockerfile} copies missing {path}"
    assert "HEALTHCHECK" in kinds and "EXPOSE" in kinds


def test_code_image_serves_the_definitions_and_has_the_deployment_extras():
    steps = dict(dockerfile_instructions("Dockerfile.code"))
    command = exec_form(steps["CMD"])
    assert command[command.index("-m") + 1] == "foresight.pipelines.definitions"
    assert steps["EXPOSE"] == command[command.index("-p") + 1] == "4000"
    extras = {
        req.split("==")[0] for reqs in dockerfile_pip_installs("Dockerfile.code") for req in reqs
    }
    assert {"dagster-postgres", "dagster-k8s"} <= extras, "PostgreSQL storage and K8sRunLauncher"


def test_service_image_runs_foresight_serve_with_readiness():
    steps = dict(dockerfile_instructions("Dockerfile.service"))
    assert exec_form(steps["CMD"]) == ["foresight", "serve", "--port", "3000"]
    assert steps["EXPOSE"] == "3000"
    assert "/readyz" in steps["HEALTHCHECK"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "foresight" in scripts, "the image's CMD needs the foresight console script"


# -- Helm values for dagster/dagster ---------------------------------------------------------------

# Top-level keys of the chart's values (its values.yaml / values schema); a typo here would be
# silently ignored by helm.
CHART_KEYS = {
    "global",
    "nameOverride",
    "fullnameOverride",
    "rbacEnabled",
    "imagePullSecrets",
    "serviceAccount",
    "dagsterWebserver",
    "dagsterDaemon",
    "dagster-user-deployments",
    "postgresql",
    "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret",
    "rabbitmq",
    "redis",
    "flower",
    "ingress",
    "runLauncher",
    "scheduler",
    "computeLogManager",
    "pythonLogs",
    "busybox",
    "migrate",
    "telemetry",
    "retention",
    "additionalInstanceConfig",
    "extraManifests",
}
USER_DEPLOYMENT_KEYS = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "codeServerArgs",
    "includeConfigInLaunchedRuns",
    "port",
    "env",
    "envConfigMaps",
    "envSecrets",
    "annotations",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "labels",
    "volumeMounts",
    "volumes",
    "schedulerName",
    "initContainers",
    "sidecarContainers",
    "service",
    "replicaCount",
}


def k8s_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for name in ("service.yaml", "configmap.yaml", "secret.example.yaml"):
        for doc in load_yaml_docs(f"k8s/{name}"):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def test_helm_values_use_the_charts_keys():
    values = load_yaml("helm/dagster-values.yaml")
    assert set(values) <= CHART_KEYS, f"unknown chart keys: {set(values) - CHART_KEYS}"
    user = values["dagster-user-deployments"]
    assert user["enabled"] is True and user["enableSubchart"] is True
    (deployment,) = user["deployments"]
    assert set(deployment) <= USER_DEPLOYMENT_KEYS, set(deployment) - USER_DEPLOYMENT_KEYS
    assert isinstance(deployment["name"], str)
    image = deployment["image"]
    assert isinstance(image["repository"], str) and image["repository"]
    assert isinstance(image["tag"], str), "quote the tag: the chart expects a string"
    assert image["pullPolicy"] in {"Always", "IfNotPresent", "Never"}
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "foresight.pipelines.definitions"]
    assert isinstance(deployment["port"], int)
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(values["runLauncher"]["config"]) == {"k8sRunLauncher"}
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    assert isinstance(coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"], int)
    assert values["telemetry"] == {"enabled": False}


def test_helm_values_use_external_postgres_with_the_password_in_a_secret():
    values = load_yaml("helm/dagster-values.yaml")
    postgres = values["postgresql"]
    assert postgres["enabled"] is False
    assert isinstance(postgres["postgresqlHost"], str) and postgres["postgresqlHost"]
    assert isinstance(postgres["service"]["port"], int)
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    assert "postgresqlPassword" not in postgres, "the password lives in a Secret"
    assert values["generatePostgresqlPasswordSecret"] is False
    secret = k8s_objects()[("Secret", values["global"]["postgresqlSecretName"])]
    assert "postgresql-password" in secret["stringData"]


def test_helm_env_sources_exist_in_the_manifests():
    values = load_yaml("helm/dagster-values.yaml")
    objects = k8s_objects()
    sources = [values["dagster-user-deployments"]["deployments"][0]]
    sources.append(values["runLauncher"]["config"]["k8sRunLauncher"])
    for source in sources:
        for ref in source["envConfigMaps"]:
            assert ("ConfigMap", ref["name"]) in objects
        for ref in source["envSecrets"]:
            assert ("Secret", ref["name"]) in objects
        assert {"FORESIGHT_STORE", "FORESIGHT_S3_ENDPOINT"} <= set(
            objects[("ConfigMap", source["envConfigMaps"][0]["name"])]["data"]
        )


# -- Kubernetes manifests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["k8s/service.yaml", "k8s/configmap.yaml", "k8s/secret.example.yaml"]
)
def test_manifests_are_kubernetes_objects(name):
    docs = load_yaml_docs(name)
    assert docs
    for doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def prediction_objects() -> tuple[dict, dict, dict]:
    docs = {doc["kind"]: doc for doc in load_yaml_docs("k8s/service.yaml")}
    return docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]


def test_deployment_probes_hit_readyz_and_livez_on_the_container_port():
    deployment, _, _ = prediction_objects()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert 3000 in ports.values(), "foresight serve --port 3000"
    assert container["command"] == ["foresight", "serve", "--port", "3000"]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        port = get["port"]
        assert port in ports.values() or port in ports, f"{probe} targets port {port!r}"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    env_from = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in container["envFrom"]}
    objects = k8s_objects()
    assert ("ConfigMap", env_from["configMapRef"]) in objects
    assert ("Secret", env_from["secretRef"]) in objects
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_selects_the_deployments_pods_and_port():
    deployment, service, _ = prediction_objects()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] and service["spec"]["selector"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {p.get("name") for p in container["ports"]} | {
        p["containerPort"] for p in container["ports"]
    }
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in names


def test_autoscaler_targets_the_deployment_on_cpu():
    deployment, _, hpa = prediction_objects()
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


def test_example_secrets_hold_placeholders_only():
    for doc in load_yaml_docs("k8s/secret.example.yaml"):
        assert doc["kind"] == "Secret"
        assert "data" not in doc, "base64 data hides what is in it: use stringData"
        for key, value in doc["stringData"].items():
            assert value == "" or PLACEHOLDER.search(value), f"{key}: placeholder expected"


# -- docs --------------------------------------------------------------------------------------------


def test_docs_show_the_commands_they_promise():
    readme = (INFRA / "README.md").read_text()
    assert "docker compose --env-file infra/.env -f infra/compose.yaml up" in readme
    for service in SERVICES:
        assert f"`{service}`" in readme, f"infra/README.md does not describe {service}"
    assert "helm upgrade --install" in readme or "helm install" in readme
    assert re.search(r"kubectl (-n \S+ )?apply -f infra/k8s/service\.yaml", readme)
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    for var in ("FORESIGHT_STORE", "FORESIGHT_S3_ENDPOINT", "DAGSTER_HOME"):
        assert var in deployment
