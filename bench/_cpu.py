"""CPU seconds spent by the processes a benchmark involves, per group, over a measured window.

Wall-clock throughput on a shared 2-core machine moves with whatever else runs; CPU time per unit of
work (per turn, per webhook, per event) does much less, so the benchmarks print both.

    meter = CpuMeter({"worker": worker_pids, "bench": [os.getpid()]}, postgres_database="bench_x")
    meter.start(); ...; meter.stop(); print(meter.report(per=turns, unit="turn"))

Processes are sampled a few times a second, so one that ends during the window (a PostgreSQL
backend whose connection closed) still counts up to its last sample; one that starts during the
window counts from zero. A group's own pids come first, then their descendants not claimed by
another group. Shared services (Redis, RabbitMQ, PostgreSQL's background processes) are named
"(shared)": other work on the machine adds to them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import psutil

REDIS = "redis (shared)"
RABBITMQ = "rabbitmq (shared)"
POSTGRES_SHARED = "postgres: shared background"


class CpuMeter:
    def __init__(
        self,
        groups: dict[str, Iterable[int]],
        *,
        postgres_database: str = "",
        redis: bool = True,
        rabbitmq: bool = False,
        postgres_shared: bool = False,
        interval: float = 0.5,
    ) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.postgres_database = postgres_database
        self.redis, self.rabbitmq, self.postgres_shared = redis, rabbitmq, postgres_shared
        self.interval = interval
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _claimed(self) -> dict[int, str]:
        claimed = {pid: name for name, pids in self.groups.items() for pid in pids}
        for name, pids in self.groups.items():
            for pid in pids:
                try:
                    children = psutil.Process(pid).children(recursive=True)
                except psutil.Error:
                    continue
                for child in children:
                    claimed.setdefault(child.pid, name)
        return claimed

    def _group(self, proc: psutil.Process, claimed: dict[int, str]) -> str | None:
        if proc.pid in claimed:
            return claimed[proc.pid]
        name = proc.info.get("name") or ""
        cmd = " ".join(proc.info.get("cmdline") or [])
        if cmd.startswith("postgres:"):
            if self.postgres_database and f" {self.postgres_database} " in f"{cmd} ":
                return "postgres"
            if self.postgres_shared and not any(m in cmd for m in ("[local]", "127.0.0.1", " idle")):
                return POSTGRES_SHARED
            return None  # another database's backend
        if self.redis and name.startswith("redis-server"):
            return REDIS
        if self.rabbitmq and name.startswith("beam.smp"):
            return RABBITMQ
        return None

    def _sample(self, *, initial: bool = False) -> None:
        claimed = self._claimed()
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                if proc.pid not in self.first:
                    group = self._group(proc, claimed)
                    if group is None:
                        continue
                    cpu = proc.cpu_times()
                    # A process that appeared during the window spent all its CPU in it.
                    self.first[proc.pid] = (group, cpu.user + cpu.system if initial else 0.0)
                cpu = proc.cpu_times()
                self.last[proc.pid] = cpu.user + cpu.system
            except psutil.Error:
                continue

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._sample(initial=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.seconds()

    def seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, (group, first) in self.first.items():
            totals[group] = totals.get(group, 0.0) + max(0.0, self.last.get(pid, first) - first)
        return totals

    def report(self, *, per: int, unit: str) -> str:
        totals = self.seconds()
        parts = [f"{name} {1000 * seconds / max(1, per):.1f}" for name, seconds in sorted(totals.items())]
        return f"CPU ms per {unit}: " + ", ".join(parts) + f"; total {1000 * sum(totals.values()) / max(1, per):.1f}"
