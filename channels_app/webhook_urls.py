"""Public webhook routes (/webhooks/...), included by config.urls."""

urlpatterns: list = []
