"""Celery's Redis transport, with one Redis client object per channel instead of one per operation.

kombu's Redis channel builds a new ``redis.Redis`` object (its response-callback tables: ~90-115 µs of
CPU, measured here) for every publish, every message received (the unacked index) and every ack: three
or more per turn in a worker, one per publish in a web process. A redis-py client holds no state of its
own between commands (each command borrows a connection from the pool), so one object per channel and
pool serves them all. ``CELERY_BROKER_TRANSPORT`` names this class for ``redis://`` broker URLs
(config.settings); other schemes keep kombu's own transport.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        # A new pool after a connection error (kombu's _disconnect_pools) gets a new client.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
