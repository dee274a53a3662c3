"""Web chat API routes (/api/webchat/...), included by config.urls."""

urlpatterns: list = []
