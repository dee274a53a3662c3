"""GET/POST /webhooks/<platform> (whatsapp, messenger): Meta's handshake and event notifications.

Views are thin: the body is read raw (the signature covers the exact bytes) and handed to
``services.webhook_answer``, which verifies, routes and stores it (``receive_webhook``) and counts it;
the answer is immediate.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from channels_app import services
from config import metrics
from tenants.ratelimit import request_client_address


def _webhook(request: HttpRequest, platform: str) -> HttpResponse:
    if request.method == "GET":
        ok = services.verify_handshake(
            platform=platform,
            mode=request.GET.get("hub.mode", ""),
            token=request.GET.get("hub.verify_token", ""),
        )
        metrics.incr("webhook_handshakes_total", platform=platform, outcome="ok" if ok else "refused")
        if not ok:
            return HttpResponse("Verification failed.", status=403, content_type="text/plain")
        return HttpResponse(request.GET.get("hub.challenge", ""), content_type="text/plain")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > settings.WEBHOOK_MAX_BODY_BYTES:
        status, answer = services.webhook_too_large(platform=platform)
    else:
        # Read the stream ourselves: Django's request.body refuses bodies over
        # DATA_UPLOAD_MAX_MEMORY_SIZE with a 400, and the limit here is the webhook's own.
        body = request.read(settings.WEBHOOK_MAX_BODY_BYTES + 1)
        status, answer = services.webhook_answer(
            platform=platform, body=body, headers=request.headers, source=request_client_address(request)
        )
    return JsonResponse(answer, status=status)


@csrf_exempt
@require_http_methods(["GET", "POST"])
def webhook(request: HttpRequest, platform: str) -> HttpResponse:
    """The route of each Graph platform (``webhook_urls``) passes its ``platform``."""
    return _webhook(request, platform)
