"""CPU seconds spent by the processes a benchmark involves, per group, over a measured window.

Wall-clock throughput on a shared 2-core machine moves with whatever else runs; CPU time per unit of
work (per turn, per webhook, per event) does much less, so the benchmarks print both.

    meter = CpuMeter({"worker": worker_pids, "bench": [os.getpid()]}, postgres_database="bench_x")
    meter.start(); ...; meter.stop(); print(meter.report(per=turns, unit="turn"))

Processes are sampled a few times a second, so one that ends during the window (a PostgreSQL
backend whose connection closed) still counts up to its last sample; one that starts during the
window counts from zero. A process belongs to the group of its nearest listed ancestor (or
itself). Shared services (Redis, RabbitMQ, PostgreSQL's background processes) are named
"(shared)": other work on the machine adds to them.
"""

from __future__ import annotations

import threading
import time
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
        self.procs: dict[int, psutil.Process] = {}
        self.ignored: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _owner(self, pid: int) -> str | None:
        """The group whose pid, or whose pid's ancestor, this is (walking up the parents)."""
        seen = 0
        while pid > 1 and seen < 64:
            for name, pids in self.groups.items():
                if pid in pids:
                    return name
            try:
                pid = psutil.Process(pid).ppid()
            except psutil.Error:
                return None
            seen += 1
        return None

    def _group(self, proc: psutil.Process) -> str | None:
        owner = self._owner(proc.pid)
        if owner is not None:
            return owner
        name = proc.name()
        cmd = " ".join(proc.cmdline())
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
        # Each process is classified once (its name, command line and parents read when first seen);
        # later samples read only the CPU times of the processes counted. Re-reading every process's
        # command line and parent map twice a second cost as much CPU as the platform's web view in
        # bench.turn, on the same two cores.
        for pid in psutil.pids():
            if pid in self.ignored:
                continue
            try:
                proc = self.procs.get(pid)
                if proc is None:
                    proc = psutil.Process(pid)
                    group = self._group(proc)
                    if group is None:
                        # A process seconds old may not have set its title yet (a PostgreSQL
                        # backend just forked): looked at again next time.
                        if time.time() - proc.create_time() > 2:
                            self.ignored.add(pid)
                        continue
                    cpu = proc.cpu_times()
                    # A process that appeared during the window spent all its CPU in it.
                    self.first[pid] = (group, cpu.user + cpu.system if initial else 0.0)
                    self.procs[pid] = proc
                cpu = proc.cpu_times()
                self.last[pid] = cpu.user + cpu.system
            except psutil.Error:
                self.procs.pop(pid, None)
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
