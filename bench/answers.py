"""Offline answers end to end on SQuAD 2.0: how often a reply contains a gold answer, and how long it is.

Each paragraph of ``../shared/data/squad2/dev-2-articles.json`` is uploaded as a document through the
API (multipart POST /api/tenants/<id>/documents/), indexed by a real Celery worker (e5 embeddings),
and every question is asked through a real turn: a web chat message recorded as the socket consumer
records it, the worker runs the pipeline (retrieval, the offline answerer, reply, finish) and the
reply is read from the transcript. Printed:

- answerable questions: the share of replies containing a gold answer (SQuAD normalisation: lower
  case, no punctuation, no articles, single spaces) and the median length in words, of the answer
  (the reply without its fixed phrases and sources line) and of the whole reply, beside two
  references computed from the same retrieval in the same run: quoting the whole top-ranked chunk,
  and the single best sentence of the top three chunks by word overlap with the question;
- unanswerable questions: how often the reply says it doesn't know.

With ``--show-misses`` every answerable question whose answer misses the gold span is printed with
why (the classes below, counted in any case): "I don't know"; the gold answer in no retrieved
passage; in no single sentence (it spans two); in a sentence next to a quoted one; in another
sentence of a quoted chunk; in a chunk the answer does not quote (the top chunk or a lower one).

Target (issue 17): containment >= the whole-top-chunk reference's, at a median answer of <= 40 words.

    python -m bench.answers                          # all 418 questions
    python -m bench.answers --limit 60               # a quick look
    python -m bench.answers --save /tmp/answers.json # keep each question's passages and reply
    python -m bench.answers --replay /tmp/answers.json --show-misses
        # the offline answerer again on the saved passages (no upload, no turns, no database): to study
        # a change of the answerer; the figures that count are those of a full run through real turns
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import string
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench._knowledge_setup import setup, start_worker

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "squad2" / "dev-2-articles.json"
WORD = re.compile(r"\w+")
SENTENCE = re.compile(r"(?<=[.!?])\s+")
OVERLAP_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "by",
        "with",
        "from",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "did",
        "do",
        "does",
        "that",
        "this",
        "these",
        "those",
        "it",
        "its",
        "as",
        "into",
        "than",
        "then",
    ]
)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def contains(reply: str, answers: list[str]) -> bool:
    padded = f" {normalize(reply)} "
    return any(f" {normalize(a)} " in padded for a in answers if normalize(a))


def n_words(text: str) -> int:
    return len(WORD.findall(text))


def best_overlap_sentence(question: str, chunks: list[str]) -> str:
    """The reference extractor: the sentence of the top three chunks sharing most words with the question."""
    q = {w.lower() for w in WORD.findall(question)} - OVERLAP_STOPWORDS
    best, score = "", -1
    for chunk in chunks[:3]:
        for sentence in SENTENCE.split(chunk):
            overlap = len(q & ({w.lower() for w in WORD.findall(sentence)} - OVERLAP_STOPWORDS))
            if overlap > score:
                best, score = sentence, overlap
    return best


def answer_part(reply: str, language: str = "en") -> str:
    """The reply without the answerer's fixed phrases and its sources line."""
    from conversations import phrases

    fixed = {phrases.phrase("offline_footer", language)}
    lines = [line for line in reply.split("\n") if line.strip()]
    preamble_start = phrases.PHRASES["offline_preamble"][language].split("{")[0]
    return "\n".join(
        line
        for line in lines
        if line not in fixed
        and not line.startswith(preamble_start)
        and not line.startswith(phrases.phrase("sources", language) + ":")
    )


MISS_CLASSES = {
    "dont_know": 'answered "I don\'t know"',
    "not_retrieved": "gold answer in no retrieved passage",
    "spans_sentences": "gold answer spans two sentences (in no single one)",
    "neighbour": "gold in the sentence next to a quoted one",
    "same_chunk": "gold in another sentence of a quoted chunk",
    "top_chunk_unquoted": "gold in the top chunk, which the answer does not quote",
    "lower_chunk_unquoted": "gold only in a lower chunk the answer does not quote",
}


def classify_miss(row: dict[str, Any]) -> str:
    """Why an answerable question's answer misses every gold answer (one of MISS_CLASSES)."""
    from conversations.llm.base import ContextPassage
    from conversations.llm.offline import passage_sentences

    if says_dont_know(row["reply"]):
        return "dont_know"
    passages = [ContextPassage(**p) for p in row["passages"]]
    if not any(contains(p.content, row["answers"]) for p in passages):
        return "not_retrieved"
    sentences = [s for i, p in enumerate(passages) for s in passage_sentences(i, p)]
    quoted_text = normalize(row["answer"])
    quoted = [s for s in sentences if normalize(s.text) and normalize(s.text) in quoted_text]
    golden = [s for s in sentences if contains(s.text, row["answers"])]
    if not golden:
        return "spans_sentences"
    quoted_passages = {s.passage for s in quoted}
    if any(abs(g.index - q.index) == 1 and g.passage == q.passage for g in golden for q in quoted):
        return "neighbour"
    if any(g.passage in quoted_passages for g in golden):
        return "same_chunk"
    return "top_chunk_unquoted" if any(g.passage == 0 for g in golden) else "lower_chunk_unquoted"


def says_dont_know(reply: str) -> bool:
    from conversations import phrases

    return reply.startswith(phrases.PHRASES["dont_know"]["en"].split("{")[0])


def upload(api: Any, tenant: Any, data: list[dict[str, Any]]) -> None:
    from knowledge.models import Document

    for article in data:
        for index, paragraph in enumerate(article["paragraphs"]):
            title = f"{article['title'].replace('_', ' ')} ({index + 1})"
            if Document.objects.filter(tenant_id=tenant.pk, title=title).exists():
                continue
            from django.core.files.uploadedfile import SimpleUploadedFile

            file = SimpleUploadedFile(f"p{index}.txt", paragraph["context"].encode(), content_type="text/plain")
            response = api.post(f"/api/tenants/{tenant.pk}/documents/", {"file": file, "title": title})
            assert response.status_code in (200, 201), response.content


def wait_indexed(tenant: Any, timeout: float = 1800) -> None:
    from knowledge.models import Document

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = Counter(Document.objects.filter(tenant_id=tenant.pk).values_list("status", flat=True))
        print(f"  documents: {dict(counts)}", flush=True)
        if set(counts) <= {"indexed", "failed"}:
            return
        time.sleep(5)
    raise SystemExit("indexing did not finish in time")


def ask(channel: Any, question: str, timeout: float = 120) -> tuple[str, str]:
    """One real turn: the visitor's message recorded as the web chat consumer records it, answered
    by the worker; the reply's text from the transcript, and the conversation's language."""
    from django.db import transaction

    from channels_app.adapters.base import NormalizedMessage
    from channels_app.inbound import record_inbound
    from conversations.models import Message

    visitor = f"v_{uuid.uuid4().hex[:16]}"
    message = NormalizedMessage(
        platform="webchat", channel_external_id=channel.external_id, message_id=f"c_{uuid.uuid4().hex}",
        sender_id=visitor, timestamp=time.time(), type="text", text=question,
    )  # fmt: skip
    with transaction.atomic():
        record_inbound(channel=channel, messages=[message])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = (
            Message.objects.filter(
                tenant_id=channel.tenant_id, conversation__contact__external_id=visitor, sender="assistant"
            )
            .exclude(status="queued")
            .values_list("content", "conversation__language")
            .first()
        )
        if reply is not None:
            return str(reply[0]), str(reply[1] or "en")
        time.sleep(0.05)
    raise SystemExit(f"no reply to {question!r} in {timeout:.0f} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="ask only the first N questions (0: all)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--show", type=int, default=0, help="print N sample replies")
    parser.add_argument("--show-misses", action="store_true", help="print every missed answerable question, and why")
    parser.add_argument("--save", default="", help="write each question's passages and reply to this JSON file")
    parser.add_argument("--replay", default="", help="run the offline answerer again on a --save file's passages")
    args = parser.parse_args(argv)
    if args.replay:
        rows = replay(json.loads(Path(args.replay).read_text()))
        report(rows, args.show, args.show_misses)
        return 0

    import os

    os.environ["OPENAI_API_KEY"] = ""  # the offline answerer
    os.environ.setdefault("TURN_DEBOUNCE_SECONDS", "0")
    setup("bench_answers")
    from rest_framework.test import APIClient

    from channels_app.models import Channel
    from conversations.pipeline.retrieval import search_passages
    from tenants import services
    from tenants.models import Tenant

    data = json.loads(Path(args.data).read_text())["data"]
    tenant = Tenant.objects.filter(slug="squad-bench").first() or services.tenant_create(
        name="SQuAD bench", slug="squad-bench", settings={"brandName": "SQuAD bench"}
    )
    channel = Channel.objects.filter(tenant=tenant, type=Channel.Type.WEBCHAT).first() or Channel.objects.create(
        tenant=tenant, type=Channel.Type.WEBCHAT, name="bench", external_id=f"wk_{uuid.uuid4().hex}",
        config={"allowed_origins": ["https://bench.example"]},
    )  # fmt: skip
    api = APIClient()
    api.credentials(HTTP_X_API_KEY=services.api_key_create(tenant=tenant, name="bench").raw_key)

    questions = [
        (qa["question"], [a["text"] for a in qa["answers"]], bool(qa.get("is_impossible")))
        for article in data
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]
    if args.limit:
        questions = questions[: args.limit]
    with start_worker(queues=("indexing", "default"), concurrency=2):
        started = time.monotonic()
        upload(api, tenant, data)
        wait_indexed(tenant)
        print(f"uploaded and indexed in {time.monotonic() - started:.0f} s", flush=True)
        rows: list[dict[str, Any]] = []
        started = time.monotonic()
        for n, (question, answers, impossible) in enumerate(questions, 1):
            reply, language = ask(channel, question)
            # The passages the turn's retrieval stage gave the answerer (same search, same settings).
            passages = [dataclasses.asdict(p) for p in search_passages(tenant=tenant, query=question)]
            chunks = [p["content"] for p in passages]
            rows.append(
                {
                    "question": question, "answers": answers, "impossible": impossible, "reply": reply,
                    "language": language, "answer": answer_part(reply), "top_chunk": chunks[0] if chunks else "",
                    "overlap": best_overlap_sentence(question, chunks), "passages": passages,
                }
            )  # fmt: skip
            if n % 50 == 0:
                print(f"  {n}/{len(questions)} questions ({time.monotonic() - started:.0f} s)", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(rows, ensure_ascii=False))
    report(rows, args.show, args.show_misses)
    return 0


def replay(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the offline answerer's reply computed again from their saved passages, in-process
    (the local e5 embedder, as the bench tenant has): the answerer alone, no retrieval, no turn."""
    from conversations.llm.base import CompletionRequest, ContextPassage
    from conversations.llm.offline import OfflineAnswerer
    from knowledge.embedders import LocalE5Embedder

    answerer, embedder = OfflineAnswerer(), LocalE5Embedder()
    out = []
    for row in rows:
        request = CompletionRequest(
            messages=[], query=row["question"], passages=[ContextPassage(**p) for p in row["passages"]],
            brand_name="SQuAD bench", locale=row.get("language", "en"), embedder=embedder, sources_in_text=False,
        )  # fmt: skip
        reply = answerer.complete(request).text
        out.append(row | {"reply": reply, "answer": answer_part(reply)})
    return out


def report(rows: list[dict[str, Any]], show: int, show_misses: bool = False) -> None:
    answerable = [r for r in rows if not r["impossible"]]
    impossible = [r for r in rows if r["impossible"]]

    def line(name: str, key: str) -> str:
        hits = sum(contains(r[key], r["answers"]) for r in answerable)
        median = statistics.median(n_words(r[key]) for r in answerable) if answerable else 0
        return f"  {name:<44} {hits / max(len(answerable), 1):6.1%}  {median:6.0f}"

    print(f"\nanswerable questions: {len(answerable)}   (containment of a gold answer, median words)")
    print(line("offline answerer: answer", "answer"))
    print(line("offline answerer: whole reply", "reply"))
    print(line("reference: whole top-ranked chunk", "top_chunk"))
    print(line("reference: best-overlap sentence of top 3", "overlap"))
    answered_dk = sum(says_dont_know(r["reply"]) for r in answerable)
    print(f'  answerable questions answered "I don\'t know": {answered_dk}/{len(answerable)}')
    if impossible:
        dk = sum(says_dont_know(r["reply"]) for r in impossible)
        print(f"unanswerable questions: {len(impossible)}   reply says it doesn't know: {dk / len(impossible):.1%}")
    misses = [r for r in answerable if not contains(r["answer"], r["answers"]) and "passages" in r]
    if misses:
        classes = Counter(classify_miss(r) for r in misses)
        print(f"answerable questions missed: {len(misses)}, why:")
        for key, label in MISS_CLASSES.items():
            print(f"  {classes[key]:4d}  {label}")
    for r in answerable[:show]:
        print(f"\nQ: {r['question']}  gold: {r['answers'][0]!r}\n{r['reply']}")
    if show_misses:
        for r in misses:
            print(f"\n[{classify_miss(r)}] Q: {r['question']}  gold: {r['answers']!r}\nA: {r['answer']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
