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

Target (issue 17): containment >= the whole-top-chunk reference's, at a median answer of <= 40 words.

    python -m bench.answers                 # all 418 questions
    python -m bench.answers --limit 60      # a quick look
"""

from __future__ import annotations

import argparse
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


def ask(channel: Any, question: str, timeout: float = 120) -> str:
    """One real turn: the visitor's message recorded as the web chat consumer records it, answered
    by the worker; the reply's text from the transcript."""
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
            .values_list("content", flat=True)
            .first()
        )
        if reply is not None:
            return str(reply)
        time.sleep(0.05)
    raise SystemExit(f"no reply to {question!r} in {timeout:.0f} s")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="ask only the first N questions (0: all)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--show", type=int, default=0, help="print N sample replies")
    args = parser.parse_args(argv)

    import os

    os.environ["OPENAI_API_KEY"] = ""  # the offline answerer
    os.environ.setdefault("TURN_DEBOUNCE_SECONDS", "0")
    setup("bench_answers")
    from rest_framework.test import APIClient

    from channels_app.models import Channel
    from knowledge.retrieval import search
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
            reply = ask(channel, question)
            chunks = [c.content for c in search(tenant=tenant, query=question)]
            rows.append(
                {
                    "question": question, "answers": answers, "impossible": impossible, "reply": reply,
                    "answer": answer_part(reply), "top_chunk": chunks[0] if chunks else "",
                    "overlap": best_overlap_sentence(question, chunks),
                }
            )  # fmt: skip
            if n % 50 == 0:
                print(f"  {n}/{len(questions)} questions ({time.monotonic() - started:.0f} s)", flush=True)
    report(rows, args.show)
    return 0


def report(rows: list[dict[str, Any]], show: int) -> None:
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
    for r in answerable[:show]:
        print(f"\nQ: {r['question']}  gold: {r['answers'][0]!r}\n{r['reply']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
