"""Pushes to the live inbox from synchronous code (a turn in a Celery worker thread) reach the tenant's
group through one long-lived channel-layer loop: not a new event loop and Redis connection per push."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from conversations.inbox import live


def test_pushes_from_a_worker_thread_arrive_over_one_redis_connection(_fresh_channel_layer: Any) -> None:
    tenant_id = uuid.uuid4()
    layer = get_channel_layer()
    agent = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(live.tenant_group(tenant_id), agent)
    server = redis.Redis.from_url(settings.REDIS_URL)
    before = server.info("stats")["total_connections_received"]

    def worker_thread() -> None:  # no event loop here, as in a Celery worker's thread pool
        for n in range(20):
            live.push(tenant_id, {"type": "message", "n": n})

    thread = threading.Thread(target=worker_thread)
    thread.start()
    thread.join()

    opened = server.info("stats")["total_connections_received"] - before
    assert opened <= 2, f"{opened} Redis connections for 20 pushes"
    received = [async_to_sync(layer.receive)(agent)["event"]["n"] for _ in range(20)]
    assert received == list(range(20))
