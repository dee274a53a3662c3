"""Events out: outbox → RabbitMQ (publisher confirms) and outbox → signed tenant webhooks.

Emits N events (each in its own committed transaction, as the platform does) for T tenants, each
tenant with one webhook endpoint on a local receiver (a separate process), while real Celery workers
(``-Q webhooks -P threads``, as ``make run`` starts them) fan out, deliver and publish. Prints:

* emit rate (events committed per second by one process),
* RabbitMQ: events/s from the first commit to the last confirmed publish (target ≥ 500),
* webhooks: events/s from the first commit to the last first-attempt arrival (target ≥ 500),
* commit → first webhook attempt delay p50 / p99 / max (target p99 ≤ 1 s),
* CPU seconds per event of each process on the path (the machine is shared, so wall-clock figures
  move with whatever else runs; CPU per event much less).

Runs in its own throw-away database and Redis key prefix; RabbitMQ from RABBITMQ_URL, else
amqp://guest:guest@127.0.0.1:5672// when it answers, else that part is skipped.

    python -m bench.events                            # full scale: 5000 events, 8 tenants, flat out
    python -m bench.events --events 3000 --rate 250   # delay at a steady load below saturation
    python -m bench.events --events 500 --tenants 2   # quick check
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import Process
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from bench._cpu import CpuMeter

ROOT = Path(__file__).resolve().parent.parent


def _receiver(port: int) -> None:
    """The tenants' webhook receiver: records when each webhook-id first arrived; GET /stats."""
    first_seen: dict[str, float] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived = time.time()
            with lock:
                first_seen.setdefault(self.headers["webhook-id"], arrived)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            with lock:
                body = json.dumps(first_seen).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _prepare_env(db_name: str) -> tuple[dict[str, str], str]:
    from config import embedded, local

    env = dict(os.environ)
    env.setdefault("SECRET_KEY_ID", "bench")
    env.setdefault("SECRET_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    env["REDIS_KEY_PREFIX"] = f"bench{os.getpid()}"
    env["EGRESS_ALLOW_PRIVATE_TARGETS"] = "true"
    env["EVENTS_EXCHANGE"] = f"metachat.bench.{os.getpid()}"
    env["LOG_LEVEL"] = "WARNING"
    if not env.get("RABBITMQ_URL") and embedded.port_open("127.0.0.1", 5672):
        env["RABBITMQ_URL"] = "amqp://guest:guest@127.0.0.1:5672//"
    base_url = env.get("DATABASE_URL", "")
    local.for_tests(env)
    if not base_url:
        env["DATABASE_URL"] = embedded.embedded_postgres_url(db_name)
    else:
        import psycopg

        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        env["DATABASE_URL"] = urlunparse(urlparse(base_url)._replace(path=f"/{db_name}"))
    return env, env["DATABASE_URL"]


def _drop_database(db_name: str) -> None:
    from django.db import connections

    connections.close_all()
    import psycopg

    url = os.environ["DATABASE_URL"]
    admin = urlunparse(urlparse(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--tenants", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="webhooks worker processes (threads pool each)")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker (make run uses 8)")
    parser.add_argument("--emitters", type=int, default=4, help="threads emitting (each its own connection)")
    parser.add_argument("--rate", type=float, default=0.0, help="pace emission at this many events/s (0: flat out)")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--worker-log", default="", help="write the workers' INFO log (task timings) here")
    args = parser.parse_args(argv)

    db_name = f"bench_events_{os.getpid()}"
    env, _ = _prepare_env(db_name)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command

    children: list[subprocess.Popen] = []
    try:
        print(f"migrating a throw-away database {db_name} ...", flush=True)
        call_command("migrate", verbosity=0)
        return _run(args, env, children, db_name)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        _drop_database(db_name)


def _run(args: argparse.Namespace, env: dict[str, str], children: list[subprocess.Popen], db_name: str) -> int:
    import requests
    from django.conf import settings
    from django.db import transaction
    from django.db.models import Max

    from events import services
    from events.models import Event, WebhookDelivery
    from events.services import emit
    from events.types import EventType
    from tenants.services import tenant_create

    port = _free_port()
    receiver = Process(target=_receiver, args=(port,), daemon=True)
    receiver.start()
    tenants = [tenant_create(name=f"Bench {i}", slug=f"bench-{i}-{uuid.uuid4().hex[:6]}") for i in range(args.tenants)]
    for tenant in tenants:
        services.webhook_endpoint_create(tenant=tenant, url=f"http://127.0.0.1:{port}/hook/{tenant.slug}")
    Event.objects.update(dispatch_pending=False, publish_pending=False)  # setup events are not measured

    rabbit_channel = None
    queue = ""
    if settings.RABBITMQ_URL:
        import kombu

        rabbit_connection = kombu.Connection(settings.RABBITMQ_URL)
        rabbit_connection.connect()
        rabbit_channel = rabbit_connection.channel()
        rabbit_channel.exchange_declare(
            exchange=settings.EVENTS_EXCHANGE, type="topic", durable=True, auto_delete=False
        )
        queue = rabbit_channel.queue_declare(queue="", exclusive=True).queue
        rabbit_channel.queue_bind(queue=queue, exchange=settings.EVENTS_EXCHANGE, routing_key="tenant.#")

    log = open(args.worker_log or os.devnull, "a")  # noqa: SIM115 (kept open for the workers' lifetime)
    for n in range(args.workers):
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "webhooks", "-P", "threads",
                 "-c", str(args.concurrency), "-n", f"bench{n}-{os.getpid()}@%h",
                 "--loglevel", "INFO" if args.worker_log else "WARNING"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
    time.sleep(4)  # worker start-up is not what we measure
    for _ in range(50):
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)

    print(f"emitting {args.events} events for {args.tenants} tenants from {args.emitters} threads ...", flush=True)
    committed: dict[str, float] = {}
    emitter_cpu: list[float] = []
    meter = CpuMeter(
        {
            "webhooks workers": [c.pid for c in children],
            "receiver": [receiver.pid or 0],
            "bench process": [os.getpid()],
        },
        postgres_database=db_name,
        rabbitmq=True,
        postgres_shared=True,
    )
    meter.start()
    started = time.time()

    def emitter(offset: int) -> None:
        from django.db import connection

        cpu_started = time.thread_time()
        try:
            for n in range(offset, args.events, args.emitters):
                if args.rate:
                    time.sleep(max(0.0, started + n / args.rate - time.time()))
                tenant = tenants[n % len(tenants)]
                with transaction.atomic():
                    event = emit(tenant=tenant, type=EventType.MESSAGE_RECEIVED, payload={"n": n, "text": "hello " * 8})
                committed[str(event.event_id)] = time.time()
        finally:
            connection.close()
            emitter_cpu.append(time.thread_time() - cpu_started)

    threads = [threading.Thread(target=emitter, args=(i,)) for i in range(args.emitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    emitted_in = time.time() - started

    deadline = time.monotonic() + args.timeout
    first_seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        first_seen = requests.get(f"http://127.0.0.1:{port}/", timeout=10).json()
        published_done = not settings.RABBITMQ_URL or not Event.objects.filter(publish_pending=True).exists()
        if len(first_seen) >= args.events and published_done:
            break
        time.sleep(0.2)
    cpu = meter.stop()
    delays = [first_seen[i] - committed[i] for i in committed if i in first_seen]
    print(f"emit ({args.emitters} threads, one transaction per event): {args.events / emitted_in:.0f} events/s")
    if first_seen:
        span = max(first_seen.values()) - started
        print(
            f"webhooks: {len(first_seen)}/{args.events} delivered; {len(first_seen) / span:.0f} events/s "
            f"(first commit → last first attempt {span:.2f} s)"
        )
        print(
            f"commit → first webhook attempt: p50 {_percentile(delays, 0.5) * 1000:.0f} ms, "
            f"p99 {_percentile(delays, 0.99) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
        )
    print(f"deliveries succeeded in the database: {WebhookDelivery.objects.filter(status='succeeded').count()}")
    if rabbit_channel is not None:
        last = Event.objects.aggregate(last=Max("published_at"))["last"]
        published = Event.objects.filter(published_at__isnull=False).count()
        in_queue = rabbit_channel.queue_declare(queue=queue, passive=True).message_count
        if last:
            span = last.timestamp() - started
            print(
                f"rabbitmq: {published}/{args.events} confirmed, {in_queue} in the bound queue; "
                f"{published / span:.0f} events/s (first commit → last confirm {span:.2f} s)"
            )
        rabbit_channel.exchange_delete(exchange=settings.EVENTS_EXCHANGE)
        rabbit_connection.release()
    else:
        print("rabbitmq: skipped (RABBITMQ_URL not set and nothing on 127.0.0.1:5672)")
    cpu["bench: emitter threads"] = sum(emitter_cpu)
    print(f"CPU while emitting and delivering ({os.cpu_count()} cores), seconds and ms per event:")
    for group in sorted(cpu):
        print(f"  {group:32} {cpu[group]:7.2f} s {cpu[group] * 1000 / args.events:6.2f} ms/event")
    own = sum(v for k, v in cpu.items() if "shared" not in k and k != "bench process")
    print(f"  {'total (not shared, emitter not polling)':32} {own:7.2f} s {own * 1000 / args.events:6.2f} ms/event")
    receiver.terminate()
    ok = len(first_seen) >= args.events
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
