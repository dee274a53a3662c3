"""A throwaway database for one benchmark run, and the environment of the servers it starts on it.

The database is created and migrated from scratch (as a test database) on the platform's PostgreSQL
server under a name of the run's own, and dropped afterwards, so a run never touches the development
data. Django is set up first (bench._knowledge_setup.setup_django).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse


@contextmanager
def throwaway_database(name: str, *, keep: bool = False) -> Iterator[None]:
    """Django's connection on a new, migrated database ``name`` for the block; dropped after it unless
    ``keep`` (a bench's ``--keep-db``)."""
    from django.db import connection

    connection.settings_dict["TEST"]["NAME"] = name
    original_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        yield
    finally:
        connection.close()
        if not keep:
            connection.creation.destroy_test_db(original_name, verbosity=0)


def server_env(database_name: str, redis_prefix: str) -> dict[str, str]:
    """This process's environment for a server or worker it starts: on ``database_name``, with the run's
    own Redis key prefix and quiet logs."""
    from django.conf import settings

    env = dict(os.environ)
    env["DATABASE_URL"] = urlparse(settings.DATABASE_URL)._replace(path="/" + database_name).geturl()
    env["REDIS_KEY_PREFIX"] = redis_prefix
    env["LOG_LEVEL"] = "WARNING"
    return env
