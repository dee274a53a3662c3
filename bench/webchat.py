"""Web chat under load: N concurrent WebSocket sessions held by ONE daphne process, a steady message rate
across them, round-trip latency and the server's memory per connection.

    python -m bench.webchat                       # 1,000 sessions, 50 msg/s for 20 s (the target run)
    python -m bench.webchat --sessions 100 --duration 10  # quick validation

Round trip, by ``--until``:
  reply  visitor message -> the assistant's reply on the socket (the whole turn: consumer stores it,
         a real Celery worker runs the conversation pipeline with the offline answerer, the reply comes
         back through the Redis channel layer). Needs the pipeline (conversations.handle_inbound_message).
  ack    visitor message -> the server's ack (validated, stored once in PostgreSQL, acknowledged): the
         web chat channel's own cost, without the pipeline.
  auto   (default) reply when the pipeline is installed, else ack.

Isolation: a throwaway database (created and dropped here, migrated from scratch) and a Redis key prefix
of its own, so it never touches the development data. Tokens are issued by the session service directly
(the session endpoint is not what is measured); the client runs in this process, on the same 2 cores as the
server, so figures are conservative. Targets (issue 5): p95 <= 250 ms with 1,000 sessions at 50 msg/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from bench._cpu import CpuMeter
from bench._knowledge_setup import setup_django
from bench._throwaway_db import server_env, throwaway_database
from config.serve import stop_processes

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "https://bench.example"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.webchat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000, help="concurrent WebSocket sessions (default 1000)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second across sessions (default 50)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of steady load (default 20)")
    parser.add_argument("--until", choices=["auto", "reply", "ack"], default="auto")
    parser.add_argument(
        "--workers", type=int, default=4, help="threads per Celery worker for --until reply (`make run`: 4)"
    )
    parser.add_argument("--worker-pool", default="threads", help="Celery pool, as the turns worker of `make run`")
    parser.add_argument(
        "--worker-processes", type=int, default=2, help="turns worker processes (`make run`: one per core, at most 2)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a round trip counts as lost")
    parser.add_argument(
        "--rag",
        action="store_true",
        help="leave retrieval on for the bench tenant (it has no documents; off by default: the figure is the "
        "channel and pipeline overhead, retrieval is measured by the knowledge benchmarks)",
    )
    parser.add_argument(
        "--debounce",
        type=float,
        default=0.0,
        help="TURN_DEBOUNCE_SECONDS for the worker (default 0: the pipeline's deliberate wait for more "
        "messages of a burst is not overhead; set it to measure what a visitor experiences)",
    )
    parser.add_argument("--keep-db", action="store_true", help="do not drop the bench database")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("daphne did not start listening in time")


def start_daphne(port: int, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen:
    """daphne serving the platform (HTTP and WebSocket) on 127.0.0.1:``port``."""
    return subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def start_turns_worker(
    env: dict[str, str], log: IO[bytes], *, name: str, concurrency: int, pool: str = "threads"
) -> subprocess.Popen:
    """A Celery worker on the turns queue (``default``), as ``make run`` starts one."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-P", pool,
         "-c", str(concurrency), "-n", name, "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def rss_of(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


class Load:
    def __init__(self, until: str, timeout: float):
        self.until = until
        self.timeout = timeout
        self.pending: dict[str, float] = {}  # visitor id -> send time (one message in flight per visitor)
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.sent = 0
        self.lost = 0

    def done(self, visitor_id: str) -> None:
        started = self.pending.pop(visitor_id, None)
        if started is not None:
            self.latencies.append((time.perf_counter() - started) * 1000)


async def hold_session(url: str, visitor_id: str, load: Load, sockets: dict, ready: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    try:
        socket_ = await connect(url, origin=ORIGIN, proxy=None, open_timeout=60, ping_interval=None, compression=None)
        first = json.loads(await socket_.recv())
        if first.get("type") != "ready":
            raise RuntimeError(f"session refused: {first}")
    except Exception as exc:  # counted and reported; the run goes on with the sessions that connected
        key = f"connect: {type(exc).__name__}"
        load.errors[key] = load.errors.get(key, 0) + 1
        ready.set()
        return
    sockets[visitor_id] = socket_
    ready.set()
    async for raw in socket_:
        frame = json.loads(raw)
        kind = frame.get("type")
        if kind == "ack" and load.until == "ack":
            load.done(visitor_id)
        elif kind == "ack" and frame.get("status") != "stored":
            load.errors["duplicate"] = load.errors.get("duplicate", 0) + 1
        elif kind in ("message", "stream_end") and frame.get("role") in ("assistant", "agent"):
            if load.until == "reply":
                load.done(visitor_id)
        elif kind == "error":
            code = frame.get("code", "?")
            load.errors[code] = load.errors.get(code, 0) + 1
            load.pending.pop(visitor_id, None)


async def run_load(
    args: argparse.Namespace, ws_base: str, tokens: dict[str, str], server_pid: int, meter: CpuMeter
) -> dict:
    load = Load(args.until, args.timeout)
    sockets: dict = {}
    tasks = []
    rss_idle = rss_of(server_pid)
    started = time.perf_counter()
    # Open the sessions in waves so the accept backlog is never the thing being measured.
    visitors = list(tokens)
    for offset in range(0, len(visitors), 50):
        wave = []
        for visitor_id in visitors[offset : offset + 50]:
            ready = asyncio.Event()
            url = f"{ws_base}/ws/webchat/?token={tokens[visitor_id]}"
            tasks.append(asyncio.create_task(hold_session(url, visitor_id, load, sockets, ready)))
            wave.append(ready.wait())
        await asyncio.wait_for(asyncio.gather(*wave), timeout=120)
    connect_seconds = time.perf_counter() - started
    connect_errors = dict(load.errors)
    visitors = [v for v in visitors if v in sockets]
    if not visitors:
        raise RuntimeError(f"no session could connect: {load.errors}")
    await asyncio.sleep(1.0)
    rss_connected = rss_of(server_pid)

    def expire() -> None:
        now = time.perf_counter()
        for visitor_id, sent_at in list(load.pending.items()):
            if now - sent_at > args.timeout:
                load.pending.pop(visitor_id, None)
                load.lost += 1

    counter = 0
    # Warm-up, not measured: the first turns pay for worker start-up, imports and first connections.
    warm_up = visitors[: max(2, args.workers * 2)]
    for visitor_id in warm_up:
        counter += 1
        load.pending[visitor_id] = time.perf_counter()
        frame = {"type": "message", "client_message_id": f"c_warm{counter:09d}", "text": "Hello?"}
        await sockets[visitor_id].send(json.dumps(frame))
    warm_deadline = time.perf_counter() + 120
    while load.pending and time.perf_counter() < warm_deadline:
        await asyncio.sleep(0.05)
    if load.pending:
        raise RuntimeError("no round trip completed within 120 s of warm-up: is the server (or worker) working?")
    load.latencies.clear()
    load.errors.clear()

    interval = 1.0 / args.rate
    meter.start()
    deadline = time.perf_counter() + args.duration
    next_send = time.perf_counter()
    while time.perf_counter() < deadline:
        expire()
        idle = [v for v in random.sample(visitors, min(len(visitors), 20)) if v not in load.pending]
        if idle:
            visitor_id = idle[0]
            counter += 1
            frame = {"type": "message", "client_message_id": f"c_bench{counter:09d}", "text": f"Question {counter}?"}
            load.pending[visitor_id] = time.perf_counter()
            await sockets[visitor_id].send(json.dumps(frame))
            load.sent += 1
        next_send += interval
        await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
    drain_until = time.perf_counter() + args.timeout
    while load.pending and time.perf_counter() < drain_until:
        expire()
        await asyncio.sleep(0.05)
    load.lost += len(load.pending)
    meter.stop()
    rss_after = rss_of(server_pid)
    for socket_ in sockets.values():
        await socket_.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "load": load,
        "connect_seconds": connect_seconds,
        "connected": len(sockets),
        "connect_errors": connect_errors,
        "rss_idle": rss_idle,
        "rss_connected": rss_connected,
        "rss_after": rss_after,
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prefix = f"benchwc{os.getpid()}"
    setup_django(prefix)
    from django.conf import settings

    until = "reply" if args.until == "auto" else args.until
    args.until = until

    print(
        f"web chat bench: {args.sessions} sessions, {args.rate:g} msg/s for {args.duration:g} s, "
        f"round trip until {until}",
        flush=True,
    )
    db_name = f"bench_webchat_{os.getpid()}"
    t0 = time.monotonic()
    with throwaway_database(db_name, keep=args.keep_db):
        print(f"bench database {db_name} migrated in {time.monotonic() - t0:.1f}s", flush=True)

        env = server_env(db_name, prefix)
        env["WEBCHAT_RATE_LIMIT_PER_MINUTE"] = "100000"
        settings.WEBCHAT_RATE_LIMIT_PER_MINUTE = 100000
        env["TURN_DEBOUNCE_SECONDS"] = str(args.debounce)
        env["WEBCHAT_JWT_TTL_SECONDS"] = "3600"
        settings.WEBCHAT_JWT_TTL_SECONDS = 3600
        children: list[subprocess.Popen] = []
        logs = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))
        try:
            port = free_port()
            daphne_log = (logs / f"bench-webchat-daphne-{os.getpid()}.log").open("wb")
            daphne = start_daphne(port, env, daphne_log)
            children.append(daphne)
            if until == "reply":
                worker_log = (logs / f"bench-webchat-worker-{os.getpid()}.log").open("wb")
                for k in range(args.worker_processes):
                    children.append(
                        start_turns_worker(
                            env,
                            worker_log,
                            name=f"benchwc{os.getpid()}.{k}@%h",
                            pool=args.worker_pool,
                            concurrency=args.workers,
                        )
                    )
            wait_for_port(port, daphne)

            from channels_app import webchat
            from channels_app.models import Channel, new_widget_key
            from tenants import services

            tenant = services.tenant_create(
                name="Bench web chat",
                slug=f"bench-webchat-{os.getpid()}",
                settings={"brandName": "Bench", "enableRag": bool(args.rag), "llm": {"provider": "offline"}},
            )
            channel = Channel.objects.create(
                tenant=tenant,
                type=Channel.Type.WEBCHAT,
                name="bench",
                external_id=new_widget_key(),
                config={"allowed_origins": [ORIGIN]},
            )
            tokens = {}
            for _ in range(args.sessions):
                visitor_id = webchat.new_visitor_id()
                tokens[visitor_id] = webchat.token_issue(channel=channel, visitor_id=visitor_id)[0]
            groups = {"daphne": [daphne.pid], "bench client": [os.getpid()]}
            if len(children) > 1:
                groups["worker"] = [child.pid for child in children[1:]]
            meter = CpuMeter(groups, postgres_database=db_name)
            result = asyncio.run(run_load(args, f"ws://127.0.0.1:{port}", tokens, daphne.pid, meter))
            load: Load = result["load"]
            lat = load.latencies
            per_connection = (result["rss_connected"] - result["rss_idle"]) / max(1, result["connected"])
            print(
                f"sessions connected:       {result['connected']} of {args.sessions} in {result['connect_seconds']:.1f}s"
                + (f"   failures: {result['connect_errors']}" if result["connect_errors"] else "")
            )
            print(f"messages sent:            {load.sent} ({load.sent / args.duration:.1f}/s)")
            print(
                f"round trips completed:    {len(lat)}   lost (>{args.timeout:g}s): {load.lost}   errors: {load.errors}"
            )
            if lat:
                print(
                    f"round trip ({until}) ms:     p50 {percentile(lat, 50):.1f}   p95 {percentile(lat, 95):.1f}   "
                    f"p99 {percentile(lat, 99):.1f}   max {max(lat):.1f}   mean {statistics.fmean(lat):.1f}"
                )
            print(
                f"daphne RSS:               idle {result['rss_idle'] / 2**20:.1f} MiB, "
                f"{result['connected']} connected {result['rss_connected'] / 2**20:.1f} MiB, "
                f"after load {result['rss_after'] / 2**20:.1f} MiB"
            )
            print(f"server memory/connection: {per_connection / 1024:.1f} KiB")
            print(meter.report(per=max(1, load.sent), unit="message"))
            target = percentile(lat, 95) <= 250 if lat else False
            print(f"target p95 <= 250 ms:     {'met' if target else 'NOT met'}")
            return 0 if lat and load.lost == 0 and result["connected"] == args.sessions else 1
        finally:
            stop_processes(children)
            _clear_redis_prefix(prefix)


def _clear_redis_prefix(prefix: str) -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
