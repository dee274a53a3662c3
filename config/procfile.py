"""The Procfile, read by everything that starts the platform's processes.

``python -m config.procfile <name>`` becomes the Procfile's ``<name>`` line (through ``sh -c``, so
``${VAR:-default}`` takes the environment's value): docker-compose and the Kubernetes manifests start
their containers this way, ``make run`` runs the whole file with honcho, and the tests start workers
from the same lines. One table, so the process list and its defaults cannot drift apart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def processes(path: Path = PROCFILE) -> dict[str, str]:
    """The Procfile's process types and their command lines, in file order."""
    table: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if line.startswith("#") or not sep or not name.strip().isidentifier():
            continue
        table[name.strip()] = command.strip()
    return table


def command(name: str) -> list[str]:
    """The argv that runs process type ``name`` (an ``sh -c`` line that ``exec``s the program)."""
    table = processes()
    if name not in table:
        raise KeyError(f"no process {name!r} in the Procfile (there are: {', '.join(table)})")
    return ["sh", "-c", table[name]]


def with_interpreter_first(env: dict[str, str] | os._Environ[str]) -> None:
    """Put this interpreter's directory first on PATH: the Procfile's ``python`` and ``celery`` are the
    ones installed beside it (the project's virtualenv), whether or not it is activated."""
    here = str(Path(sys.executable).parent)
    if env.get("PATH", "").split(os.pathsep)[0] != here:
        env["PATH"] = os.pathsep.join([here, env.get("PATH", "")])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m config.procfile <{'|'.join(processes())}>", file=sys.stderr)
        return 2
    try:
        argv_ = command(argv[0])
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    os.chdir(PROCFILE.parent)  # relative defaults (var/...) are the checkout's, as under make run
    with_interpreter_first(os.environ)
    os.execvp(argv_[0], argv_)  # noqa: S606 (argv_ runs the line through sh -c)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
