"""Settings for the conversations area (from the environment; see docs/conversations.md).

The deployment's default LLM: ``OPENAI_API_KEY`` (+ ``OPENAI_BASE_URL`` for any OpenAI-compatible
endpoint, + ``LLM_MODEL``). With no key, tenants on the ``default`` provider get the offline
grounded answerer, which needs no network at all.
"""

import json
import os

from config.settings.base import CELERY_BEAT_SCHEDULE, CELERY_TASK_ROUTES, env_float, env_int

OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "")
LLM_MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")
# Per request to the provider; the openai client retries 429/5xx/timeouts LLM_MAX_RETRIES times
# with exponential backoff before the turn falls back.
LLM_TIMEOUT_SECONDS = env_float("LLM_TIMEOUT_SECONDS", 30.0)
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 2)

# USD per 1M tokens: (input, output). Models not listed cost 0 (self-hosted, unknown).
# LLM_PRICES='{"my-model": [0.5, 1.5]}' adds or overrides entries.
LLM_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}
LLM_PRICES.update({k: (float(v[0]), float(v[1])) for k, v in json.loads(os.environ.get("LLM_PRICES") or "{}").items()})

# Messages typed in quick succession are answered once: a turn waits until the contact has been
# quiet this long (measured from the newest pending message's arrival).
TURN_DEBOUNCE_SECONDS = env_float("TURN_DEBOUNCE_SECONDS", 1.0)
# Bounds of the function-calling loop: LLM rounds with tool calls, and wall time of the whole turn.
MAX_TOOL_ROUNDS = env_int("MAX_TOOL_ROUNDS", 4)
TURN_MAX_SECONDS = env_float("TURN_MAX_SECONDS", 60.0)
# Conversation history sent to the LLM: the newest messages that fit this many (estimated) tokens.
LLM_HISTORY_TOKEN_BUDGET = env_int("LLM_HISTORY_TOKEN_BUDGET", 3000)
LLM_HISTORY_MAX_MESSAGES = env_int("LLM_HISTORY_MAX_MESSAGES", 40)
# Tenant functions: how much of a response body is kept/sent back to the LLM.
FUNCTION_MAX_RESPONSE_CHARS = env_int("FUNCTION_MAX_RESPONSE_CHARS", 4000)

CELERY_TASK_ROUTES.update(
    {
        "conversations.handle_inbound_message": {"queue": "default"},
        "conversations.retry_turn": {"queue": "default"},
    }
)

# Analytics (conversations.analytics): closed days are rolled up by this task every hour (a day is
# closed 10 minutes after it ends), for the last ANALYTICS_ROLLUP_DAYS, so no page request pays.
ANALYTICS_ROLLUP_DAYS = env_int("ANALYTICS_ROLLUP_DAYS", 90)
CELERY_BEAT_SCHEDULE["conversations-roll-up-analytics"] = {
    "task": "conversations.roll_up_analytics",
    "schedule": 3600.0,
}

# Conversation intelligence (conversations.intelligence): sentiment and tags, every minute.
CELERY_BEAT_SCHEDULE["conversations-analyse"] = {
    "task": "conversations.analyse_conversations",
    "schedule": 60.0,
}
