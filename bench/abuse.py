"""`python -m bench.abuse`: what a hostile tenant or an anonymous client costs the platform.

From one run, on the real processes as `make run` starts them:
- daphne's RSS before/after a 100 MB body without a key, and a body that declares 2 GB and sends a
  few bytes (target: +<= 50 MB, connection closed within 10 s) — bench/_abuse_bodies.py;
- time and peak memory of the indexing worker on two DOCX bombs (target: <= 30 s, <= 512 MB, the
  document `failed`), and the time for tenant B's one-page document to become keyword-searchable
  while tenant A has 1,400 documents queued (target: <= 30 s) — bench/_abuse_indexing.py.
"""

from __future__ import annotations

import sys

from bench import _abuse_bodies, _abuse_indexing


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    for part in (_abuse_bodies, _abuse_indexing):
        for label, value in part.run():
            print(f"{label:<78} {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
