"""Conversation intelligence, offline: each conversation's sentiment (negative / neutral / positive)
and tags from the tenant's own categories (``categories`` in the tenant settings: a name and a
description each), computed with the tenant's embedder from what the user wrote.

Both are nearest-meaning decisions in the embedder's space, so they work in any language the embedder
knows (multilingual-e5-small: ~100):

- sentiment: the user's recent messages against short anchor sentences of each class (five per class,
  in English, Portuguese, Spanish, French and German); the class with the highest mean cosine wins.
- tags: the same text against "name: description" of each category. A category is a tag when it is the
  clear best (cosine >= TAG_STRONG, or >= TAG_MIN with a lead of TAG_MARGIN over the next category),
  and so is any other category within TAG_TIE of the best. Greetings and off-topic messages get none.

The thresholds were set on multilingual-e5-small, whose cosines are compressed into ~0.75-0.90 (see
docs/conversations.md for the labelled examples they were checked on); for another embedder the
ranking still holds and the thresholds may want adjusting.

With an LLM (the tenant's assistant answers with a real one: ``conversations.llm.provider_for_tenant``
is not the offline answerer), each analysis is one chat completion instead: a short system prompt lists
the categories with their descriptions and asks for ``{"sentiment": ..., "tags": [...]}`` (temperature
0, at most LLM_MAX_TOKENS, LLM_SECONDS for the whole call and its retries; a tenant's own endpoint goes
through the egress guard as the turn's calls do). The answer is validated strictly: the sentiment must
be one of the three, tags only exact category names (others dropped). Any failure (unreachable,
timeout, an error status, a refused endpoint, an answer that is not that JSON) falls back to the
embedder for that conversation, logged and counted by reason
(``metachat_conversation_analysis_llm_fallbacks_total``); a tenant whose LLM is down (LLM_DOWN: timed
out, unreachable, throttling, refused by the egress guard, misconfigured) is analysed offline for the
rest of that run. The call's tokens and cost are added to the
conversation's totals (not to a message's, so the per-day usage analytics, read from messages, do not
include them).

``analyse_pending`` runs every minute (beat): conversations whose user wrote since they were last
analysed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from django.db.models import F, Q
from django.utils import timezone

from config import metrics
from conversations.llm.base import Completion, CompletionRequest, LLMError

logger = logging.getLogger(__name__)

SENTIMENTS = ("negative", "neutral", "positive")
ANCHORS: dict[str, list[str]] = {
    "negative": [
        "This is terrible, I am very disappointed and angry.",
        "Your service is awful, nothing works.",
        "Isto é inaceitável, estou muito insatisfeito.",
        "Es un desastre, nadie me ayuda y estoy harto.",
        "C'est scandaleux, je suis très mécontent. Das ist eine Frechheit.",
    ],
    "neutral": [
        "What are your opening hours?",
        "How much is shipping to Spain?",
        "Qual é o prazo de entrega?",
        "¿Puedo cambiar la dirección de envío?",
        "Où est ma commande ? Wie kann ich bezahlen?",
    ],
    "positive": [
        "Thank you so much, that was very helpful!",
        "Great service, I love it.",
        "Perfeito, muito obrigado pela ajuda!",
        "¡Excelente, todo funcionó muy bien!",
        "Merci beaucoup, c'est parfait. Vielen Dank, super!",
    ],
}
TAG_STRONG = 0.845
TAG_MIN = 0.825
TAG_MARGIN = 0.025
TAG_TIE = 0.01
# What is read of a conversation: its latest user messages, at most this much text.
RECENT_MESSAGES = 6
MAX_CHARS = 1500

# Anchor and category vectors, per embedder (its model and endpoint: a tenant's own endpoint never
# shares vectors with another tenant's or the deployment's) and per text; bounded.
_vector_cache: dict[tuple[str, str, str], np.ndarray] = {}
_cache_lock = threading.Lock()
VECTOR_CACHE_MAX = 5000
# One tenant's conversations per run at most (a large or broken tenant never starves the others).
PER_TENANT_PER_RUN = 50
# The LLM analysis: its whole call (retries included) well under the minute between runs, and a short
# answer (a sentiment and a few tag names; an answer cut at the limit is invalid JSON: offline instead).
LLM_SECONDS = 10.0
LLM_MAX_TOKENS = 150
# Failures that say the endpoint is down: the tenant's other conversations of the run skip the LLM.
LLM_DOWN = ("llm_timeout", "llm_unreachable", "llm_rate_limited", "llm_egress_refused", "llm_config", "llm_auth")


@dataclass(frozen=True)
class Insight:
    sentiment: str
    tags: list[str]


def _embed(embedder: Any, texts: list[str]) -> np.ndarray:
    # Symmetric comparisons (text against text): e5's "query:" side for both.
    return np.stack([np.asarray(embedder.embed_query(text), dtype=np.float32) for text in texts])


def _embedder_key(embedder: Any) -> tuple[str, str]:
    inner = getattr(embedder, "inner", embedder)  # CachedEmbedder wraps the real one
    return (
        str(getattr(embedder, "model_id", type(embedder).__name__)),
        str(getattr(inner, "base_url", "") or getattr(embedder, "base_url", "") or ""),
    )


def _cached(embedder: Any, texts: list[str]) -> np.ndarray:
    """The vectors of fixed texts (anchors, category descriptions), embedded once per embedder."""
    model, endpoint = _embedder_key(embedder)
    keys = [(model, endpoint, text) for text in texts]
    with _cache_lock:
        found = {key: _vector_cache[key] for key in keys if key in _vector_cache}
    missing = [key for key in keys if key not in found]
    if missing:
        vectors = _embed(embedder, [key[2] for key in missing])
        found.update(zip(missing, vectors, strict=True))
        with _cache_lock:
            if len(_vector_cache) + len(missing) > VECTOR_CACHE_MAX:
                _vector_cache.clear()
            _vector_cache.update(zip(missing, vectors, strict=True))
    return np.stack([found[key] for key in keys])


def _anchors(embedder: Any) -> dict[str, np.ndarray]:
    return {label: _cached(embedder, texts) for label, texts in ANCHORS.items()}


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


def sentiment_of(vector: np.ndarray, embedder: Any) -> str:
    scores = {label: float((_anchors(embedder)[label] @ vector).mean()) for label in SENTIMENTS}
    return max(scores, key=lambda label: scores[label])


def tags_of(vector: np.ndarray, categories: list[dict[str, str]], embedder: Any) -> list[str]:
    if not categories:
        return []
    names = [c["name"] for c in categories]
    described = [f"{c['name']}: {c.get('description') or c['name']}" for c in categories]
    scores = _cached(embedder, described) @ vector
    order = np.argsort(-scores)
    best = float(scores[order[0]])
    runner_up = float(scores[order[1]]) if len(order) > 1 else -1.0
    if not (best >= TAG_STRONG or (best >= TAG_MIN and best - runner_up >= TAG_MARGIN)):
        return []
    return [names[i] for i in order if float(scores[i]) >= best - TAG_TIE]


def _joined(texts: list[str]) -> str:
    return " ".join(t.strip() for t in texts if t and t.strip())[-MAX_CHARS:]


def analyse_texts(texts: list[str], categories: list[dict[str, str]], embedder: Any) -> Insight | None:
    """The insight of what a user wrote (oldest first); None when there is nothing to read."""
    text = _joined(texts)
    if not text:
        return None
    vector = _unit(_embed(embedder, [text])[0])
    return Insight(sentiment=sentiment_of(vector, embedder), tags=tags_of(vector, categories, embedder))


LLM_PROMPT = (
    "You classify a customer's messages to a business. Reply with JSON only, no other text: "
    '{{"sentiment": "negative" | "neutral" | "positive", "tags": [category names]}}. '
    "sentiment: how the customer feels. tags: the names, exactly as written below, of the categories the "
    "messages are about; [] when none fits (greetings, small talk). Categories:\n{categories}"
)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_llm_answer(answer: str, categories: list[dict[str, str]]) -> Insight:
    """The LLM's JSON answer as an Insight, or LLMError (code ``llm_invalid_answer``): the sentiment one of
    SENTIMENTS, the tags a list whose exact category names are kept (others dropped, each once)."""
    text = answer.strip()
    fenced = _FENCE.match(text)
    try:
        data = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        raise LLMError("the LLM's analysis is not JSON", retryable=False, code="llm_invalid_answer") from None
    if not isinstance(data, dict) or data.get("sentiment") not in SENTIMENTS:
        raise LLMError("the LLM's analysis has no valid sentiment", retryable=False, code="llm_invalid_answer")
    tags = data.get("tags", [])
    if not isinstance(tags, list):
        raise LLMError("the LLM's analysis has no list of tags", retryable=False, code="llm_invalid_answer")
    names = {c["name"] for c in categories}
    kept = list(dict.fromkeys(t for t in tags if isinstance(t, str) and t in names))
    return Insight(sentiment=str(data["sentiment"]), tags=kept)


def llm_analysis(provider: Any, text: str, categories: list[dict[str, str]]) -> tuple[Insight, Completion]:
    """One chat completion of ``provider`` (an OpenAIProvider) for the user's text; LLMError on any failure."""
    listed = "\n".join(f"- {c['name']}: {c.get('description') or c['name']}" for c in categories) or "(none)"
    request = CompletionRequest(
        messages=[
            {"role": "system", "content": LLM_PROMPT.format(categories=listed)},
            {"role": "user", "content": text},
        ],
        query=text,
        temperature=0.0,
        max_tokens=LLM_MAX_TOKENS,
        deadline=time.monotonic() + LLM_SECONDS,  # each attempt: LLM_TIMEOUT_SECONDS at most
    )
    completion = provider.complete(request)
    return parse_llm_answer(completion.text, categories), completion


def conversation_analyse(*, conversation: Any, use_llm: bool = True) -> Insight | None:
    """Analyse one conversation's latest user messages and store its sentiment and tags (with the tenant's
    LLM when it has one and ``use_llm``, else or when it fails with the embedder)."""
    return _analyse(conversation, use_llm=use_llm)[0]


def _analyse(conversation: Any, *, use_llm: bool) -> tuple[Insight | None, str]:
    """The stored insight, and the code of the LLM's failure ("" when none)."""
    from conversations.llm import estimate_cost, provider_for_tenant
    from conversations.models import Conversation, Message
    from knowledge.embedders import get_embedder
    from tenants.settings_schema import parse_tenant_settings

    tenant = conversation.tenant
    texts = list(
        Message.objects.for_tenant(tenant)
        .filter(conversation=conversation, direction=Message.Direction.INBOUND, sender=Message.Sender.USER)
        .exclude(content="")
        .order_by("-id")
        .values_list("content", flat=True)[:RECENT_MESSAGES]
    )[::-1]
    categories = [c.model_dump() for c in parse_tenant_settings(tenant.settings).categories]
    text = _joined(texts)
    insight: Insight | None = None
    completion: Completion | None = None
    failure = ""
    method = "offline"
    if text and use_llm:
        try:
            provider = provider_for_tenant(tenant)
            if provider.name != "offline":
                insight, completion = llm_analysis(provider, text, categories)
                method = "llm"
        except LLMError as exc:
            failure = exc.code
            logger.warning(
                "conversation analysis: the LLM failed, analysed with the embedder",
                extra={"conversation_id": str(conversation.pk), "reason": exc.code, "error": str(exc)[:200]},
            )
            metrics.incr("conversation_analysis_llm_fallbacks_total", reason=exc.code)
    if insight is None and text:
        insight = analyse_texts(texts, categories, get_embedder(tenant=tenant))
    sentiment = insight.sentiment if insight else ""
    tags = insight.tags if insight else []
    analysed_at = timezone.now()
    update: dict[str, Any] = {"sentiment": sentiment, "tags": tags, "analysed_at": analysed_at}
    if completion is not None:  # the call's tokens and cost, on the conversation as a turn's are
        update["prompt_tokens"] = F("prompt_tokens") + completion.usage.prompt_tokens
        update["completion_tokens"] = F("completion_tokens") + completion.usage.completion_tokens
        update["cost_usd"] = F("cost_usd") + estimate_cost(
            model=completion.model,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
        )
    Conversation.objects.for_tenant(tenant).filter(pk=conversation.pk).update(**update)
    if insight is not None:
        metrics.incr("conversation_analyses_total", method=method)
        logger.info(
            "conversation analysed",
            extra={"conversation_id": str(conversation.pk), "method": method, "sentiment": sentiment},
        )
    # The tenant's open inbox pages show the new sentiment and tags without a reload.
    from conversations.inbox import live

    live.push_analysis(
        tenant_id=tenant.pk, conversation_id=conversation.pk, sentiment=sentiment, tags=tags, analysed_at=analysed_at
    )
    return insight, failure


def analyse_pending(*, limit: int = 200, settle_seconds: float = 30.0) -> int:
    """Analyse the conversations whose user wrote since their last analysis (and not in the last
    ``settle_seconds``, so a burst of messages is read once), at most PER_TENANT_PER_RUN of one tenant
    per run so a large tenant never starves the others; returns how many were analysed. A failure (a
    tenant's broken embedder) is logged and the conversation waits for its user's next message, so
    it is not retried every minute at the head of the queue."""
    from django.db.models import Window
    from django.db.models.functions import RowNumber

    from conversations.models import Conversation

    now = timezone.now()
    due = (
        Conversation.objects.filter(last_activity_at__lte=now - timedelta(seconds=settle_seconds))
        .filter(Q(analysed_at__isnull=True) | Q(analysed_at__lt=F("last_activity_at")))
        .annotate(place=Window(RowNumber(), partition_by=[F("tenant_id")], order_by=F("last_activity_at").asc()))
        .filter(place__lte=PER_TENANT_PER_RUN)
        .select_related("tenant")
        .order_by("last_activity_at")[:limit]
    )
    done = 0
    llm_down: set[Any] = set()  # tenants whose LLM is down this run: their next conversations go offline
    for conversation in due:
        try:
            _, failure = _analyse(conversation, use_llm=conversation.tenant_id not in llm_down)
            if failure in LLM_DOWN:
                llm_down.add(conversation.tenant_id)
            done += 1
        except Exception:
            logger.exception("conversation analysis failed", extra={"conversation_id": str(conversation.pk)})
            Conversation.objects.filter(pk=conversation.pk, tenant_id=conversation.tenant_id).update(analysed_at=now)
    return done
