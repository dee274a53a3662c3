"""Which LLM answers for a tenant: ``provider_for_tenant`` reads ``tenant.config.llm``.

- ``offline``: the extractive grounded answerer (no network).
- ``default``: the deployment's OpenAI-compatible endpoint when ``OPENAI_API_KEY`` is set
  (``OPENAI_BASE_URL``, ``LLM_MODEL``), else the offline answerer.
- ``openai`` / ``openai_compatible``: the tenant's endpoint, its key read from the tenant secret named
  ``llm.apiKeySecret`` (an OpenAI-compatible server without auth, e.g. Ollama, needs none).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings

from conversations.llm.base import LLMError, LLMProvider
from conversations.llm.offline import OfflineAnswerer

if TYPE_CHECKING:
    from tenants.models import Tenant

_offline = OfflineAnswerer()
NO_KEY = "not-needed"  # what the openai client sends to endpoints that do not check keys


def provider_for_tenant(tenant: Tenant) -> LLMProvider:
    """The tenant's LLM. The deployment's key (OPENAI_API_KEY) goes only to the deployment's endpoint
    (OPENAI_BASE_URL, or OpenAI's when unset): a tenant that sets its own base URL brings its own key
    as a tenant secret, and its endpoint is reached through the egress guard."""
    from config.openai_clients import client_for
    from conversations.llm.openai_provider import OpenAIProvider

    cfg = tenant.config.llm
    if cfg.provider == "offline":
        return _offline
    if cfg.provider == "default":
        if not settings.OPENAI_API_KEY:
            return _offline
        client = client_for(api_key=settings.OPENAI_API_KEY, base_url=settings.OPENAI_BASE_URL or None, guarded=False)
        return OpenAIProvider(client=client, model=cfg.model or settings.LLM_MODEL, name="default")
    own_endpoint = bool(cfg.base_url) and cfg.base_url != settings.OPENAI_BASE_URL
    base_url = cfg.base_url or settings.OPENAI_BASE_URL
    if cfg.provider == "openai_compatible" and not base_url:
        raise LLMError(
            "llm.provider is openai_compatible but no llm.baseUrl is set", retryable=False, code="llm_config"
        )
    model = cfg.model or settings.LLM_MODEL
    if cfg.api_key_secret:
        from tenants.secrets import SecretError, with_tenant_secret

        try:
            # The client keeps the key for its requests; it is cached by the key's digest only.
            client = with_tenant_secret(
                tenant=tenant,
                name=cfg.api_key_secret,
                fn=lambda key: client_for(api_key=key, base_url=base_url or None, guarded=own_endpoint),
            )
        except SecretError as exc:
            raise LLMError(f"LLM API key unavailable: {exc}", retryable=False, code="llm_config") from None
    elif cfg.provider == "openai" and settings.OPENAI_API_KEY and not own_endpoint:
        client = client_for(api_key=settings.OPENAI_API_KEY, base_url=base_url or None, guarded=False)
    elif cfg.provider == "openai":
        raise LLMError(
            "llm.provider is openai with its own llm.baseUrl but no llm.apiKeySecret"
            if own_endpoint
            else "llm.provider is openai but neither llm.apiKeySecret nor OPENAI_API_KEY is set",
            retryable=False,
            code="llm_config",
        )
    else:
        client = client_for(api_key=NO_KEY, base_url=base_url, guarded=own_endpoint)
    return OpenAIProvider(client=client, model=model, name=cfg.provider)


def estimate_cost(*, model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """USD from the per-model price table (per 1M tokens); dated snapshots use their base model's price."""
    prices = settings.LLM_PRICES
    entry = prices.get(model)
    if entry is None:
        matches = [name for name in prices if model.startswith(name + "-")]
        entry = prices[max(matches, key=len)] if matches else None
    if entry is None:
        return Decimal("0")
    cost = (Decimal(str(entry[0])) * prompt_tokens + Decimal(str(entry[1])) * completion_tokens) / Decimal(1_000_000)
    return cost.quantize(Decimal("0.000001"))


__all__ = ["LLMError", "LLMProvider", "estimate_cost", "provider_for_tenant"]
