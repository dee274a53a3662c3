#!/usr/bin/env python
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if not os.environ.get("DATABASE_URL"):  # a local checkout: the servers and keys make run uses
        from config import local

        local.prepare(os.environ, generate=False, prefer_local_redis=False, say=lambda _message: None)
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
