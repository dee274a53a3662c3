"""`make bench`: run every benchmark under bench/ in turn and print their figures.

Each benchmark is a module ``bench/<name>.py`` with ``main(argv: list[str]) -> int``; run one alone with
``python -m bench.<name> [--help]``. ``BENCH_ONLY=a,b`` restricts the set.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = sorted(
        m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name not in {"run_all"} and not m.name.startswith("_")
    )
    only = [n for n in os.environ.get("BENCH_ONLY", "").split(",") if n]
    if only:
        names = [n for n in names if n in only]
    failures = 0
    for name in names:
        module = importlib.util.find_spec(f"bench.{name}")
        if module is None:
            continue
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", f"bench.{name}", *argv], cwd=HERE.parent).returncode
        print(f"=== bench.{name}: exit {code} in {time.monotonic() - started:.0f}s", flush=True)
        failures += code != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
