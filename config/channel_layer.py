"""Channel-layer sends from synchronous code: a turn in a Celery worker, an agent's action in a view.

``async_to_sync(layer.group_send)`` outside an event loop (a Celery worker) makes a new event loop for
every send, and with channels_redis a new Redis connection with it: 15-60 ms per push in a worker under
load, and ~10 % of a turn worker's CPU in bench.turn when every message event reached the live inbox
that way. One long-lived loop per process, in a daemon thread, keeps the layer's connection pool: a send
costs one Redis round trip. Recreated after a fork (prefork workers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any

from channels.layers import get_channel_layer


class _LayerLoop:
    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid() or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="channel-layer", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


def group_send(group: str, message: dict[str, Any], *, timeout: float) -> bool:
    """Send ``message`` to a channel-layer group and wait until the layer took it. False: no channel
    layer is configured. Raises TimeoutError (the send is cancelled) or the layer's own error (Redis
    down: ``redis.RedisError`` / ``OSError``)."""
    layer = get_channel_layer()
    if layer is None:
        return False
    future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), _LayerLoop.loop())
    try:
        future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise
    return True
