"""The embedded default when no LLM is configured: a grounded, extractive answerer.

It answers with the sentences of the retrieved passages that answer the question, never invents
text, makes no call to an LLM and costs nothing, which is what a tenant trying the platform without
an OpenAI key sees first. How a reply is built:

1. Every retrieved passage (best ``MAX_PASSAGES``) is cut into sentences; a heading line is context
   for the sentences under it, never an answer on its own.
2. Each sentence is scored against the question twice: by the embedder (the tenant's, e5 by
   default: the sentence with its heading, embedded in one batch per turn and cached per sentence)
   and by keyword statistics (the share of the question's idf mass it contains, words stemmed in the
   conversation's language). The two, mixed, rank the sentences; passages in the conversation's
   language are preferred when there are any.
3. The best sentence is the answer, with its neighbour when that carries it (the best sentence ends
   with ":" or the next one starts by referring back, "It ...", "Isso ..."), and the sentences that
   score nearly as well (``RUNNER_UP_SHARE``; of its passage, or one per other passage): the first of
   them whatever its length, since the scores cannot tell it from the best, the others within
   ``MAX_WORDS``. An answer is never padded with sentences that do not score: a short answer stays
   short.
4. Nothing relevant (no passage, or no sentence passing ``MIN_KEYWORD`` / ``MIN_SEMANTIC``):
   "I don't know", with the offer of a person when handoff is on.

The fixed phrases are the conversation's language (conversations.phrases); the sources are named once
each (title, page, section), in the text only where the channel has no list of its own.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from conversations import phrases
from conversations.llm.base import Completion, CompletionRequest, ContextPassage, Usage, sources_line
from conversations.textnorm import words

logger = logging.getLogger(__name__)

MAX_PASSAGES = 5
MAX_SENTENCES = 3
MAX_WORDS = 60  # the answer's length budget (the best sentence and its first runner-up may exceed it)
MAX_SENTENCE_CHARS = 500
# A sentence answers when it holds this share of the question's keyword (idf) mass, or when the
# embedder places it this high on its calibrated scale (0 = an unrelated pair, 1 = a clearly relevant one).
MIN_KEYWORD = 0.34
MIN_SEMANTIC = 0.45
SEMANTIC_WEIGHT = 0.3  # the mix of the two scores in the ranking (keyword: 1 - this)
NEIGHBOUR_SHARE = 0.0  # a next sentence referring back joins when it scores this share of the best
# A runner-up sentence (of the best's passage or, one per passage, of another) joins when it scores
# this share of the best: the ranking cannot tell them apart. The first one joins whatever its length.
RUNNER_UP_SHARE = 0.9
OTHER_LANGUAGE_FACTOR = 0.85  # a passage in another language than the conversation's, when some are in it
HEADING_MAX_WORDS = 12
RANK_SPREAD = True


def _wordlist(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _wordlist(
    """
    a an and are as at be by can could do does did for from has have how i if in into is it its me my of on or our
    please should tell that the their them there these they this to was we what when where which who whom whose why
    will with would you your yours about any some hi hello thanks thank much many get got
    le la les un une des du de et est en que qui quoi comment pour par sur avec dans au aux ce cette je vous nous il
    elle mon ma mes votre vos quel quelle quels quelles sont
    el los las y es como para por con del al lo una uno mi su sus se cual cuales cuanto cuanta cuantos hay tienen
    o os as um uma do da dos das em no na nos nas com e qual quais quanto quanta sao tem voces
    der die das und ist ein eine zu mit von wie was wo ich sie wer welche welcher gibt es ihr ihre
    """
)
# Words that open a sentence by referring to the one before ("It is closed on Sundays."): the one
# before is quoted with it. Compared folded (no accents, lower case).
REFERRING = _wordlist(
    """
    it its this that these those they their them he she his her such also however but so then there here
    isso isto esse essa estes estas eles elas ele ela tambem mas entao
    eso esto ese esa estos estas ellos ellas tambien pero
    cela ceci ce cet cette ces ils elles il elle aussi mais
    es dies diese dieser dieses sie er auch aber dort
    """
)
STEMMERS = {"en": "english", "pt": "portuguese", "es": "spanish", "fr": "french", "de": "german"}

ABBREVIATIONS = _wordlist("e.g i.e mr mrs ms dr st vs etc no nr p pp approx inc ltd jr sr co fig ca cf sra dra")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+(?=[\"'“‘(\[¿¡]?[A-Z0-9À-ÖØ-Þ])")


@dataclass
class Sentence:
    passage: int  # index in the passages
    index: int  # position in the passage
    text: str
    context: str  # the heading it sits under
    paragraph: int
    keyword: float = 0.0
    semantic: float = 0.0  # calibrated (0 unrelated .. 1 clearly relevant): the threshold's scale
    cosine: float = 0.0
    score: float = 0.0


@dataclass
class Selection:
    sentences: list[Sentence] = field(default_factory=list)
    passages: list[ContextPassage] = field(default_factory=list)


# --- sentences -----------------------------------------------------------------------------------------


def _is_heading(line: str, section: str) -> bool:
    stripped = line.strip().strip("#").strip()
    if not stripped or stripped[-1] in ".!?:;,)\"'”":
        return False
    tail = section.rsplit(" > ", 1)[-1].strip() if section else ""
    short = len(stripped.split()) <= HEADING_MAX_WORDS and not re.search(r"\d{2,}", stripped)
    return stripped == tail or short


def split_sentences(text: str) -> list[str]:
    """Sentences of one paragraph, not cut after an abbreviation ("e.g.") or an initial ("J. Smith")."""
    out: list[str] = []
    start = 0
    for match in SENTENCE_END.finditer(text):
        before = text[start : match.start()].rstrip(".!?\"'”’)]").split()
        last = before[-1].casefold() if before else ""
        if last in ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        out.append(text[start : match.start()].strip())
        start = match.end()
    out.append(text[start:].strip())
    return [s for s in out if re.search(r"\w", s)]


def passage_sentences(p_index: int, passage: ContextPassage) -> list[Sentence]:
    """A passage's sentences in order, each with the heading above it; heading lines are not sentences."""
    context = passage.section.rsplit(" > ", 1)[-1] if passage.section else ""
    out: list[Sentence] = []
    for paragraph_index, paragraph in enumerate(re.split(r"\n\s*\n", passage.content)):
        lines = [" ".join(line.split()) for line in paragraph.split("\n") if line.strip()]
        if not lines:
            continue
        if len(lines) == 1 and _is_heading(lines[0], passage.section) and len(lines[0]) < 120:
            context = lines[0].strip("# ")
            continue
        # A list (several short lines) keeps one sentence a line; prose lines are joined first.
        listed = all(len(line) < 120 for line in lines) and len(lines) > 1
        chunks = lines if listed else [" ".join(lines)]
        for chunk in chunks:
            for text in split_sentences(chunk):
                if len(text) > MAX_SENTENCE_CHARS:
                    text = text[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] + "…"
                out.append(Sentence(p_index, len(out), text, context, paragraph_index))
    return out


# --- scores ------------------------------------------------------------------------------------------------


@cache
def _stemmer(language: str) -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer(STEMMERS.get(language, "english"))


def terms(text: str, language: str) -> list[str]:
    """Content words, folded and stemmed (the conversation's language; English otherwise)."""
    kept = [w for w in words(text) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]
    return list(_stemmer(language).stemWords(kept))


def keyword_scores(query: str, sentences: list[Sentence], language: str) -> None:
    """Each sentence's share of the question's idf mass (idf over these sentences; a word of the
    heading above a sentence counts half)."""
    q_terms = set(terms(query, language))
    if not q_terms or not sentences:
        return
    own = [set(terms(s.text, language)) for s in sentences]
    contexts = [set(terms(s.context, language)) for s in sentences]
    n = len(sentences)
    idf = {t: math.log(1 + (n + 1) / (1 + sum(t in o for o in own))) for t in q_terms}
    mass = sum(idf.values())
    for sentence, mine, context in zip(sentences, own, contexts, strict=True):
        found = sum(idf[t] for t in q_terms & mine) + 0.5 * sum(idf[t] for t in (q_terms & context) - mine)
        sentence.keyword = found / mass


class _VectorCache:
    """Sentence vectors by (model, text); the oldest are dropped past ``size``."""

    def __init__(self, size: int = 20000):
        self.size = size
        self.items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.lock = threading.Lock()

    def vectors(self, embedder: Any, texts: list[str]) -> np.ndarray:
        model = str(getattr(embedder, "model_id", ""))
        with self.lock:
            found: dict[int, np.ndarray] = {
                i: v for i, t in enumerate(texts) if (v := self.items.get((model, t))) is not None
            }
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            fresh = np.asarray(embedder.embed_passages([texts[i] for i in missing]), dtype=np.float32)
            with self.lock:
                for i, vector in zip(missing, fresh, strict=True):
                    found[i] = vector
                    self.items[(model, texts[i])] = vector
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
        return np.vstack([found[i] for i in range(len(texts))])


VECTORS = _VectorCache()


def semantic_scores(query: str, sentences: list[Sentence], embedder: Any) -> bool:
    """Each sentence's cosine with the question on the embedder's calibrated scale (0 unrelated,
    1 clearly relevant). False when the embedder is not available (keywords alone then)."""
    if embedder is None or not sentences:
        return False
    try:
        query_vector = np.asarray(embedder.embed_query(query), dtype=np.float32)
        texts = [f"{s.context}: {s.text}" if s.context else s.text for s in sentences]
        matrix = VECTORS.vectors(embedder, texts)
    except Exception:  # the embedder is down: the keyword scores still answer
        logger.warning("offline answerer: sentence embedding failed, keywords only", exc_info=True)
        return False
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query_vector) or 1.0)
    cosines = matrix @ query_vector / np.where(norms == 0, 1.0, norms)
    low, high = getattr(embedder, "calibration", (0.0, 1.0))
    for sentence, cosine in zip(sentences, cosines, strict=True):
        sentence.cosine = float(cosine)
        sentence.semantic = float(min(max((cosine - low) / ((high - low) or 1.0), 0.0), 1.0))
    return True


# --- selection ---------------------------------------------------------------------------------------------


def _refers_back(text: str) -> bool:
    first = words(text[:40])
    return bool(first) and first[0] in REFERRING


def _passage_language(passage: ContextPassage) -> str | None:
    from conversations.language import detect

    return detect(passage.content[:600])


def select(query: str, passages: list[ContextPassage], *, language: str = "en", embedder: Any = None) -> Selection:
    """The sentences that answer ``query`` (in reading order per passage, best passage first) and
    the passages they come from; empty when nothing passes the thresholds."""
    passages = passages[:MAX_PASSAGES]
    by_passage = [passage_sentences(i, p) for i, p in enumerate(passages)]
    sentences = [s for group in by_passage for s in group]
    if not sentences:
        return Selection()
    lang = phrases.base_language(language)
    keyword_scores(query, sentences, lang)
    semantic = semantic_scores(query, sentences, embedder)
    weight = SEMANTIC_WEIGHT if semantic else 0.0
    languages = [_passage_language(p) for p in passages]
    prefer = lang in languages
    # Ranked on the cosines spread over this question's sentences (the calibrated scale saturates:
    # e5 puts many sentences of a relevant passage above its "clearly relevant" point).
    top, bottom = max(s.cosine for s in sentences), min(s.cosine for s in sentences)
    for s in sentences:
        spread = (s.cosine - bottom) / ((top - bottom) or 1.0) if RANK_SPREAD else s.semantic
        s.score = weight * spread + (1 - weight) * s.keyword
        s.score *= 1.0 - 0.02 * s.passage  # retrieval's order breaks near-ties
        if prefer and languages[s.passage] not in (None, lang):
            s.score *= OTHER_LANGUAGE_FACTOR
    ranked = sorted(sentences, key=lambda s: -s.score)
    best = ranked[0]
    if best.keyword < MIN_KEYWORD and (not semantic or best.semantic < MIN_SEMANTIC):
        return Selection()
    chosen = _with_neighbours(best, by_passage[best.passage])
    budget = MAX_WORDS - sum(_length(s) for s in chosen)
    used_passages = {best.passage}
    runner_up = True
    for s in ranked[1:]:
        if len(chosen) >= MAX_SENTENCES or s.score < RUNNER_UP_SHARE * best.score:
            break
        if s in chosen or any(s.text == c.text for c in chosen):  # a chunk's overlap repeats sentences
            continue
        if s.passage != best.passage and s.passage in used_passages:
            continue
        # The first runner-up this close joins whatever its length (the scores cannot tell it from
        # the best: quoting both is the answer); later ones within the budget.
        if _length(s) > budget and not runner_up:
            continue
        runner_up = False
        chosen.append(s)
        used_passages.add(s.passage)
        budget -= _length(s)
    order = list(dict.fromkeys(s.passage for s in sorted(chosen, key=lambda s: -s.score)))
    chosen.sort(key=lambda s: (order.index(s.passage), s.index))
    return Selection(chosen, [passages[i] for i in order])


def _length(sentence: Sentence) -> int:
    return len(sentence.text.split())


def _with_neighbours(best: Sentence, group: list[Sentence]) -> list[Sentence]:
    """The best sentence with the sentence before it when it refers back to it, and the one after it
    when it introduces it (ends with ":") or refers back to it."""
    chosen = [best]
    before = group[best.index - 1] if best.index > 0 else None
    after = group[best.index + 1] if best.index + 1 < len(group) else None
    if before is not None and before.paragraph == best.paragraph and _refers_back(best.text):
        chosen.insert(0, before)
    carries = after is not None and (
        best.text.endswith(":") or (_refers_back(after.text) and after.score >= NEIGHBOUR_SHARE * best.score)
    )
    if after is not None and after.paragraph == best.paragraph and carries:
        chosen.append(after)
    return chosen


# --- the answerer ----------------------------------------------------------------------------------------------


class OfflineAnswerer:
    name = "offline"
    model = "offline-extractive"
    supports_tools = False
    supports_streaming = False
    uses_embedder = True

    def complete(self, request: CompletionRequest) -> Completion:
        language = request.locale
        owner = phrases.owner(request.brand_name, language)
        selection = select(request.query, request.passages, language=language, embedder=request.embedder)
        if not selection.sentences:
            text = phrases.phrase("dont_know", language, owner=owner)
            if request.handoff_keyword:
                text += " " + phrases.phrase("offer_human", language, keyword=request.handoff_keyword)
            return Completion(text=text, usage=Usage(), model=self.model, finish_reason="stop")
        paragraphs: list[str] = []
        for passage_index in dict.fromkeys(s.passage for s in selection.sentences):
            paragraphs.append(" ".join(s.text for s in selection.sentences if s.passage == passage_index))
        parts = [phrases.phrase("offline_preamble", language, owner=owner), "\n\n".join(paragraphs)]
        if request.sources_in_text:
            parts.append(sources_line(selection.passages, language))
        text = "\n\n".join(parts) + "\n" + phrases.phrase("offline_footer", language)
        return Completion(
            text=text,
            usage=Usage(),
            model=self.model,
            finish_reason="stop",
            cited_markers=[p.marker for p in selection.passages],
        )

    def stream(self, request: CompletionRequest) -> _WholeStream:
        return _WholeStream(self.complete(request))


class _WholeStream:
    """A non-streaming completion seen through the stream protocol (one delta)."""

    def __init__(self, completion: Completion):
        self._completion = completion

    def start(self) -> None:
        return None

    @property
    def has_text(self) -> bool:
        return bool(self._completion.text)

    def deltas(self) -> Iterator[str]:
        yield self._completion.text

    def completion(self) -> Completion:
        return self._completion
