"""End-to-end turns: signed WhatsApp webhook in -> real Celery worker runs the pipeline (retrieval over
a 10,000-chunk knowledge base, LLM, reply) -> reply received at a local Graph API server.

The LLM is a local OpenAI-compatible server answering instantly, so what is measured is the
platform's own overhead: webhook view, queue, worker, retrieval, prompt building, the real openai
client, the real Graph client, the database writes and events. Reported:
  - turns/s (closed loop: each simulated user waits for the reply before writing again),
  - p50/p95 end-to-end latency (webhook POST -> reply at the Graph server) minus the LLM server time,
  - the per-stage medians the pipeline records (Message.timings),
  - SQL queries per turn (CaptureQueriesContext over turns run in this process, worker stopped), of a
    returning contact (the measured load's case) and of a new contact's first turn.

The knowledge base is built once through the real ingestion path (upload, parse, chunk, embed, BM25
postings) in a kept database (``bench_turn_<embedder>``) and reused by later runs; each run vacuums
that database before measuring (as autovacuum would have, in service, after such a build).
``--embedder instant`` (default) embeds with a hashed bag-of-words served by the same local server
through the real OpenAI-compatible embedder; ``--embedder local`` uses the e5-small model (slow to
build 10,000 chunks once; adds the real query-embedding cost to every turn).
TURN_DEBOUNCE_SECONDS is 0 here (the default 1 s burst wait is a product choice, not overhead);
``--debounce 1 --users 48`` measures how many contacts the workers serve with it (the wait holds no
thread: the task schedules itself again).

Targets (2-core machine): >= 45 turns/s, p95 overhead <= 250 ms, <= 15 SQL queries per turn.

    python -m bench.turn                                   # full scale: 10,000 chunks, 600 turns
    python -m bench.turn --chunks 500 --turns 60           # quick validation
    python -m bench.turn --graph-ms 100 --llm-ms 800       # Meta's round trip on every Graph API call, a real LLM's time
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from bench._cpu import CpuMeter
from bench._http import send_json

ROOT = Path(__file__).resolve().parent.parent
APP_SECRET = "bench-turn-app-secret"
DIMENSIONS = 384
WORDS = re.compile(r"\w+")
TOPICS = [
    "shipping", "returns", "warranty", "payment", "invoices", "opening hours", "store locations", "gift cards",
    "repairs", "subscriptions", "delivery times", "refunds", "account security", "loyalty points", "sizes",
]  # fmt: skip


# --- local servers -------------------------------------------------------------------------------------


class Servers:
    def __init__(self) -> None:
        self.replies: dict[str, threading.Event] = {}
        self.reply_times: dict[str, float] = {}
        self.lock = threading.Lock()
        self.llm_calls = 0
        self.llm_seconds = 0.0
        self.graph_delay = 0.0  # seconds before each Graph API answer (--graph-ms)
        self.llm_delay = 0.0  # seconds before each chat completion's answer (--llm-ms)

    def expect(self, recipient: str) -> threading.Event:
        event = threading.Event()
        with self.lock:
            self.replies[recipient] = event
        return event

    def got_reply(self, recipient: str) -> None:
        with self.lock:
            self.reply_times[recipient] = time.perf_counter()
            event = self.replies.get(recipient)
        if event is not None:
            event.set()


def hashed_vector(text: str) -> list[float]:
    vector = np.zeros(DIMENSIONS, dtype=np.float32)
    for word in WORDS.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        vector[int.from_bytes(digest, "big") % DIMENSIONS] += 1.0
    norm = float(np.linalg.norm(vector)) or 1.0
    return (vector / norm).tolist()


def handler(servers: Servers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes: with Nagle on, the body of a kept-alive connection
        # waits for the client's delayed ACK (~40 ms), which Meta's and OpenAI's servers never add.
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, body: dict[str, Any]) -> None:
            send_json(self, body)

        def do_POST(self) -> None:
            started = time.perf_counter()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path.endswith("/chat/completions"):
                if servers.llm_delay:
                    time.sleep(servers.llm_delay)
                answer = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "gpt-4o-mini"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Thanks for asking: see our policy [1]."},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 900, "completion_tokens": 12, "total_tokens": 912},
                }
                self._json(answer)
                with servers.lock:
                    servers.llm_calls += 1
                    servers.llm_seconds += time.perf_counter() - started
            elif self.path.endswith("/embeddings"):
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                self._json(
                    {
                        "object": "list",
                        "model": body.get("model"),
                        "data": [
                            {"object": "embedding", "index": i, "embedding": hashed_vector(t)}
                            for i, t in enumerate(texts)
                        ],
                        "usage": {"prompt_tokens": 0, "total_tokens": 0},
                    }
                )
            elif self.path.endswith("/messages"):  # Graph API
                if servers.graph_delay:
                    time.sleep(servers.graph_delay)
                if body.get("type") == "text":
                    servers.got_reply(body.get("to", ""))
                    self._json({"messaging_product": "whatsapp", "messages": [{"id": f"wamid.b{time.time_ns()}"}]})
                else:
                    self._json({"success": True})
            else:
                self._json({})

    return Handler


def start_server(servers: Servers) -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(servers))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


# --- set-up -----------------------------------------------------------------------------------------------


def document_text(doc: int, chunks: int) -> str:
    parts = []
    for n in range(chunks):
        topic = TOPICS[(doc * chunks + n) % len(TOPICS)]
        parts.append(
            f"# {topic.title()} rule {doc}-{n}\n\n"
            f"Policy {doc}-{n} about {topic}: customers in region {n % 40} can ask about {topic} by message. "
            f"Item {doc * 1000 + n} follows the standard {topic} terms, reviewed every {n % 12 + 1} months.\n"
        )
    return "\n".join(parts)


def build_knowledge(tenant: Any, target_chunks: int, per_document: int = 100) -> int:
    from django.core.files.base import ContentFile

    from knowledge import indexing, services
    from knowledge.models import Chunk

    have = Chunk.objects.filter(tenant_id=tenant.pk).count()
    doc = 0
    started = time.monotonic()
    while have < target_chunks:
        count = min(per_document, max(1, target_chunks - have))
        document = services.document_upload(
            tenant=tenant,
            file=ContentFile(document_text(doc + have, count).encode(), name=f"policies-{have}-{doc}.md"),
            title=f"Policies {have // per_document}",
        )
        indexing.index_document(document_id=document.pk, force=True)
        have = Chunk.objects.filter(tenant_id=tenant.pk).count()
        doc += 1
        rate = have / max(0.001, time.monotonic() - started)
        print(f"  knowledge base: {have}/{target_chunks} chunks ({rate:.0f} chunks/s)", flush=True)
    return have


def signed_payload(phone_number_id: str, sender: str, text: str, wamid: str) -> tuple[bytes, str]:
    from tests.payloads import whatsapp_payload

    body = json.dumps(
        whatsapp_payload(phone_number_id=phone_number_id, sender=sender, text=text, wamid=wamid, name="Bench")
    ).encode()
    return body, "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


# --- run ------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=600, help="measured turns")
    parser.add_argument("--users", type=int, default=12, help="concurrent simulated users (closed loop)")
    parser.add_argument("--worker-concurrency", type=int, default=8, help="threads per worker (`make run`: 8)")
    parser.add_argument("--worker-pool", default="threads", help="as the turns worker of `make run` (threads)")
    parser.add_argument(
        "--worker-processes", type=int, default=2, help="turns worker processes (`make run`: one per core, at most 2)"
    )
    parser.add_argument("--embedder", choices=["instant", "local"], default="instant")
    parser.add_argument("--debounce", type=float, default=0.0, help="TURN_DEBOUNCE_SECONDS (default here 0)")
    parser.add_argument("--query-turns", type=int, default=20, help="turns run in-process to count SQL queries")
    parser.add_argument(
        "--graph-ms",
        type=float,
        default=0.0,
        help="the local Graph API answers each call after this many ms (Meta's round trip; default 0: at once)",
    )
    parser.add_argument(
        "--llm-ms",
        type=float,
        default=0.0,
        help="the local LLM answers after this many ms (subtracted from the overhead like its own time)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the in-process turns and print the top")
    parser.add_argument("--profile-sort", default="cumulative", help="pstats sort key (cumulative, tottime)")
    parser.add_argument("--profile-out", default="", help="also write the raw profile here (pstats format)")
    parser.add_argument(
        "--show-queries",
        action="store_true",
        help="print the SQL of the costliest in-process turns (a new contact's and a returning one's)",
    )
    args = parser.parse_args(argv)

    servers = Servers()
    servers.graph_delay = args.graph_ms / 1000
    servers.llm_delay = args.llm_ms / 1000
    url = start_server(servers)
    os.environ.update(
        {
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": f"{url}/v1",
            "GRAPH_API_BASE_URL": url,
            "TURN_DEBOUNCE_SECONDS": str(args.debounce),
            "KNOWLEDGE_CHUNK_TOKENS": "96",
            "KNOWLEDGE_CHUNK_OVERLAP_TOKENS": "0",
            "LOG_LEVEL": "WARNING",
        }
    )
    if args.embedder == "instant":
        os.environ.update(
            {
                "EMBEDDING_PROVIDER": "openai_compatible",
                "EMBEDDING_BASE_URL": f"{url}/v1",
                "EMBEDDING_MODEL": "bench-hash",
                "EMBEDDING_DIMENSIONS": str(DIMENSIONS),
                "EMBEDDING_API_KEY": "bench",
            }
        )
    sys.path.insert(0, str(ROOT))
    from bench import _knowledge_setup

    connection = _knowledge_setup.setup(f"bench_turn_{args.embedder}")
    from django.conf import settings
    from django.db import transaction
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from channels_app.models import Channel
    from channels_app.secrets import channel_secret_set
    from conversations.models import Conversation, Message
    from tenants import services as tenant_services
    from tenants.models import Tenant

    tenant = Tenant.objects.filter(slug=f"bench-turn-{args.embedder}").first() or tenant_services.tenant_create(
        name="Bench turn", slug=f"bench-turn-{args.embedder}"
    )
    print(f"knowledge base ({args.embedder} embedder): building/reusing {args.chunks} chunks", flush=True)
    chunks = build_knowledge(tenant, args.chunks)
    # A fresh channel and no old conversations each run (secrets are sealed with this run's key).
    Conversation.objects.filter(tenant=tenant).delete()
    Channel.objects.filter(tenant=tenant).delete()
    phone_number_id = f"99{time.time_ns() % 10**12}"
    channel = Channel.objects.create(
        tenant=tenant, type="whatsapp", name="Bench", external_id=phone_number_id,
        config={"phone_number_id": phone_number_id},
    )  # fmt: skip
    channel_secret_set(channel=channel, values={"app_secret": APP_SECRET, "access_token": "EAAbench"})
    # What autovacuum does within minutes in service: a knowledge base just built (its index-only
    # scans need the visibility map) and the rows this cleanup deleted would otherwise be vacuumed
    # during the measurement, and the first runs after a build cost up to twice the database CPU.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE)")

    db = settings.DATABASES["default"]
    worker_env = dict(os.environ)
    worker_env["DATABASE_URL"] = f"postgresql://{db['USER']}@/{db['NAME']}?host={db['HOST']}" + (
        f"&port={db['PORT']}" if db.get("PORT") else ""
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-P", args.worker_pool, "-c",
             str(args.worker_concurrency), "-n", f"benchturn{os.getpid()}.{k}@%h", "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=worker_env,
        )
        for k in range(args.worker_processes)
    ]  # fmt: skip
    client_local = threading.local()
    counter = {"n": 0}
    counter_lock = threading.Lock()

    def one_turn(sender: str) -> float | None:
        client = getattr(client_local, "client", None)
        if client is None:
            client = client_local.client = Client()
        with counter_lock:
            counter["n"] += 1
            n = counter["n"]
        topic = TOPICS[n % len(TOPICS)]
        body, signature = signed_payload(
            phone_number_id,
            sender,
            f"What are the {topic} terms in region {n % 40}?",
            f"wamid.bench{n}.{time.time_ns()}",
        )
        done = servers.expect(sender)
        started = time.perf_counter()
        response = client.post(
            "/webhooks/whatsapp", data=body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=signature
        )
        if response.status_code != 200:
            print(f"  webhook answered {response.status_code}: {response.content[:200]!r}", flush=True)
            return None
        if not done.wait(30):
            print(f"  no reply for {sender} within 30 s", flush=True)
            return None
        return servers.reply_times[sender] - started

    try:
        print("warming up the worker (first turns load models and connections)", flush=True)
        for i in range(4):
            one_turn(f"1555000{i:04d}")
        # Then as many contacts at once as the measured load, twice: each worker thread that will serve a
        # measured turn has opened its database and HTTP connections (a thread's first turn pays them).
        warm = [
            threading.Thread(target=lambda i=i: [one_turn(f"1555100{i:04d}") for _ in range(2)])
            for i in range(args.users)
        ]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
        latencies: list[float] = []
        failures = 0
        per_user = max(1, args.turns // args.users)
        llm_calls_before, llm_seconds_before = servers.llm_calls, servers.llm_seconds

        def user(index: int) -> None:
            nonlocal failures
            for _ in range(per_user):
                latency = one_turn(f"1666{index:07d}")
                if latency is None:
                    failures += 1
                else:
                    latencies.append(latency)

        threads = [threading.Thread(target=user, args=(i,)) for i in range(args.users)]
        # The bench process holds the webhook client and the local LLM / Graph / embedding servers.
        meter = CpuMeter(
            {"worker": [w.pid for w in workers], "bench+servers": [os.getpid()]}, postgres_database=db["NAME"]
        )
        meter.start()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        meter.stop()
        llm_calls = servers.llm_calls - llm_calls_before
        llm_mean = (servers.llm_seconds - llm_seconds_before) / max(1, llm_calls)
        overhead = [latency - llm_mean for latency in latencies]
        time.sleep(0.5)
        timings = [
            t
            for t in Message.objects.filter(tenant=tenant, sender="assistant", status="sent").values_list(
                "timings", flat=True
            )
        ]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()

    # SQL queries per turn, in this process (the worker is stopped, so nothing else takes the turns).
    from channels_app.adapters.base import NormalizedMessage
    from channels_app.inbound import record_inbound
    from conversations import pipeline

    # Each in-process contact writes twice: its first turn also creates the contact and conversation,
    # its second is the case of the measured load (12 users, each writing again and again).
    query_counts: dict[str, list[int]] = {"first": [], "returning": []}
    shown: dict[str, list[dict[str, str]]] = {}
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.thread_time)  # CPU time of this thread, not wall
    in_process_cpu: dict[str, list[float]] = {"first": [], "returning": []}
    settings.TURN_DEBOUNCE_SECONDS = 0  # the counted turns answer at once (no task scheduled for later)
    for i in range(args.query_turns):
        case = "returning" if i % 2 else "first"
        message = NormalizedMessage(
            platform="whatsapp", channel_external_id=phone_number_id, message_id=f"wamid.q{i}.{time.time_ns()}",
            sender_id=f"1777{i // 2:07d}", timestamp=time.time(), type="text", text=f"What are the {TOPICS[i % 15]} terms?",
        )  # fmt: skip
        with transaction.atomic():
            (inbound_id,) = record_inbound(channel=channel, messages=[message])
        with CaptureQueriesContext(connection) as captured:
            # The first turns import modules and build clients: profiled from the fifth on.
            if profiler is not None and i >= 4:
                profiler.enable()
            cpu_started = time.thread_time()
            pipeline.process_inbound(inbound_event_id=inbound_id)
            in_process_cpu[case].append(time.thread_time() - cpu_started)
            if profiler is not None and i >= 4:
                profiler.disable()
        query_counts[case].append(len(captured.captured_queries))
        if len(captured.captured_queries) >= len(shown.get(case, [])):
            shown[case] = captured.captured_queries
    for case, queries in shown.items() if args.show_queries else ():
        print(f"SQL of the costliest in-process turn (the last of those), {case}:")
        for number, query in enumerate(queries, start=1):
            print(f"  {number:2d} {query['time']}s {' '.join(query['sql'].split())[:160]}")
    if profiler is not None:
        import pstats

        pstats.Stats(profiler).sort_stats(args.profile_sort).print_stats(45)
        if args.profile_out:
            profiler.dump_stats(args.profile_out)

    turns_done = len(latencies)
    print("\n== bench.turn ==")
    print(
        f"knowledge base: {chunks} chunks ({args.embedder} embedder); workers: {args.worker_processes} x {args.worker_pool} x {args.worker_concurrency}"
    )
    print(f"turns: {turns_done} ok, {failures} failed, {args.users} concurrent users, wall {wall:.1f} s")
    print(f"throughput: {turns_done / wall:.1f} turns/s   (target >= 45)")
    print(meter.report(per=turns_done, unit="turn"))
    print(
        f"platform overhead per turn (webhook POST -> reply at Graph, minus {llm_mean * 1000:.2f} ms LLM): "
        f"p50 {percentile(overhead, 0.5) * 1000:.0f} ms, p95 {percentile(overhead, 0.95) * 1000:.0f} ms   "
        "(target p95 <= 250)"
    )
    print(
        "  distribution: "
        + ", ".join(f"p{int(q * 100)} {percentile(overhead, q) * 1000:.0f}" for q in (0.75, 0.9, 0.99))
        + f", max {max(overhead) * 1000:.0f} ms"
    )
    for key in (
        "intake_ms",
        "typing_ms",
        "typing_wait_ms",
        "retrieval_ms",
        "llm_ms",
        "llm_wait_ms",
        "send_ms",
        "total_ms",
        "overhead_ms",
        "waited_ms",
    ):
        values = [t[key] for t in timings if key in t]
        if values:
            print(
                f"  stage {key:<13} median {statistics.median(values):7.1f} ms   p95 {percentile(values, 0.95):7.1f} ms"
            )
    for case, label in (("returning", "a returning contact's turn"), ("first", "a new contact's first turn")):
        counts = query_counts[case]
        if counts:
            print(
                f"SQL queries per turn, {label} (in-process, {len(counts)} turns): "
                f"median {statistics.median(counts):.0f}, min {min(counts)}, max {max(counts)}   (target <= 15); "
                f"CPU of the turn in this process, median {statistics.median(in_process_cpu[case]) * 1000:.1f} ms"
            )
    _cleanup_redis(settings)
    return 0 if failures == 0 else 1


def _cleanup_redis(settings: Any) -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}:*"):
        client.delete(key)
    client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
