"""The ``PROMETHEUS_MULTIPROC_DIR`` of a group of processes (see config.metrics), made empty before the
group starts: files left by an earlier run would be added to the new counts, and a reused pid would
continue a dead process's file. No Django or prometheus_client import: the launcher calls this."""

from __future__ import annotations

import shutil
from pathlib import Path

from config import embedded


def prepare(env: dict[str, str], name: str) -> str:
    """An empty directory for the processes started with ``env``: ``$PROMETHEUS_MULTIPROC_DIR`` when
    set, else ``var/metrics/<name>``; set in ``env``."""
    path = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or embedded.var_dir() / "metrics" / name)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return str(path)


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
