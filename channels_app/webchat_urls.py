"""Web chat API routes (/api/webchat/...), included by config.urls."""

from django.urls import path

from channels_app.webchat_api import WebchatSessionView

urlpatterns = [
    path("webchat/sessions/", WebchatSessionView.as_view(), name="webchat-session"),
]
