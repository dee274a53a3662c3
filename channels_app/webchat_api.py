"""POST /api/webchat/sessions/: the public endpoint the widget calls to start (or resume) a chat.

Public by design (the widget key is printed in the tenant's web page); what protects it is the
Origin check against the channel's allowed origins, the session limits per widget and client address
and per widget (429 with Retry-After), the short token life and the per-visitor message rate limit.
The widget runs on the tenant's site, so the endpoint answers CORS itself.
"""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.http import require_GET
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from channels_app import webchat, webchat_media
from channels_app.models import Channel
from config.errors import ApiError, error_body
from config.openapi import error_response
from tenants.ratelimit import request_client_address


class SessionCreateSerializer(serializers.Serializer):
    widget_key = serializers.CharField(max_length=128, help_text="the web chat channel's external_id")
    visitor_token = serializers.CharField(
        max_length=256,
        required=False,
        allow_blank=True,
        default="",
        help_text="the visitor_token of an earlier session, to resume that visitor's conversation",
    )


class WebchatSessionView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        request=SessionCreateSerializer,
        responses={
            201: inline_serializer(
                "WebchatSession",
                {
                    "token": serializers.CharField(),
                    "expires_at": serializers.IntegerField(),
                    "visitor_id": serializers.CharField(),
                    "visitor_token": serializers.CharField(),
                    "resumed": serializers.BooleanField(),
                    "websocket_path": serializers.CharField(),
                    "history": serializers.ListField(child=serializers.DictField()),
                    "widget": serializers.DictField(),
                },
            ),
            400: error_response(400),
            403: error_response(
                403, "`origin_required`, `origin_not_allowed` or `channel_inactive`.", "origin_not_allowed"
            ),
            404: error_response(404, "No web chat channel has this widget key.", "unknown_widget"),
            429: error_response(
                429, "Too many sessions from this address or on this widget (`Retry-After` header).", "rate_limited"
            ),
        },
        auth=[],
        summary="Start or resume a web chat session (public; Origin checked)",
        description="Called by the web chat widget from the tenant's site, without an API key: the browser's "
        "`Origin` must be one of the channel's `config.allowed_origins`. The answer carries a short-lived `token` "
        "for the WebSocket at `websocket_path`, the `visitor_token` to keep (localStorage) and send back to "
        "resume the conversation later, its `history`, and the widget's display settings.",
        examples=[OpenApiExample("New visitor", value={"widget_key": "wk_3kP9..."}, request_only=True)],
    )
    def post(self, request: Request) -> Response:
        body = SessionCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            session = webchat.session_start(
                widget_key=body.validated_data["widget_key"],
                origin=request.META.get("HTTP_ORIGIN", ""),
                visitor_token=body.validated_data["visitor_token"],
                client=request_client_address(request),
            )
        except webchat.WebchatError as exc:
            if exc.status == status.HTTP_429_TOO_MANY_REQUESTS:
                return Response(
                    error_body(exc.code, exc.message, exc.details),
                    status=exc.status,
                    headers={"Retry-After": str(exc.details["retry_after"])},
                )
            raise ApiError(exc.status, exc.code, exc.message, exc.details) from None
        return Response(session.as_response(), status=status.HTTP_201_CREATED)

    @extend_schema(exclude=True)
    def options(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Response:
        # CORS preflight: the origin is checked against the widget's channel on the POST itself.
        return Response(status=status.HTTP_204_NO_CONTENT)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        origin = request.META.get("HTTP_ORIGIN", "")
        if origin:
            # Echoed on errors too, so the widget can read why it was refused; no cookies are involved.
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response["Access-Control-Allow-Headers"] = "Content-Type"
            response["Access-Control-Max-Age"] = "600"
            response["Vary"] = "Origin"
        return response


def _media_refusal(status_code: int, code: str, message: str) -> JsonResponse:
    response = JsonResponse(error_body(code, message), status=status_code)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def webchat_media_file(request: HttpRequest, ref: str) -> HttpResponseBase:
    """GET /api/webchat/media/<ref>/?key=<media key>: a file sent to one web chat visitor.

    ``ref`` (signed, expiring: channels_app.webchat_media) names the widget, the visitor and the stored
    file; ``key`` must be that visitor's media key (from its session). Images, audio and video are
    served inline with their type; anything else as an attachment. 404 for a ref we did not sign (or
    expired, or whose channel is gone or off); 403 for another visitor's (or tenant's) key."""
    scoped = webchat_media.media_ref_open(ref)
    if scoped is None:
        return _media_refusal(404, "not_found", "No such file (or its link has expired; reopen the chat).")
    channel = (
        Channel.objects.select_related("tenant")
        .filter(type=Channel.Type.WEBCHAT, external_id=scoped.widget_key, is_active=True, tenant__is_active=True)
        .first()
    )
    if channel is None or not webchat_media.path_belongs_to(
        scoped.storage_path, tenant_id=channel.tenant_id, channel_id=channel.pk
    ):
        return _media_refusal(404, "not_found", "No such file.")
    key = request.GET.get("key", "")
    if not webchat_media.media_key_matches(channel_id=channel.pk, visitor_id=scoped.visitor_id, key=key):
        return _media_refusal(403, "forbidden", "This file was sent to another visitor.")
    try:
        handle = default_storage.open(scoped.storage_path, "rb")
    except (FileNotFoundError, OSError):
        return _media_refusal(404, "not_found", "No such file.")
    inline = scoped.inline
    response = FileResponse(
        handle,
        content_type=scoped.mime_type if inline else "application/octet-stream",
        as_attachment=not inline,
        filename=scoped.filename or scoped.storage_path.rsplit("/", 1)[-1],
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, max-age=3600"
    response["Cross-Origin-Resource-Policy"] = "cross-origin"  # shown on the tenant's site
    return response
