"""Celery reads Django's CELERY_* settings under its own names: a worker starts without deprecation
warnings (Celery 5.7 warns at every start for the names it knew in version 3, such as
CELERY_RESULT_BACKEND), and every setting still takes effect."""

from __future__ import annotations

import warnings

from django.conf import settings


def test_every_celery_setting_reaches_celery_under_its_own_name_without_a_deprecation_warning() -> None:
    from config.celery import app

    names = [name for name in dir(settings) if name.startswith("CELERY_")]
    assert {"CELERY_RESULT_BACKEND", "CELERY_TASK_SERIALIZER", "CELERY_TIMEZONE", "CELERY_TASK_ROUTES"} <= set(names)
    for name in names:
        assert app.conf[name.removeprefix("CELERY_").lower()] == getattr(settings, name), name
    assert app.conf.task_routes["knowledge.*"] == {"queue": "indexing"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert app.conf.maybe_warn_deprecated_settings() is False
    assert [str(w.message) for w in caught] == []
