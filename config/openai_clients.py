"""Pooled ``openai`` clients, shared by the chat provider (conversations) and the embedders (knowledge).

One client per endpoint and key keeps its HTTP connection pool across turns and batches; the
cache is keyed by a digest of the key so its keys never hold the secret. An endpoint a tenant chose
(``guarded=True``) gets the egress guard's HTTP client (config.egress): checked addresses, no
environment proxies, no redirects, a capped answer.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import openai
from django.conf import settings

from config import egress

_clients: OrderedDict[tuple[str, str, bool], openai.OpenAI] = OrderedDict()
_clients_lock = threading.Lock()
MAX_CACHED_CLIENTS = 64


def client_for(*, api_key: str, base_url: str | None, guarded: bool) -> openai.OpenAI:
    """One client (and its HTTP connection pool) per endpoint and key, reused across turns.

    ``guarded``: the endpoint is a tenant's choice, reached only through the egress guard. Keyed by a
    digest of the key so the cache's keys never hold it."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    cache_key = (base_url or "", digest, guarded)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is not None:
            _clients.move_to_end(cache_key)
            return client
        client = openai.OpenAI(
            api_key=api_key,
            base_url=base_url or None,
            timeout=settings.LLM_TIMEOUT_SECONDS,
            # Chat retries are the provider's own (LLM_MAX_RETRIES, within the turn's deadline);
            # embedders set theirs per call.
            max_retries=0,
            http_client=egress.openai_http_client(timeout=settings.LLM_TIMEOUT_SECONDS) if guarded else None,
        )
        _clients[cache_key] = client
        while len(_clients) > MAX_CACHED_CLIENTS:
            _clients.popitem(last=False)
        return client


def reset_clients() -> None:
    with _clients_lock:
        _clients.clear()
