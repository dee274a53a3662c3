"""Public webhook routes (/webhooks/<platform>, with or without a trailing slash), included by
config.urls: one pair per Graph platform of the adapter registry."""

from django.urls import path

from channels_app import webhooks
from channels_app.adapters import graph_platforms

urlpatterns: list = []
for _platform in graph_platforms():
    urlpatterns += [
        path(_platform, webhooks.webhook, {"platform": _platform}, name=f"webhook-{_platform}"),
        path(f"{_platform}/", webhooks.webhook, {"platform": _platform}),
    ]
