"""WebSocket routes, mounted by config.asgi."""

from django.urls import path

from channels_app.consumers import WebchatConsumer

websocket_urlpatterns = [
    path("ws/webchat/", WebchatConsumer.as_asgi()),
]
