"""The rate limiter on the webhook path: is django-ratelimit measurably dearer than the platform's own?

tenants.ratelimit counts two ways: ``hit``, django-ratelimit on Django's Redis cache (per hit a SET
NX, then an EXISTS and an INCR: up to three round trips, through a Redis client Django builds per
call), and ``hit_pipelined``, the limiter the platform had before (one pipelined INCR + EXPIRE). Both
run here, in one process against the same Redis, on:
  1. a bare hit, sequentially (--hits of each);
  2. the webhook path where a limit runs: ``services.webhook_answer`` for an unsigned payload with an
     unknown phone number id, from one source already over its cap (every one dropped: the cost of a
     flood), with each way of counting behind ``channels_app.unrouted`` (--webhooks of each);
and prints what the client address costs (computed from the scope for every fast-path POST).
The figures decide which counts the unrouted webhook caps (docs/channels.md "Abuse limits").
Wall time and CPU time of this process per operation; the database (created and dropped here) is
only read once (unknown ids are cached by the route cache).

    python -m bench.ratelimit                              # 20,000 hits, 5,000 webhooks of each
    python -m bench.ratelimit --hits 2000 --webhooks 500   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from bench._knowledge_setup import setup_django
from bench.turn import signed_payload


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__.split("\n")[0])
    parser.add_argument("--hits", type=int, default=20000, help="bare limiter hits per limiter (default 20000)")
    parser.add_argument("--webhooks", type=int, default=5000, help="dropped webhooks per limiter (default 5000)")
    return parser.parse_args(argv)


def measure(n: int, fn: Callable[[int], object]) -> tuple[float, float]:
    """(wall µs, CPU µs) per call of ``fn(i)`` over ``n`` calls, after a warm-up."""
    for i in range(min(200, n)):
        fn(i)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prefix = f"benchrl{os.getpid()}"
    setup_django(prefix)

    from django.conf import settings
    from django.db import connection

    from channels_app import services
    from tenants import ratelimit

    db_name = f"bench_ratelimit_{os.getpid()}"
    connection.settings_dict["TEST"]["NAME"] = db_name
    original_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        print(f"rate limiter bench: {args.hits} hits, {args.webhooks} dropped webhooks per limiter", flush=True)
        old = measure(args.hits, lambda i: ratelimit.hit_pipelined(group="bench", key="bench", limit=10**9))
        new = measure(args.hits, lambda i: ratelimit.hit(group="bench", key="bench", limit=10**9))
        print(f"bare hit, hit_pipelined (INCR+EXPIRE):      {old[0]:7.1f} µs wall  {old[1]:7.1f} µs CPU")
        print(f"bare hit, django-ratelimit (SET NX/EXISTS/INCR): {new[0]:7.1f} µs wall  {new[1]:7.1f} µs CPU")

        settings.UNROUTED_WEBHOOKS_PER_ADDRESS_PER_MINUTE = 1
        settings.WEBHOOK_CHANNEL_CACHE_SECONDS = 3600.0
        body, _signature = signed_payload("5550009999", sender="1", text="hi", wamid="wamid.X")  # sent unsigned
        headers = {"content-type": "application/json"}

        def webhook(i: int) -> object:
            status, answer = services.webhook_answer(platform="whatsapp", body=body, headers=headers, source="x")
            assert (status == 200 and answer == {"status": "unrouted", "kept": False}) or i < 2, answer
            return answer

        with_old = measure(args.webhooks, webhook)
        shipped = ratelimit.hit_pipelined
        ratelimit.hit_pipelined = ratelimit.hit  # type: ignore[assignment]  # the same caps, counted by django-ratelimit
        try:
            with_new = measure(args.webhooks, webhook)
        finally:
            ratelimit.hit_pipelined = shipped  # type: ignore[assignment]
        print(f"dropped unrouted webhook, hit_pipelined:    {with_old[0]:7.1f} µs wall  {with_old[1]:7.1f} µs CPU")
        print(f"dropped unrouted webhook, django-ratelimit: {with_new[0]:7.1f} µs wall  {with_new[1]:7.1f} µs CPU")
        print(
            f"difference per dropped webhook: {with_new[0] - with_old[0]:+.1f} µs wall, "
            f"{with_new[1] - with_old[1]:+.1f} µs CPU ({(with_new[1] / with_old[1] - 1) * 100:+.0f}% CPU)"
        )

        scope = {"client": ("203.0.113.9", 40000), "headers": [(b"content-type", b"application/json")]}
        address = measure(args.hits, lambda i: ratelimit.scope_client_address(scope))
        print(f"client address from the scope (every fast-path POST): {address[0]:5.2f} µs wall")
    finally:
        connection.creation.destroy_test_db(original_name, verbosity=0)
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
