"""CPU seconds spent by the processes a benchmark involves, per category, over a measured window.

Wall-clock throughput on a shared 2-core machine moves with whatever else runs; CPU time per unit of
work (per turn, per webhook) does much less, so the benchmarks print both.

    meter = CpuMeter({"worker": worker_pids, "bench": [os.getpid()]}, postgres_database="bench_x")
    meter.start(); ...; print(meter.report(per=turns, unit="turn"))
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil


class CpuMeter:
    def __init__(self, groups: dict[str, Iterable[int]], *, postgres_database: str = "", redis: bool = True) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.postgres_database = postgres_database
        self.redis = redis
        self.before: dict[tuple[str, int], float] = {}
        self.after: dict[tuple[str, int], float] = {}

    def _processes(self) -> list[tuple[str, psutil.Process]]:
        """Each process once: a group's own pids, then its descendants not claimed by another group."""
        claimed: dict[int, tuple[str, psutil.Process]] = {}
        for name, pids in self.groups.items():
            for pid in pids:
                try:
                    claimed[pid] = (name, psutil.Process(pid))
                except psutil.Error:
                    continue
        for name, pids in self.groups.items():
            for pid in pids:
                try:
                    children = psutil.Process(pid).children(recursive=True)
                except psutil.Error:
                    continue
                for child in children:
                    claimed.setdefault(child.pid, (name, child))
        found = list(claimed.values())
        for proc in psutil.process_iter(["cmdline", "name"]):
            if proc.pid in claimed:
                continue
            cmd = " ".join(proc.info.get("cmdline") or [])
            if self.postgres_database and cmd.startswith("postgres:") and f" {self.postgres_database} " in f"{cmd} ":
                found.append(("postgres", proc))
            elif self.redis and (proc.info.get("name") or "").startswith("redis-server"):
                found.append(("redis", proc))
        return found

    def _snapshot(self) -> dict[tuple[str, int], float]:
        times: dict[tuple[str, int], float] = {}
        for name, proc in self._processes():
            try:
                cpu = proc.cpu_times()
            except psutil.Error:
                continue
            times[(name, proc.pid)] = cpu.user + cpu.system
        return times

    def start(self) -> None:
        self.before = self._snapshot()

    def stop(self) -> None:
        # Backends that started during the window count from zero.
        self.after = self._snapshot()

    def seconds(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for key, value in self.after.items():
            totals[key[0]] = totals.get(key[0], 0.0) + value - self.before.get(key, 0.0)
        return totals

    def report(self, *, per: int, unit: str) -> str:
        totals = self.seconds()
        parts = [f"{name} {1000 * seconds / max(1, per):.1f}" for name, seconds in sorted(totals.items())]
        return f"CPU ms per {unit}: " + ", ".join(parts) + f"; total {1000 * sum(totals.values()) / max(1, per):.1f}"
