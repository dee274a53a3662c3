"""A query's own "unrelated" level: its similarity to text about nothing a business writes of.

e5 compresses cosines into ~0.7-0.9 and how high they sit depends on the query: "hello" or "How much
does it cost?" is ~0.8 from every short chunk, "What is the capital of Mongolia?" ~0.7. One absolute
cut cannot serve both, so for the embedders measured here retrieval calibrates per query: the mean of
the query's ``TOP`` best cosines with ``TEXTS`` (sentences on unrelated topics, embedded once per
process and model) is where "unrelated" starts for that query, and a chunk's relevance is its margin
above it on the embedder's ``MARGINS`` scale (docs/knowledge.md, "minSimilarity").
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from knowledge.embedders import LOCAL_MODEL_ID, EmbeddingError

logger = logging.getLogger(__name__)

TOP = 5
# (margin of an unrelated chunk, margin of a clearly relevant chunk) per model, measured by
# bench/relevance_calibration.py (docs/knowledge.md, "minSimilarity"): on e5-small, unrelated chunks
# sit at margin -0.007 (median) / 0.041 (99th percentile), relevant ones at 0.081 (10th) / 0.127
# (median); relevance 0.7 (the default minSimilarity) falls at margin 0.063.
MARGINS: dict[str, tuple[float, float]] = {LOCAL_MODEL_ID: (0.0, 0.09)}

TEXTS = [
    "The recipe calls for two cups of flour, a pinch of salt and three eggs beaten until fluffy.",
    "Heavy rain is expected across the northern valleys tonight, with temperatures falling below freezing.",
    "The striker scored twice in the second half to secure the championship for her club.",
    "Jupiter's largest moon, Ganymede, is bigger than the planet Mercury.",
    "Prune the roses in late winter, cutting just above an outward-facing bud.",
    "The orchestra performed the symphony without a conductor for the first time.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The treaty ended a war that had lasted for more than three decades.",
    "Knitting a scarf takes patience, a pair of needles and about two hundred grams of wool.",
    "The volcano last erupted in 1783, covering the surrounding farms with ash.",
    "Elephants communicate over long distances using low-frequency rumbles.",
    "The novel follows a lighthouse keeper who writes letters to a stranger.",
    "To solve the equation, subtract seven from both sides and divide by three.",
    "The marathon route passes the old harbour, the cathedral and the central park.",
    "Honeybees perform a waggle dance to tell the hive where flowers are.",
    "The painter mixed ochre and umber to capture the autumn light on the hills.",
    "Glaciers carve U-shaped valleys as they slowly move downhill.",
    "The chess champion sacrificed her queen to win in twelve moves.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria.",
    "The ancient library held scrolls on astronomy, medicine and poetry.",
    "A tennis match is won by the first player to take three sets.",
    "The migration of wildebeest crosses the river each summer.",
    "The poem describes a winter morning and the silence of falling snow.",
    "Quantum particles can be entangled so that measuring one affects the other.",
    "The castle was built on a hill overlooking the river in the twelfth century.",
    "Jazz musicians often improvise long solos over a repeating chord progression.",
    "The coral reef shelters thousands of species of fish and invertebrates.",
    "Mountain climbers acclimatise at base camp before attempting the summit.",
    "The philosopher argued that happiness depends on virtue and friendship.",
    "Tomatoes grow best in full sun with regular watering and rich soil.",
    "The film won awards for its photography and its haunting music.",
    "Penguins huddle together to survive the Antarctic winter.",
    "The cyclist climbed the mountain pass in under forty minutes.",
    "Earthquakes occur where tectonic plates grind against each other.",
    "The children built a sandcastle with towers, a moat and a drawbridge.",
    "Ancient sailors navigated by the stars and the direction of the waves.",
    "The violin is carved from spruce and maple and varnished by hand.",
    "Owls hunt at night, locating mice by the faint sounds they make.",
    "The museum displays dinosaur skeletons and fossils of early birds.",
    "A good night's sleep improves memory and concentration.",
]

_lock = threading.Lock()
_vectors: dict[str, np.ndarray] = {}


def calibration_for(embedder: Any, query_vector: np.ndarray) -> tuple[float, float] | None:
    """The (unrelated, clearly relevant) cosines for this query on this embedder, or None when the
    embedder has no margin scale (its static ``calibration`` applies) or the background failed."""
    margins = MARGINS.get(str(getattr(embedder, "model_id", "")))
    if margins is None:
        return None
    model = str(embedder.model_id)
    with _lock:
        background = _vectors.get(model)
    if background is None:
        try:
            background = np.asarray(embedder.embed_passages(TEXTS), dtype=np.float32)
        except EmbeddingError:
            logger.warning("background texts not embedded; static calibration used", extra={"model": model})
            return None
        with _lock:
            _vectors[model] = background
    cosines = np.sort(background @ np.asarray(query_vector, dtype=np.float32))[::-1]
    level = float(cosines[:TOP].mean())
    return level + margins[0], level + margins[1]
