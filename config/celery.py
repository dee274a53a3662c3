"""The Celery application. Tasks carry the request's correlation id, and a worker or beat writes only
JSON lines (see config.logs)."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("metachat")


@app.on_configure.connect
def _django_settings_once(sender: Celery, **_: object) -> None:
    """Django's CELERY_* settings, copied into a dict when Celery first reads its configuration. Read
    through ``django.conf:settings``, every lookup of a Celery setting (several per task published)
    tried each of its names with a getattr on Django's settings that mostly raises AttributeError:
    554 -> 473 µs of CPU per publish (alternating, 3,000 publishes each), paid by the web process for
    every inbound message and by the workers for their own."""
    from django.conf import settings

    # Under Celery's own (lower-case) names: given as CELERY_* with a namespace, the ones that match
    # Celery 3's upper-case names (CELERY_RESULT_BACKEND, ...) make Celery 5.7 warn at every start.
    names = [name for name in dir(settings) if name.startswith("CELERY_")]
    sender.config_from_object({name.removeprefix("CELERY_").lower(): getattr(settings, name) for name in names})


# Celery's Django fix-up closes every database connection before and after every task unless told
# to reuse them: a new PostgreSQL backend (fork, auth, session set-up) per turn, measured at one
# session per task in bench.turn. Connections are kept instead and recycled the way Django recycles
# them between requests (CONN_MAX_AGE, errors, a broken connection): see _recycle_connections.
app.conf.CELERY_DB_REUSE_MAX = 1_000_000_000
app.autodiscover_tasks()

import config.logs  # noqa: E402,F401  (connects the correlation-id signal handlers)


@signals.task_postrun.connect
def _recycle_connections(**_: object) -> None:
    """What Django's request_finished does: close this thread's connection if it is past
    CONN_MAX_AGE, unusable after an error, or left inside a transaction."""
    from django.db import close_old_connections

    close_old_connections()


@signals.worker_ready.connect
@signals.worker_process_init.connect
def _freeze_startup_objects(**_: object) -> None:
    """Modules, settings and app registry live as long as the worker: keep them out of the cyclic
    collector's full passes (~110 ms each with the interpreter lock held, see config.asgi)."""
    import gc

    gc.freeze()


def _beat_without_banner() -> None:
    """``celery beat`` prints its banner (plain text, before logging is set up) unless ``--quiet``:
    always quiet here, with one JSON line once it has started instead (``_beat_started``)."""
    from celery.apps.beat import Beat

    original_run = Beat.run

    def run(self: Beat) -> None:
        self.quiet = True
        original_run(self)

    Beat.run = run  # type: ignore[method-assign]


_beat_without_banner()


@signals.beat_init.connect
def _beat_started(sender: object = None, **_: object) -> None:
    import logging

    logging.getLogger("celery.beat").info(
        "celery beat starting",
        extra={"schedule": getattr(sender, "schedule_filename", None)},
    )
