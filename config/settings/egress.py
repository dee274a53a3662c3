"""The egress policy: where outbound calls whose URL a tenant can influence may go (config/egress.py).

Tenant webhooks, tenant functions, a tenant's own LLM or embedding endpoint and inbound media all go
through that one guarded module. Endpoints the operator configures (OPENAI_BASE_URL,
EMBEDDING_BASE_URL, GRAPH_API_BASE_URL) are trusted and not guarded: they may well be internal.
"""

import os

from config.settings.base import env_bool, env_int

# Development and tests only: allow loopback / private / link-local destinations (and plain http).
EGRESS_ALLOW_PRIVATE_TARGETS = env_bool("EGRESS_ALLOW_PRIVATE_TARGETS", False)
# Networks (CIDR, comma-separated) that tenants may reach although they are private, e.g. an internal
# Ollama at 10.0.0.5/32 that the operator offers every tenant. Empty: none.
EGRESS_ALLOWED_NETWORKS = [n.strip() for n in os.environ.get("EGRESS_ALLOWED_NETWORKS", "").split(",") if n.strip()]
# The most an answer from a tenant-chosen endpoint may carry (LLM and embedding answers, function
# results); a larger one is cut off and fails.
EGRESS_MAX_RESPONSE_BYTES = env_int("EGRESS_MAX_RESPONSE_BYTES", 32 * 1024 * 1024)
# Hosts inbound media may be downloaded from (Meta's CDNs); ``*.`` matches any subdomain. The host
# of GRAPH_API_BASE_URL is always allowed too (WhatsApp media are fetched through it).
CHANNEL_MEDIA_HOSTS = [
    h.strip().lower()
    for h in os.environ.get(
        "CHANNEL_MEDIA_HOSTS",
        "*.fbcdn.net,*.fbsbx.com,*.facebook.com,*.whatsapp.net,*.cdninstagram.com",
    ).split(",")
    if h.strip()
]
