"""The Celery application. Tasks carry the request's correlation id (see config.logs)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("metachat")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

import config.logs  # noqa: E402,F401  (connects the correlation-id signal handlers)
