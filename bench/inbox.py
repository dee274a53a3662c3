"""The agent inbox under load: 50 agents' sockets open on one tenant while signed WhatsApp webhooks arrive
at 20 messages/s across 500 conversations; and the list of a tenant with 10,000 conversations.

    python -m bench.inbox                              # the target run: 50 agents, 20 msg/s for 30 s
    python -m bench.inbox --agents 10 --duration 10    # quick validation

Measured:
  - live: for every message, the time from the webhook's 200 to its ``message`` frame on each agent's
    socket (``/ws/inbox/``): p50/p95 over every (message, agent) pair and over each message's slowest
    agent. The path: daphne stores the inbound event and answers 200, a real Celery worker runs the
    turn (the conversations are with an agent, so the bot stays silent: intake stores the message and
    emits ``message.received``), the event bus pushes it to the tenant's channel-layer group after the
    commit, daphne sends it on every agent socket.
  - list: ``GET /inbox/api/conversations/`` (first page, waiting first, unread counts) for a tenant with
    10,000 conversations (20,000 messages), as an agent: p50/p95 of sequential requests, for All, Mine
    and the waiting filter.

Isolation: a throwaway database (created, migrated and dropped here) and a Redis key prefix of its own.
The clients run in this process on the same cores as the servers, so the figures are conservative.
Targets (issue 15): live p95 <= 1 s; list p95 <= 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._throwaway_db import server_env, throwaway_database
from bench.webchat import free_port, percentile, setup_django, start_daphne, start_turns_worker, wait_for_port
from config.serve import stop_processes

APP_SECRET = "bench-inbox-app-secret"
PHONE_NUMBER_ID = "109000000000001"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.inbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50, help="agent sockets (default 50)")
    parser.add_argument("--rate", type=float, default=20.0, help="inbound messages per second (default 20)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--live-conversations", type=int, default=500, help="conversations written to (500)")
    parser.add_argument("--conversations", type=int, default=10_000, help="the tenant's conversations (10,000)")
    parser.add_argument("--list-requests", type=int, default=200, help="list requests per filter (200)")
    parser.add_argument("--worker-processes", type=int, default=2, help="turns worker processes (`make run`: 2)")
    parser.add_argument("--workers", type=int, default=8, help="threads per worker process (`make run`: 8)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database")
    return parser.parse_args(argv)


# --- data -----------------------------------------------------------------------------------------------


def sender_of(index: int) -> str:
    return f"1555{index:07d}"


def seed(args: argparse.Namespace) -> dict[str, Any]:
    """A tenant, its agents, a WhatsApp channel, and ``--conversations`` conversations with two messages
    each; the first ``--live-conversations`` are with an agent (the load's), the rest in every state."""
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from channels_app.models import Channel
    from channels_app.secrets import channel_secret_set
    from conversations.models import Contact, Conversation, Message
    from tenants.models import Membership, Tenant

    tenant = Tenant.objects.create(name="Inbox bench", slug="inbox-bench")
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"agent{i}", first_name=f"Agent {i}", is_staff=True) for i in range(args.agents)]
    )
    Membership.objects.bulk_create([Membership(tenant=tenant, user=u, role="agent") for u in users])
    channel = Channel.objects.create(
        tenant=tenant, type="whatsapp", name="WhatsApp", external_id=PHONE_NUMBER_ID,
        config={"phone_number_id": PHONE_NUMBER_ID},
    )  # fmt: skip
    channel_secret_set(
        channel=channel, values={"app_secret": APP_SECRET, "access_token": "EAAbench", "verify_token": "v"}
    )
    now = timezone.now()
    contacts = Contact.objects.bulk_create(
        [Contact(tenant=tenant, channel=channel, external_id=sender_of(i), profile_name=f"Customer {i}")
         for i in range(args.conversations)],
        batch_size=2000,
    )  # fmt: skip
    states = ["handoff_requested", "bot", "resolved", "agent"]
    conversations = []
    for i, contact in enumerate(contacts):
        state = "agent" if i < args.live_conversations else states[i % len(states)]
        conversations.append(
            Conversation(
                tenant=tenant, channel=channel, contact=contact, state=state,
                assignee=users[i % len(users)] if state == "agent" else None,
                waiting_since=now - timedelta(minutes=i % 90) if state == "handoff_requested" else None,
            )
        )  # fmt: skip
    Conversation.objects.bulk_create(conversations, batch_size=2000)
    Conversation.objects.filter(tenant=tenant).update(last_activity_at=now - timedelta(days=1))
    messages = []
    for i, conversation in enumerate(conversations):
        messages.append(Message(tenant=tenant, conversation=conversation, channel=channel, direction="in",
                                sender="user", content=f"Question {i} about my order", status="processed",
                                platform_message_id=f"wamid.seed{i}"))  # fmt: skip
        messages.append(Message(tenant=tenant, conversation=conversation, channel=channel, direction="out",
                                sender="assistant", content=f"Answer {i}", status="sent"))  # fmt: skip
    Message.objects.bulk_create(messages, batch_size=5000)
    cookies = []
    for user in users:
        client = Client()
        client.force_login(user)
        cookies.append(client.cookies["sessionid"].value)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"tenant_id": str(tenant.pk), "cookies": cookies}


# --- load -----------------------------------------------------------------------------------------------


def signed(sender: str, text: str, wamid: str) -> tuple[bytes, str]:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Bench"}, "wa_id": sender}],
            "messages": [{"from": sender, "id": wamid, "timestamp": str(int(time.time())), "type": "text",
                          "text": {"body": text}}],
        }}]}],
    }  # fmt: skip
    body = json.dumps(payload).encode()
    return body, "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


class Sender:
    """Signed webhooks at a steady rate from a few keep-alive connections; the 200's time per text."""

    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()
        self.acked: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.lock = threading.Lock()

    def post(self, sender: str, text: str, wamid: str) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body, signature = signed(sender, text, wamid)
        try:
            connection.request(
                "POST", "/webhooks/whatsapp", body=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            )  # fmt: skip
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            self.local.connection = None
            status = type(exc).__name__
        with self.lock:
            if status == 200:
                self.acked[text] = time.perf_counter()
            else:
                self.failures[str(status)] = self.failures.get(str(status), 0) + 1

    def run(self, *, rate: float, duration: float, conversations: int, prefix: str) -> int:
        interval = 1.0 / rate
        count = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            next_at = time.perf_counter()
            deadline = next_at + duration
            while time.perf_counter() < deadline:
                index = random.randrange(conversations)
                count += 1
                pool.submit(
                    self.post, sender_of(index), f"{prefix} {count}", f"wamid.{prefix}.{count}.{time.time_ns()}"
                )
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
        return count


async def agent_socket(url: str, origin: str, cookie: str, arrivals: dict[str, list[float]], ready: asyncio.Event,
                       errors: dict[str, int]) -> None:  # fmt: skip
    from websockets.asyncio.client import connect

    try:
        socket_ = await connect(
            url, origin=origin, additional_headers={"Cookie": f"sessionid={cookie}"}, proxy=None,
            open_timeout=60, ping_interval=None, compression=None,
        )  # fmt: skip
        first = json.loads(await socket_.recv())
        if first.get("type") != "ready":
            raise RuntimeError(f"refused: {first}")
    except Exception as exc:
        errors[f"connect: {type(exc).__name__}: {exc}"[:120]] = errors.get("connect", 0) + 1
        ready.set()
        return
    ready.set()
    try:
        async for raw in socket_:
            frame = json.loads(raw)
            if frame.get("type") == "message" and frame["message"]["direction"] == "in":
                arrivals.setdefault(frame["message"]["text"], []).append(time.perf_counter())
    finally:
        await socket_.close()


async def live(args: argparse.Namespace, port: int, data: dict[str, Any]) -> dict[str, Any]:
    arrivals: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    origin = f"http://127.0.0.1:{port}"
    url = f"ws://127.0.0.1:{port}/ws/inbox/?tenant={data['tenant_id']}"
    readies = []
    tasks = []
    for cookie in data["cookies"]:
        ready = asyncio.Event()
        readies.append(ready.wait())
        tasks.append(asyncio.create_task(agent_socket(url, origin, cookie, arrivals, ready, errors)))
    await asyncio.wait_for(asyncio.gather(*readies), timeout=120)
    connected = len(data["cookies"]) - sum(errors.values())
    sender = Sender(port)
    # Warm-up (not measured): worker start, first connections.
    await asyncio.to_thread(sender.run, rate=5, duration=3, conversations=args.live_conversations, prefix="warm")
    deadline = time.perf_counter() + 60
    while len([t for t in arrivals if t.startswith("warm")]) < len(sender.acked) and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
    sender.acked.clear()
    sent = await asyncio.to_thread(
        sender.run, rate=args.rate, duration=args.duration, conversations=args.live_conversations, prefix="load"
    )
    drain = time.perf_counter() + 15
    while time.perf_counter() < drain:
        complete = sum(1 for t in sender.acked if len(arrivals.get(t, [])) >= connected)
        if complete >= len(sender.acked):
            break
        await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pairs: list[float] = []
    slowest: list[float] = []
    incomplete = 0
    for text, acked_at in sender.acked.items():
        got = arrivals.get(text, [])
        if len(got) < connected:
            incomplete += 1
        delays = [max(0.0, (t - acked_at) * 1000) for t in got]
        pairs += delays
        if delays:
            slowest.append(max(delays))
    return {"sent": sent, "acked": len(sender.acked), "failures": sender.failures, "connected": connected,
            "errors": errors, "pairs": pairs, "slowest": slowest, "incomplete": incomplete}  # fmt: skip


def list_timings(port: int, data: dict[str, Any], requests: int) -> dict[str, list[float]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Cookie": f"sessionid={data['cookies'][0]}", "Accept": "application/json"}
    results: dict[str, list[float]] = {}
    for name, query in (("all", ""), ("mine", "&scope=mine"), ("waiting", "&state=handoff_requested")):
        timings = []
        for _ in range(requests + 5):
            started = time.perf_counter()
            connection.request("GET", f"/inbox/api/conversations/?tenant={data['tenant_id']}{query}", headers=headers)
            response = connection.getresponse()
            body = response.read()
            timings.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"list answered {response.status}: {body[:300]!r}")
        rows = len(json.loads(body)["results"])
        results[f"{name} ({rows} rows)"] = timings[5:]
    return results


# --- run ------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prefix = f"benchinbox{os.getpid()}"
    setup_django(prefix)

    print(
        f"inbox bench: {args.agents} agent sockets, {args.rate:g} msg/s for {args.duration:g} s across "
        f"{args.live_conversations} conversations; list of {args.conversations:,} conversations",
        flush=True,
    )
    db_name = f"bench_inbox_{os.getpid()}"
    t0 = time.monotonic()
    with throwaway_database(db_name, keep=args.keep_db):
        data = seed(args)
        print(f"bench database {db_name} migrated and seeded in {time.monotonic() - t0:.1f}s", flush=True)

        env = server_env(db_name, prefix)
        env["TURN_DEBOUNCE_SECONDS"] = "0"
        env["GRAPH_API_BASE_URL"] = "http://127.0.0.1:9"  # nothing is sent: the conversations are with agents
        children: list[subprocess.Popen] = []
        logs = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))
        try:
            port = free_port()
            log = (logs / f"bench-inbox-{os.getpid()}.log").open("wb")
            daphne = start_daphne(port, env, log)
            children.append(daphne)
            for k in range(args.worker_processes):
                children.append(
                    start_turns_worker(env, log, name=f"benchinbox{os.getpid()}.{k}@%h", concurrency=args.workers)
                )
            wait_for_port(port, daphne)
            result = asyncio.run(live(args, port, data))
            lists = list_timings(port, data, args.list_requests)
        finally:
            stop_processes(children)

    pairs, slowest = result["pairs"], result["slowest"]
    print(f"agents connected: {result['connected']}/{args.agents} {result['errors'] or ''}")
    print(
        f"webhooks: {result['sent']} sent, {result['acked']} answered 200 "
        f"({result['sent'] / args.duration:.1f}/s){' failures: ' + str(result['failures']) if result['failures'] else ''}"
    )
    print(
        f"live, webhook 200 -> frame on an agent socket ({len(pairs)} deliveries): "
        f"p50 {percentile(pairs, 50):.0f} ms, p95 {percentile(pairs, 95):.0f} ms, max {max(pairs, default=0):.0f} ms"
    )
    print(
        f"live, webhook 200 -> on every agent socket (per message's slowest agent, {len(slowest)} messages): "
        f"p50 {percentile(slowest, 50):.0f} ms, p95 {percentile(slowest, 95):.0f} ms; "
        f"messages not on every socket within 15 s: {result['incomplete']}"
    )
    for name, timings in lists.items():
        print(f"list {name}: p50 {percentile(timings, 50):.1f} ms, p95 {percentile(timings, 95):.1f} ms")
    live_ok = bool(slowest) and percentile(slowest, 95) <= 1000 and result["incomplete"] == 0
    list_ok = all(percentile(t, 95) <= 200 for t in lists.values())
    print(f"targets: live p95 <= 1 s: {'met' if live_ok else 'MISSED'}; list p95 <= 200 ms: "
          f"{'met' if list_ok else 'MISSED'}")  # fmt: skip
    return 0 if live_ok and list_ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
