"""WebSocket routes, mounted by config.asgi.

The web chat socket authenticates with its session token; the agents' inbox socket with the Django
session (the admin's login cookie), so only it goes through Channels' AuthMiddlewareStack."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from channels_app.consumers import WebchatConsumer
from conversations.inbox.consumer import InboxConsumer

websocket_urlpatterns = [
    path("ws/webchat/", WebchatConsumer.as_asgi()),
    path("ws/inbox/", AuthMiddlewareStack(InboxConsumer.as_asgi())),
]
