"""The deployment files, checked without a cluster or a Docker engine (neither exists on our machines).

Kubernetes: every overlay is rendered with ``kubectl kustomize`` (Debian's kubernetes-client, installed by
``make test``) and every rendered object is validated against the Kubernetes API schema
(kubernetes-validate, strict: an unknown field fails), then the properties an operator relies on are
asserted. docker-compose.yml: parsed, and its hardening asserted; ``docker compose config`` runs too
when the Docker CLI has the compose plugin. Nothing here is applied to a cluster or started.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from django.conf import settings

from config import procfile

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUSTOMIZE_DIR / "overlays").iterdir() if p.is_dir())
# The oldest Kubernetes the manifests are meant for (autoscaling/v2, policy/v1 and batch/v1 Job TTLs are
# GA there) and the newest schema kubernetes-validate knows.
SCHEMA_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
APP_IMAGE = "metachat"
UID = 10001


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if found:
        return found
    reason = "kubectl is not installed: `make kubectl` installs Debian's kubernetes-client"
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: the deployment manifests must be checked)")
    pytest.skip(reason)


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZE_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    return list(_render(overlay))


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = objects(overlay, kind)
    assert name in found, f"{overlay}: no {kind} {name} (have {sorted(found)})"
    return found[name]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def config(overlay: str) -> dict[str, str]:
    return one(overlay, "ConfigMap", "metachat-config")["data"]


PROCFILE_COMMAND = ["python", "-m", "config.procfile"]


def procfile_name(argv: list[str]) -> str | None:
    """The Procfile process a container or service runs (``python -m config.procfile <name>``), if any."""
    return argv[3] if argv[:3] == PROCFILE_COMMAND and len(argv) == 4 else None


def command_line(container: dict[str, Any]) -> str:
    """What the container runs, with a Procfile process replaced by its line."""
    argv = container.get("command", []) + container.get("args", [])
    name = procfile_name(argv)
    return procfile.processes()[name] if name else " ".join(argv)


def queues_served(deployment: dict[str, Any]) -> set[str]:
    line = " ".join(command_line(c) for c in pod_spec(deployment)["containers"])
    return set(re.findall(r"\bcelery -A config (?:--quiet )?worker -Q (\S+)", line)) if "celery" in line else set()


def celery_queues() -> set[str]:
    """Every queue a task is routed to, from the settings the workers run with."""
    return {settings.CELERY_TASK_DEFAULT_QUEUE} | {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}


# --- Kubernetes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schema(overlay: str) -> None:
    docs = render(overlay)
    assert {o["metadata"].get("namespace") for o in docs} == {"metachat"}
    failures = []
    for version in SCHEMA_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{version} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_runs_non_root_read_only_with_probes_and_resources(overlay: str) -> None:
    workloads = list(objects(overlay, "Deployment").values()) + list(objects(overlay, "Job").values())
    assert len(workloads) >= 6
    for workload in workloads:
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == UID, name
        assert spec["automountServiceAccountToken"] is False, name  # the app never talks to the API server
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name} container {container['name']}"
            assert container["image"].split("/")[-1].startswith(f"{APP_IMAGE}:"), where
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, f"{where}: {bound}"
            # The root filesystem is read-only: /tmp and VAR_DIR (/data) must be writable volumes.
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp"] and "emptyDir" in mounts["/data"], where
        if workload["kind"] == "Deployment":
            for container in spec["containers"]:
                assert "livenessProbe" in container, f"{name} {container['name']}"
                # A pod starts serving or consuming only once the migrations Job is through.
            assert [c["name"] for c in spec["initContainers"]] == ["wait-for-migrations"], name
            assert "migrate --check" in command_line(spec["initContainers"][0]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_the_health_endpoint_with_a_host_django_accepts(overlay: str) -> None:
    api = one(overlay, "Deployment", "metachat-api")
    (container,) = pod_spec(api)["containers"]
    allowed_hosts = config(overlay)["ALLOWED_HOSTS"].split(",")
    for probe in ("startupProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert http["path"] == "/api/health", probe
        (host,) = [h["value"] for h in http["httpHeaders"] if h["name"] == "Host"]
        assert host in allowed_hosts, f"{probe}: Django answers 400 to Host {host!r}"
    # /api/health answers 503 while PostgreSQL is down: that must take pods out of the Service, not
    # restart every one of them, so liveness does not ask it.
    assert container["livenessProbe"].get("httpGet", {}).get("path") != "/api/health"
    service = one(overlay, "Service", "metachat-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_autoscaled_worker_deployment_per_celery_queue(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    served: dict[str, str] = {}
    for name, deployment in deployments.items():
        for queue in queues_served(deployment):
            assert queue not in served, f"queue {queue} consumed by {served[queue]} and {name}"
            served[queue] = name
    assert set(served) == celery_queues()
    autoscalers = objects(overlay, "HorizontalPodAutoscaler")
    targets = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in autoscalers.values()}
    for target in targets:
        assert target in deployments, f"an autoscaler targets {target}, which does not exist"
    for name in [*served.values(), "metachat-api"]:
        hpa = targets[name]
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        # The autoscaler owns the count: a replicas field would reset it at every apply.
        assert "replicas" not in deployments[name]["spec"], name
        (container,) = pod_spec(deployments[name])["containers"]
        assert "cpu" in container["resources"]["requests"]  # utilisation is measured against it
    # Exactly one disruption budget per autoscaled Deployment, selecting its pods.
    budgets = objects(overlay, "PodDisruptionBudget")
    for name in targets:
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
        assert len(matching) == 1, name
        assert matching[0]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_beat_is_a_single_replica_replaced_not_rolled(overlay: str) -> None:
    beat = one(overlay, "Deployment", "metachat-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}  # never two schedulers, even mid-upgrade
    (container,) = pod_spec(beat)["containers"]
    assert re.match(r"(exec )?celery -A config (--quiet )?beat", command_line(container))
    beat_count = sum(" beat " in command_line(c) for d in objects(overlay, "Deployment").values()
                     for c in pod_spec(d)["containers"])  # fmt: skip
    assert beat_count == 1
    assert all(
        h["spec"]["scaleTargetRef"]["name"] != "metachat-beat"
        for h in objects(overlay, "HorizontalPodAutoscaler").values()
    )
    labels = beat["spec"]["template"]["metadata"]["labels"]
    assert not [b for b in objects(overlay, "PodDisruptionBudget").values()
                if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_as_a_job_and_the_demo_only_when_asked(overlay: str) -> None:
    job = one(overlay, "Job", "metachat-migrate")
    (container,) = pod_spec(job)["containers"]
    script = command_line(container)
    assert "python manage.py migrate --noinput" in script
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert config(overlay)["BOOTSTRAP_DEMO"] == "false"
    assert _run_bootstrap_script(container["command"][-1], BOOTSTRAP_DEMO="false") == ["manage.py migrate --noinput"]
    assert _run_bootstrap_script(container["command"][-1], BOOTSTRAP_DEMO="true") == [
        "manage.py migrate --noinput",
        "manage.py bootstrap_demo --base-url https://chat.example.test",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_serves_the_public_host_over_tls_websocket_included(overlay: str) -> None:
    ingress = one(overlay, "Ingress", "metachat")
    data = config(overlay)
    public = urlparse(data["PUBLIC_BASE_URL"])
    assert public.scheme == "https"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == public.hostname == data["ALLOWED_HOSTS"].split(",")[0]
    assert data["CSRF_TRUSTED_ORIGINS"] == f"https://{public.hostname}"
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"]] and tls["secretName"]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert paths == {"/ws/": "metachat-api", "/": "metachat-api"}
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_holds_placeholders_for_the_external_servers_and_keys(overlay: str) -> None:
    secret = one(overlay, "Secret", "metachat-secrets")["stringData"]
    for url_name, scheme in (("DATABASE_URL", "postgresql"), ("REDIS_URL", "redis"), ("RABBITMQ_URL", "amqp")):
        url = urlparse(secret[url_name])
        assert url.scheme == scheme and url.password == "CHANGE-ME", url_name
    for key in ("ADMIN_API_KEY", "DJANGO_SECRET_KEY", "SECRET_ENCRYPTION_KEY"):
        assert secret[key] == "CHANGE-ME", key  # never a real secret in git
    # Everything the pods get from the ConfigMap and the Secret is read by the settings or a command.
    settings_source = "\n".join(p.read_text() for p in (ROOT / "config").rglob("*.py"))
    commands = "\n".join(command_line(c) for d in render(overlay) if d["kind"] in {"Deployment", "Job"}
                         for c in pod_spec(d)["containers"])  # fmt: skip
    for name in [*secret, *config(overlay)]:
        in_commands = re.search(rf"\$\{{?{name}\b", commands)
        assert f'"{name}"' in settings_source or in_commands, f"{name} is read by nothing"
    # PostgreSQL, Redis and RabbitMQ are external: nothing in the cluster runs them.
    assert not [o for o in render(overlay) if o["kind"] == "StatefulSet"]


def test_production_overlay_is_bigger_and_on_its_own_host_than_single_node() -> None:
    small, big = "single-node", "production"
    for name, hpa in objects(small, "HorizontalPodAutoscaler").items():
        prod = one(big, "HorizontalPodAutoscaler", name)["spec"]
        assert prod["minReplicas"] > hpa["spec"]["minReplicas"], name
        assert prod["maxReplicas"] > hpa["spec"]["maxReplicas"], name
    assert one(big, "HorizontalPodAutoscaler", "metachat-api")["spec"]["minReplicas"] >= 3

    def requests(overlay: str, name: str) -> dict[str, str]:
        return pod_spec(one(overlay, "Deployment", name))["containers"][0]["resources"]["requests"]

    for name in ("metachat-api", "metachat-worker-default", "metachat-worker-indexing", "metachat-worker-webhooks"):
        assert _millicores(requests(big, name)["cpu"]) > _millicores(requests(small, name)["cpu"]), name
        assert _mebibytes(requests(big, name)["memory"]) > _mebibytes(requests(small, name)["memory"]), name
    api = pod_spec(one(big, "Deployment", "metachat-api"))
    assert api["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"

    hosts = {o: one(o, "Ingress", "metachat")["spec"]["tls"][0]["hosts"] for o in (small, big)}
    assert hosts == {small: ["metachat.localhost"], big: ["chat.example.com"]}
    assert "cert-manager.io/cluster-issuer" in one(big, "Ingress", "metachat")["metadata"]["annotations"]
    # Several nodes share the uploaded files; on one node a ReadWriteOnce volume does.
    assert one(big, "PersistentVolumeClaim", "metachat-media")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert one(small, "PersistentVolumeClaim", "metachat-media")["spec"]["accessModes"] == ["ReadWriteOnce"]
    images = {c["image"] for d in objects(big, "Deployment").values() for c in pod_spec(d)["containers"]}
    assert images == {"registry.example.com/metachat:1.0.0"}


def _millicores(value: str) -> float:
    return float(value[:-1]) if value.endswith("m") else float(value) * 1000


def _mebibytes(value: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(value[:-2]) * units[value[-2:]]


def _run_bootstrap_script(script: str, **env: str) -> list[str]:
    """Run a migrate-then-maybe-demo shell script with a stand-in ``python`` that only records its arguments."""
    bin_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"metachat-deploy-test-{os.getpid()}"
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "calls"
    log.write_text("")
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    try:
        subprocess.run(
            ["sh", "-c", script],
            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PUBLIC_BASE_URL": "https://chat.example.test", **env},
            check=True,
            capture_output=True,
            timeout=30,
        )
        return log.read_text().splitlines()
    finally:
        shutil.rmtree(bin_dir)


# --- docker-compose.yml -------------------------------------------------------------------------------------

COMPOSE_FILE = ROOT / "docker-compose.yml"
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "RABBITMQ_PASSWORD",
    "ADMIN_API_KEY",
    "DJANGO_SECRET_KEY",
    "SECRET_ENCRYPTION_KEY",
}
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<rest>[^}]*))?\}")


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def app_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if "build" in s}


def _default(expression: str) -> str | None:
    match = INTERPOLATION.fullmatch(expression.strip())
    assert match and match["op"] in (":-", "-"), expression
    return match["rest"]


def test_compose_every_service_restarts_and_has_a_healthcheck() -> None:
    one_shot = set()
    for name, service in services().items():
        if service.get("restart") == "no":
            # Only a job others wait to complete may stay stopped (and has nothing to report health on).
            one_shot.add(name)
            assert service["healthcheck"] == {"disable": True}, name
            continue
        assert service["restart"] in {"always", "unless-stopped"}, name
        test = service["healthcheck"]["test"]
        assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name
    assert one_shot == {"migrate"}
    waiting = [n for n, s in app_services().items() if n != "migrate"]
    for name in waiting:
        assert services()[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
    # Each Celery worker's healthcheck pings its own node name.
    for name, service in app_services().items():
        line = command_line(service)
        if " worker " in line:
            node = re.search(r"-n \$\{HONCHO_PROCESS_NAME:-(\w+)\}@%h", line)
            assert node, name
            assert f"ping -d {node[1]}@$$HOSTNAME" in service["healthcheck"]["test"][1], name


def test_compose_app_containers_run_as_a_non_root_user() -> None:
    for name, service in app_services().items():
        user = str(service["user"]).split(":")[0]
        assert user not in {"0", "root"}, name
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1].split(":")[0] == str(UID)
    assert str(services()["api"]["user"]) == f"{UID}:{UID}"


def test_compose_publishes_only_the_http_proxy() -> None:
    published = {name: s["ports"] for name, s in services().items() if s.get("ports")}
    assert list(published) == ["proxy"]
    (mapping,) = published["proxy"]
    assert mapping.endswith(":8080")
    for name in ("postgres", "redis", "rabbitmq", "api"):
        assert "ports" not in services()[name] and "expose" not in services()[name], name
    text = COMPOSE_FILE.read_text()
    for port in ("5432:", "6379:", "5672:", "15672:"):
        assert port not in text, port


def test_compose_runs_several_api_processes_behind_the_proxy() -> None:
    api = services()["api"]
    assert int(_default(api["deploy"]["replicas"]) or 0) >= 2
    assert procfile_name(api["command"]) == "web"
    assert "WEB_CONCURRENCY" not in api["environment"]  # one daphne per replica: replicas scale it
    nginx = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    # Resolved at run time through Docker's DNS: every replica, including restarted ones, gets traffic.
    assert "resolver 127.0.0.11" in nginx and "proxy_pass $api_upstream;" in nginx
    assert "set $api_upstream http://api:8000;" in nginx
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx  # the web chat WebSocket
    volume = services()["proxy"]["volumes"][0]
    assert volume.startswith("./deploy/compose/nginx.conf:") and volume.endswith(":ro")
    assert api["environment"]["TRUSTED_PROXY_COUNT"] == "1"


def test_compose_passwords_come_from_env_without_defaults() -> None:
    text = COMPOSE_FILE.read_text()
    seen: dict[str, set[str]] = {}
    for match in INTERPOLATION.finditer(text):
        seen.setdefault(match["name"], set()).add(match["op"] or "")
        secret_like = re.search(r"PASSWORD|PASS$|SECRET|KEY", match["name"]) and not match["name"].endswith("_ID")
        if secret_like and match["op"] in (":-", "-"):
            assert match["rest"] == "", f"{match['name']} has a default: {match[0]}"
    for name in REQUIRED_SECRETS:
        assert seen.get(name) == {":?"}, f"{name} must be required everywhere (${{{name}:?...}}), is {seen.get(name)}"
    # Every credential in a URL, and every password variable, is one of them.
    for service_name, service in services().items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            url = re.match(r"^\w+://[^:/@]*:(?P<password>[^@]*)@", value)
            if url:
                assert INTERPOLATION.fullmatch(url["password"]) and ":?" in url["password"], f"{service_name} {key}"
            if re.search(r"PASSWORD|_PASS$|AUTH$", key):
                assert value.startswith("${") and ":?" in value, f"{service_name} {key}"
    # .env.example names every required secret and ships none.
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    for name in REQUIRED_SECRETS:
        assert example[name] == "", name
    assert example["BOOTSTRAP_DEMO"] == "false"


def test_compose_creates_the_demo_only_when_asked() -> None:
    migrate = services()["migrate"]
    assert _default(migrate["environment"]["BOOTSTRAP_DEMO"]) == "false"
    script = migrate["command"][-1].replace("$$", "$")  # compose's escape for a literal $
    assert _run_bootstrap_script(script) == ["manage.py migrate --noinput"]
    assert _run_bootstrap_script(script, BOOTSTRAP_DEMO="false") == ["manage.py migrate --noinput"]
    assert _run_bootstrap_script(script, BOOTSTRAP_DEMO="true") == [
        "manage.py migrate --noinput",
        "manage.py bootstrap_demo --base-url https://chat.example.test",
    ]
    # No other service bootstraps anything.
    for name, service in services().items():
        if name != "migrate":
            assert "bootstrap_demo" not in str(service.get("command", "")), name


def test_compose_keeps_the_pgvector_image_the_search_needs() -> None:
    # >= 0.8.0: the filtered HNSW search relies on pgvector's iterative scan.
    assert services()["postgres"]["image"] == "pgvector/pgvector:0.8.1-pg17"


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("the Docker CLI's compose plugin is not installed: the structural checks above stand in for it")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    missing = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr + missing.stdout
    env |= {name: "x1" for name in REQUIRED_SECRETS}
    filled = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert filled.returncode == 0, filled.stderr


# --- One process table ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_procfile_is_the_one_process_table(overlay: str) -> None:
    """make run (honcho), docker-compose and every Kubernetes overlay run the Procfile's lines and
    nothing else: each Procfile process is deployed, and no container starts daphne or Celery itself."""
    table = procfile.processes()
    assert list(table) == ["web", "worker", "indexing", "webhooks", "beat"]
    compose_names = {procfile_name(s.get("command", [])) for n, s in app_services().items() if n != "migrate"}
    cluster = [c for d in objects(overlay, "Deployment").values() for c in pod_spec(d)["containers"]]
    cluster_names = {procfile_name(c.get("command", []) + c.get("args", [])) for c in cluster}
    assert compose_names == set(table), compose_names
    assert cluster_names == set(table), cluster_names
    for line in table.values():
        assert line.startswith("exec "), line  # the program replaces sh: it gets SIGTERM itself
    launcher = (ROOT / "config" / "launcher.py").read_text()
    assert '"honcho", "start"' in launcher and "procfile.PROCFILE" in launcher


def test_a_procfile_process_starts_from_its_line(tmp_path: Path) -> None:
    """``python -m config.procfile web`` serves: the Procfile's web line, two daphne processes on one
    socket, answering the liveness endpoint; SIGTERM stops the group."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "2"}
    log = (tmp_path / "web.log").open("wb")
    argv = [sys.executable, "-m", "config.procfile", "web"]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/live", timeout=2) as response:
                    assert response.status == 200
                    assert response.read() == b'{"status": "alive"}'
                    break
            except OSError:
                assert process.poll() is None, (tmp_path / "web.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the web process did not answer in 60 s"
                time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2  # WEB_CONCURRENCY daphne processes under the one web process
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
