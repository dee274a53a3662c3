"""Web chat API routes (/api/webchat/...), included by config.urls."""

from django.urls import path

from channels_app.webchat_api import WebchatSessionView, webchat_media_file

urlpatterns = [
    path("webchat/sessions/", WebchatSessionView.as_view(), name="webchat-session"),
    path("webchat/media/<str:ref>/", webchat_media_file, name="webchat-media"),
]
