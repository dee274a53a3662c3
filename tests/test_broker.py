"""The Celery broker (Redis): tasks go through it with one Redis client object per channel, not one
per operation (config.broker)."""

from __future__ import annotations

from typing import Any

import pytest
import redis


def test_publishing_and_consuming_reuse_one_redis_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from config.celery import app

    made: list[Any] = []
    original = redis.Redis.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    queue = "test-broker-reuse"
    with app.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "config.broker"
        simple = conn.SimpleQueue(queue)
        try:
            simple.clear()
            monkeypatch.setattr(redis.Redis, "__init__", counting_init)
            for n in range(20):
                simple.put({"n": n})
            received = []
            for _ in range(20):
                message = simple.get(timeout=5)
                received.append(message.payload["n"])
                message.ack()
        finally:
            monkeypatch.undo()
            simple.clear()
            simple.close()

    assert received == list(range(20))  # nothing lost, in order
    assert len(made) <= 2  # kombu's own channel: 80 (four per message)
