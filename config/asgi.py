"""ASGI entry point: HTTP through Django, WebSocket through Channels (served by daphne)."""

import gc
import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from channels_app.routing import websocket_urlpatterns  # noqa: E402
from channels_app.webhook_asgi import WebhookFastPath  # noqa: E402
from config import ingress  # noqa: E402
from config.logs import AccessLogMiddleware  # noqa: E402
from config.metrics import HttpMetrics  # noqa: E402

# daphne buffers a whole request body before calling the application: bodies are bounded in its
# request class, at the socket (see config.ingress); the middleware below holds for other servers.
ingress.install_daphne_guard()

application = ProtocolTypeRouter(
    {
        # The access log line and the correlation id first (config.logs); every body is bounded, the
        # webhooks' included; then Meta's webhook POSTs skip Django's middleware stack
        # (see channels_app.webhook_asgi).
        "http": AccessLogMiddleware(
            ingress.BodyLimitMiddleware(WebhookFastPath(ASGIStaticFilesHandler(django_asgi_app))),
            enabled=settings.ACCESS_LOG,
        ),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
# Every HTTP request timed by route, method and status class, first in and last out (config.metrics).
application = HttpMetrics(application)

# Everything loaded so far lives as long as the process: move it out of the cyclic collector's reach.
# A full collection walks every tracked object (~190,000 here, ~110 ms with the interpreter lock held),
# a pause every in-flight request pays; frozen, the same collection takes well under a millisecond.
gc.freeze()
