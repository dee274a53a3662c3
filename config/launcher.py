"""`make run` and `make test` in one place.

``python -m config.launcher run``   start embedded services when no URL is given, migrate, bootstrap
                                    the demo, then serve daphne + Celery workers + beat in the
                                    foreground until Ctrl-C, which stops everything it started.
``python -m config.launcher test``  the whole check: ruff, makemigrations --check, mypy, pytest, against
                                    real PostgreSQL+pgvector, Redis and (with RABBITMQ_URL) RabbitMQ.
``python -m config.launcher pytest [args]``  only pytest, same environment (for a quick loop).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from config import embedded, local, metrics_dir, procfile
from config.serve import stop_processes

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# What mypy checks (with django-stubs; settings in pyproject.toml): every app and config.
TYPED_PACKAGES = ["config", "tenants", "events", "channels_app", "knowledge", "conversations"]


def say(message: str) -> None:
    print(f"[metachat] {message}", flush=True)


def indexing_worker_command(env: dict[str, str]) -> list[str]:
    """The indexing worker, the Procfile's ``indexing`` line. Indexing is CPU-bound (parsing,
    embedding): its own process, so an upload never delays a turn. Prefork, because only there do the
    indexing task's Celery time limits hold: the soft limit interrupts a run stuck in one long call, the
    hard limit replaces a child that never returns (a threads pool ignores both; the run's own deadline
    checks work in any pool)."""
    procfile.with_interpreter_first(env)
    return procfile.command("indexing")


def ensure_admin_api_key(env: dict[str, str]) -> tuple[str, bool]:
    if env.get("ADMIN_API_KEY"):
        return env["ADMIN_API_KEY"], False
    path = local.var_dir(env) / "admin_api_key"
    created = not path.exists()
    if created:
        path.write_text("adm_" + secrets.token_urlsafe(32))
        path.chmod(0o600)
    env["ADMIN_API_KEY"] = path.read_text().strip()
    return env["ADMIN_API_KEY"], created


def stop_services(started: list[str]) -> None:
    if "postgres" in started:
        embedded.stop_embedded_postgres()
    if "redis" in started:
        embedded.stop_embedded_redis()


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=env, check=True)


def run() -> int:
    t0 = time.monotonic()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    metrics_dir.prepare(env, "run")  # every process below writes its metrics there (config.metrics)
    port = env.get("PORT", "8000")
    host = env.get("HOST", "127.0.0.1")
    base_url = env.get("PUBLIC_BASE_URL", f"http://{host}:{port}")
    env["PUBLIC_BASE_URL"] = base_url
    # Keys and servers the environment does not give: generated once into var/, embedded servers.
    started = local.prepare(env, generate=True, prefer_local_redis=False, say=say)
    admin_key, admin_key_created = ensure_admin_api_key(env)
    children: list[subprocess.Popen] = []
    try:
        manage("bootstrap_demo", "--migrate", "--base-url", base_url, env=env)
        say(f"admin API key: {admin_key}" + ("   (generated, kept in var/admin_api_key)" if admin_key_created else ""))
        # The Procfile's processes under honcho; on the default queue one turns worker process per
        # core (at most 2): each has its own interpreter lock (bench.turn: 31.5 turns/s with 2 x 4
        # threads, 28.0 with 1 x 8).
        env.setdefault("HOST", host)
        env.setdefault("WEB_CONCURRENCY", "2")
        env.setdefault("CELERY_BEAT_SCHEDULE", str(local.var_dir(env) / "celerybeat-schedule"))
        procfile.with_interpreter_first(env)
        worker_processes = max(1, int(env.get("WORKER_PROCESSES") or min(2, os.cpu_count() or 1)))
        honcho = [PY, "-m", "honcho", "start", "--no-colour", "-e", os.devnull, "-f", str(procfile.PROCFILE), "-d", str(ROOT),
                  "-p", port, "-c", f"worker={worker_processes}"]  # fmt: skip
        children.append(subprocess.Popen(honcho, cwd=ROOT, env=env))
        _wait_for_health(base_url, timeout=60)
        say(f"serving on {base_url} (ready in {time.monotonic() - t0:.1f}s); Ctrl-C stops everything")
        return _supervise(children)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_processes(children)
        stop_services(started)
        say("stopped")


def _wait_for_health(base_url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/api/health", timeout=10) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    say("warning: /api/health did not answer healthy in time")


def _supervise(children: list[subprocess.Popen]) -> int:
    stop = {"flag": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop["flag"]:
        for child in children:
            if child.poll() is not None:
                say(f"process {child.args!r} exited with {child.returncode}; stopping")
                return child.returncode or 1
        time.sleep(0.5)
    return 0


def test_env() -> tuple[dict[str, str], list[str]]:
    env = dict(os.environ)
    metrics_dir.prepare(env, f"test{os.getpid()}")  # this run's, apart from other runs (config.metrics)
    started = local.for_tests(env)
    return env, started


def test(pytest_args: list[str], *, only_pytest: bool = False) -> int:
    env, started = test_env()
    say(
        f"tests against DATABASE_URL={_redact(env['DATABASE_URL'])} REDIS_URL={env['REDIS_URL']} "
        f"RABBITMQ_URL={_redact(env.get('RABBITMQ_URL', '')) or '(not set: RabbitMQ tests skipped)'}"
    )
    try:
        steps = [
            ("ruff check", [PY, "-m", "ruff", "check", "."]),
            ("ruff format --check", [PY, "-m", "ruff", "format", "--check", "."]),
            ("makemigrations --check", [PY, "manage.py", "makemigrations", "--check", "--dry-run"]),
            ("mypy", [PY, "-m", "mypy", *TYPED_PACKAGES]),
            ("pytest", [PY, "-m", "pytest", *pytest_args]),
        ]
        if only_pytest:
            steps = steps[-1:]
        for name, cmd in steps:
            say(f"== {name}")
            code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
            if code != 0:
                say(f"{name} failed (exit {code})")
                return code
        return 0
    finally:
        metrics_dir.remove(env["PROMETHEUS_MULTIPROC_DIR"])
        if env.get("CI"):  # a developer's embedded servers stay up for the next run (and other shells)
            stop_services(started)


def _redact(url: str) -> str:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "test", "pytest"}:
        print(__doc__)
        return 2
    os.chdir(ROOT)
    if argv[0] == "run":
        return run()
    return test(argv[1:], only_pytest=argv[0] == "pytest")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
