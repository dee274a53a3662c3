"""Webhook ingest: sustained signed WhatsApp POSTs at a running daphne, beside a bare 200 endpoint.

Starts daphne as `make run` does (WEB_CONCURRENCY processes on one socket) on a free port against a
throw-away database (created and dropped here), then drives keep-alive clients at:
  1. ``/webhooks/_bench/bare``  answering 200 at once on the same path as the webhooks (the ASGI fast
     path in front of Django: body read, JSON answer, no work);
  2. ``/webhooks/whatsapp``     real payloads, real HMAC signatures, a share of them redelivered.
Phase 1 is closed loop (32 clients, each sending on the previous answer): the server's capacity for
both. Phase 2 is open loop at ``--rate`` new messages per second (how Meta delivers): acknowledgement
latency p50/p99 counted from each request's due time. Then checks that every unique message was
stored exactly once and enqueued exactly once (zero lost, zero processed twice).
No Celery worker runs: enqueued tasks stay in Redis under a key prefix unique to this run, counted,
then deleted.

Targets (2-core machine): >= 500 req/s sustained, p50 <= 20 ms and p99 <= 100 ms at 500/s, >= 40% of bare.

    python -m bench.webhook_ingest                       # full scale: 20,000 requests, 32 clients
    python -m bench.webhook_ingest --requests 2000       # quick check
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent
PHONE_NUMBER_ID = "100200300400500"
APP_SECRET = "bench-app-secret-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def whatsapp_body(index: int, messages_per_post: int) -> bytes:
    messages = [
        {
            "from": f"1555{(index * 7 + k) % 1000:07d}",
            "id": f"wamid.BENCH{index:08d}x{k}",
            "timestamp": str(1767225600 + index),
            "type": "text",
            "text": {"body": f"Hello, question number {index}.{k}: when do you open on Saturdays?"},
        }
        for k in range(messages_per_post)
    ]
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "987654321",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
                            "contacts": [{"profile": {"name": "Bench User"}, "wa_id": m["from"]} for m in messages],
                            "messages": messages,
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def drive(
    port: int, path: str, bodies: list[bytes], concurrency: int, rate: float | None = None
) -> tuple[float, list[float], dict[int, int]]:
    """Send every body once over ``concurrency`` keep-alive connections; (wall seconds, latencies, statuses).

    Closed loop by default (each client sends its next request when the previous one is answered: the
    server's capacity). With ``rate``, open loop: request i is due at start + i/rate and its latency is
    counted from that due time, so a server falling behind shows it (no coordinated omission)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    cursor = {"next": 0}
    signed = [(body, signature(body)) for body in bodies]

    origin = {"t": 0.0}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        codes: dict[int, int] = {}
        while True:
            with lock:
                i = cursor["next"]
                cursor["next"] += 1
            if i >= len(signed):
                break
            body, sig = signed[i]
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sig}
            started = time.perf_counter()
            if rate:
                due = origin["t"] + i / rate
                if due > started:
                    time.sleep(due - started)
                started = due
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                code = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                code = 0
            mine.append(time.perf_counter() - started)
            codes[code] = codes.get(code, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)
            for code, count in codes.items():
                statuses[code] = statuses.get(code, 0) + count

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = origin["t"] = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, statuses


def report(name: str, wall: float, latencies: list[float], statuses: dict[int, int]) -> float:
    ordered = sorted(latencies)
    rps = len(ordered) / wall if wall else 0.0
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"{name:<22} {len(ordered):>7} req  {rps:>8.0f} req/s  p50 {p50:>6.1f} ms  p99 {p99:>6.1f} ms  "
        f"statuses {dict(sorted(statuses.items()))}",
        flush=True,
    )
    return rps


def queued_inbound_ids(client: Any, queue_key: str) -> list[int]:
    """Inbound row ids in the Celery messages waiting in Redis (single tasks and dispatch batches)."""
    ids: list[int] = []
    for raw in client.lrange(queue_key, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        if message["headers"]["task"] == "channels_app.dispatch_inbound":
            ids += [item[1] for item in args[0]]
        else:
            ids.append(args[0])
    return ids


def prepare_environment() -> dict[str, str]:
    from config.launcher import test_env

    env, _started = test_env()
    env["REDIS_KEY_PREFIX"] = f"bench{os.getpid()}"
    env["SECRET_KEY_ID"] = "bench1"
    env["SECRET_ENCRYPTION_KEY"] = base64.b64encode(os.urandom(32)).decode()
    env["WEBHOOK_BENCH_BARE_ENDPOINT"] = "true"
    env["LOG_LEVEL"] = "WARNING"
    env["TEST_DATABASE_NAME"] = f"bench_webhook_{os.getpid()}"
    os.environ.update(env)
    return env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.webhook_ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="POSTs per phase (default 20000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent keep-alive clients (default 32)")
    parser.add_argument("--messages-per-post", type=int, default=1, help="messages in each payload (default 1)")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop rate of the latency phase (default 500/s)")
    parser.add_argument(
        "--processes", type=int, default=2, help="daphne processes on one socket, as `make run` (WEB_CONCURRENCY)"
    )
    parser.add_argument("--redeliver", type=float, default=0.1, help="share of POSTs that repeat an earlier one")
    args = parser.parse_args(argv)

    env = prepare_environment()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    original_name = settings.DATABASES["default"]["NAME"]
    db_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    parsed = urlparse(env["DATABASE_URL"])
    env["DATABASE_URL"] = urlunparse(parsed._replace(path=f"/{db_name}"))
    daphnes: list[subprocess.Popen] = []
    redis_client: Any = None
    try:
        from channels_app import services
        from channels_app.models import InboundEvent
        from tenants.services import tenant_create

        tenant = tenant_create(name="Bench tenant")
        channel = services.channel_create(
            tenant=tenant,
            type="whatsapp",
            name="Bench number",
            external_id=PHONE_NUMBER_ID,
            credentials={"app_secret": APP_SECRET, "access_token": "EAAbench", "verify_token": "bench"},
        )
        connection.close()

        from config.serve import listening_socket, start_daphne

        port = free_port()
        sock = listening_socket("127.0.0.1", port)
        daphnes = start_daphne(sock, args.processes, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sock.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/_bench/bare", data=b"{}")
                with urllib.request.urlopen(ready, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if any(d.poll() is not None for d in daphnes) or time.monotonic() > deadline:
                    errors = [d.stderr.read().decode()[-2000:] for d in daphnes if d.stderr and d.poll() is not None]
                    print("daphne did not start:", *errors)
                    return 1
                time.sleep(0.2)

        n = args.requests
        unique = max(1, int(n * (1 - args.redeliver)))
        bodies = [whatsapp_body(i, args.messages_per_post) for i in range(unique)]
        bodies += [bodies[(i * 7919) % unique] for i in range(n - unique)]  # redeliveries, spread out
        order = sorted(range(n), key=lambda i: (i * 104729) % n)  # interleave redeliveries with firsts
        bodies = [bodies[i] for i in order]
        warm = [whatsapp_body(i, 1).replace(b"wamid.BENCH", b"wamid.WARMUP") for i in range(200)]

        print(
            f"{args.processes} daphne process(es) on :{port}; {n} POSTs per phase, {args.concurrency} clients, "
            f"{args.messages_per_post} message(s) per POST, {n - unique} redeliveries; "
            f"payload {len(bodies[0])} bytes",
            flush=True,
        )
        drive(port, "/webhooks/_bench/bare", warm, args.concurrency)
        drive(port, "/webhooks/whatsapp", warm, args.concurrency)
        bare_rps = report("bare 200 endpoint", *drive(port, "/webhooks/_bench/bare", bodies, args.concurrency))
        hook_wall, hook_lat, hook_status = drive(port, "/webhooks/whatsapp", bodies, args.concurrency)
        hook_rps = report("signed webhook POST", hook_wall, hook_lat, hook_status)
        print(f"webhook / bare throughput: {hook_rps / bare_rps:.0%}", flush=True)
        # Latency at a steady arrival rate (how Meta actually delivers), new messages only.
        offset = 50_000_000
        paced = [whatsapp_body(offset + i, args.messages_per_post) for i in range(n)]
        rate_wall, rate_lat, rate_status = drive(port, "/webhooks/whatsapp", paced, args.concurrency, rate=args.rate)
        report(f"webhook at {args.rate:.0f}/s", rate_wall, rate_lat, rate_status)

        expected = {
            f"wamid.BENCH{i:08d}x{k}"
            for i in [*range(unique), *range(offset, offset + n)]
            for k in range(args.messages_per_post)
        }
        stored = dict(
            InboundEvent.objects.filter(channel=channel, dedupe_key__startswith="wamid.BENCH").values_list(
                "id", "dedupe_key"
            )
        )
        lost = len(expected - set(stored.values()))
        twice = len(stored) - len(set(stored.values()))
        import redis

        redis_client = redis.Redis.from_url(settings.REDIS_URL)
        queue_key = f"{env['REDIS_KEY_PREFIX']}:celery:default"
        # Tasks are published from a background thread in daphne: give it a moment to drain.
        deadline, enqueued_ids = time.monotonic() + 15, []
        while time.monotonic() < deadline:
            enqueued_ids = [i for i in queued_inbound_ids(redis_client, queue_key) if i in stored]
            if len(enqueued_ids) >= len(stored):
                break
            time.sleep(0.5)
        enqueued_twice = len(enqueued_ids) - len(set(enqueued_ids))
        never_enqueued = len(set(stored) - set(enqueued_ids))
        print(
            f"stored {len(stored)} of {len(expected)} unique messages: lost {lost}, stored twice {twice}; "
            f"tasks enqueued {len(enqueued_ids)}: never enqueued {never_enqueued}, enqueued twice {enqueued_twice}",
            flush=True,
        )
        ok = lost == twice == never_enqueued == enqueued_twice == 0 and set(hook_status) == set(rate_status) == {200}
        p50 = statistics.median(rate_lat) * 1000
        p99 = sorted(rate_lat)[min(len(rate_lat) - 1, int(len(rate_lat) * 0.99))] * 1000
        targets = hook_rps >= 500 and p50 <= 20 and p99 <= 100 and hook_rps >= 0.4 * bare_rps
        print(
            f"targets (>=500 req/s closed loop; at {args.rate:.0f}/s p50<=20 ms, p99<=100 ms; >=40% of bare): "
            f"{'met' if targets else 'NOT met'}; "
            f"correctness: {'ok' if ok else 'FAILED'}",
            flush=True,
        )
        return 0 if ok else 1
    finally:
        for daphne in daphnes:
            if daphne.poll() is None:
                daphne.send_signal(signal.SIGTERM)
        for daphne in daphnes:
            try:
                daphne.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daphne.kill()
        if redis_client is not None:
            for key in redis_client.scan_iter(match=f"{env['REDIS_KEY_PREFIX']}:*"):
                redis_client.delete(key)
        connection.close()
        connection.creation.destroy_test_db(original_name, verbosity=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
