"""Events over REST: the audit log (/api/tenants/{id}/events/) and tenant webhooks
(/api/tenants/{id}/webhooks/...: endpoints, deliveries with attempts, replay, secret rotation)."""

from __future__ import annotations

from datetime import UTC
from typing import Any
from uuid import UUID

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from config.openapi import error_response
from events import services
from events.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from events.types import EventType
from tenants.auth import TenantScopedMixin


class EventSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="event_id", read_only=True)
    sequence = serializers.IntegerField(source="pk", read_only=True)

    class Meta:
        model = Event
        fields = ["id", "sequence", "type", "payload", "correlation_id", "created_at"]
        read_only_fields = fields


class EventListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = EventSerializer

    def get_queryset(self) -> Any:
        queryset = Event.objects.for_tenant(self.tenant).order_by("-id")
        params = self.request.query_params
        types = [t for t in params.getlist("type") for t in t.split(",") if t]
        unknown = [t for t in types if t not in EventType.values]
        if unknown:
            raise ApiError(400, "validation_error", "Unknown event type.", {"type": unknown})
        if types:
            queryset = queryset.filter(type__in=types)
        for param, lookup in (("since", "created_at__gte"), ("until", "created_at__lt")):
            if params.get(param):
                try:
                    moment = parse_datetime(params[param])
                except ValueError:
                    moment = None
                if moment is None:
                    raise ApiError(400, "validation_error", "Invalid date-time.", {param: ["use ISO 8601"]})
                # In UTC: PostgreSQL refuses offsets beyond ±15:59 that ISO 8601 (and parse_datetime) allow.
                moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
                queryset = queryset.filter(**{lookup: moment})
        return queryset

    @extend_schema(
        parameters=[
            OpenApiParameter("type", OpenApiTypes.STR, description="event type(s), comma-separated"),
            OpenApiParameter("since", OpenApiTypes.DATETIME),
            OpenApiParameter("until", OpenApiTypes.DATETIME),
        ],
        responses={
            200: EventSerializer(many=True),
            400: error_response(400, "An unknown event `type`, or `since`/`until` not an ISO 8601 date-time."),
        },
        summary="The tenant's audit log",
        description="Everything that happened to the tenant's data, newest first: messages received and sent, "
        "handoffs, documents indexed, webhook failures... (the `type` enum lists them). The same events are "
        "sent to the tenant's webhooks; this is the place to catch up on what an endpoint missed. `sequence` "
        "increases with time; `correlation_id` ties an event to the request that caused it.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(EventSerializer(page, many=True).data)


# --- tenant webhooks ----------------------------------------------------------------------------------


class WebhookEndpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "event_types",
            "header_names",
            "is_active",
            "disabled_at",
            "disabled_reason",
            "failing_since",
            "last_success_at",
            "last_failure_at",
            "secret_rotated_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class WebhookEndpointWriteSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        max_length=100,
        help_text="Event types to receive (e.g. `message.received`); empty or omitted: all of them",
    )
    headers = serializers.DictField(
        child=serializers.CharField(max_length=4096, allow_blank=True, trim_whitespace=False),
        required=False,
        allow_empty=True,
        help_text="Custom header values, stored encrypted and never shown again (only their names).",
    )
    is_active = serializers.BooleanField(required=False)


class WebhookDeliverySerializer(serializers.ModelSerializer):
    event_id = serializers.UUIDField(source="event.event_id", read_only=True)
    event_type = serializers.CharField(source="event.type", read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "endpoint",
            "event_id",
            "event_type",
            "status",
            "attempt_count",
            "next_attempt_at",
            "last_attempt_at",
            "last_status_code",
            "last_error",
            "created_at",
            "completed_at",
        ]
        read_only_fields = fields


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["id", "started_at", "duration_ms", "status_code", "success", "response_excerpt", "error"]
        read_only_fields = fields


class WebhookDeliveryDetailSerializer(WebhookDeliverySerializer):
    attempts = WebhookAttemptSerializer(many=True, read_only=True)

    class Meta(WebhookDeliverySerializer.Meta):
        fields = [*WebhookDeliverySerializer.Meta.fields, "attempts"]
        read_only_fields = fields


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(read_only=True, help_text="`whsec_...` signing secret, shown this once")

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class ReplaySerializer(serializers.Serializer):
    since = serializers.DateTimeField(required=False, help_text="only deliveries created at or after this time")


def _webhook_error(exc: services.WebhookError) -> ApiError:
    status_code = 409 if exc.code in ("endpoint_disabled", "not_dead") else 400
    return ApiError(status_code, exc.code, exc.message, exc.fields or None)


class WebhookScopedMixin(TenantScopedMixin):
    def get_endpoint(self, webhook_id: UUID) -> WebhookEndpoint:
        endpoint = WebhookEndpoint.objects.for_tenant(self.tenant).filter(pk=webhook_id).first()
        if endpoint is None:
            raise ApiError(404, "not_found", "No such webhook endpoint.")
        return endpoint


class WebhookListView(WebhookScopedMixin, generics.GenericAPIView):
    serializer_class = WebhookEndpointSerializer

    @extend_schema(
        responses=WebhookEndpointSerializer(many=True),
        summary="List webhook endpoints",
        description="The URLs the platform POSTs the tenant's events to, with their health: `failing_since`, "
        "`last_success_at`, and `disabled_reason` when the platform disabled one after 24 h of failures.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(WebhookEndpoint.objects.for_tenant(self.tenant).order_by("created_at"))
        return self.get_paginated_response(WebhookEndpointSerializer(page, many=True).data)

    @extend_schema(
        request=WebhookEndpointWriteSerializer,
        responses={201: WebhookEndpointCreatedSerializer},
        summary="Create a webhook endpoint (the signing secret is in the answer, this once)",
        description="Subscribes a URL (HTTPS, public address) to the tenant's events (`event_types`, or all). "
        "Each event is POSTed as JSON with Standard Webhooks headers `webhook-id`, `webhook-timestamp` and "
        "`webhook-signature` (HMAC-SHA256 with the `secret` returned here once; docs/api.md shows how to verify "
        "it). A 2xx within 10 s is a success; failures are retried for about 20 hours. `headers` are sent with "
        "every call (e.g. your own Authorization) and never shown again.",
        examples=[
            OpenApiExample(
                "Handoffs to a helpdesk",
                request_only=True,
                value={
                    "url": "https://helpdesk.example/hooks/metachat",
                    "description": "Agent inbox",
                    "event_types": ["human_handoff.requested", "message.received"],
                    "headers": {"Authorization": "Bearer hd_9c1..."},
                },
            )
        ],
    )
    def post(self, request: Request, tenant_id: UUID) -> Response:
        data = WebhookEndpointWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            created = services.webhook_endpoint_create(tenant=self.tenant, **data.validated_data)
        except services.WebhookError as exc:
            raise _webhook_error(exc) from None
        body = dict(WebhookEndpointSerializer(created.endpoint).data)
        body["secret"] = created.secret
        return Response(body, status=status.HTTP_201_CREATED)


class WebhookDetailView(WebhookScopedMixin, APIView):
    @extend_schema(
        responses=WebhookEndpointSerializer,
        summary="Read a webhook endpoint",
        description="One endpoint with its subscription and health (custom header names only, never values).",
    )
    def get(self, request: Request, tenant_id: UUID, webhook_id: UUID) -> Response:
        return Response(WebhookEndpointSerializer(self.get_endpoint(webhook_id)).data)

    @extend_schema(
        request=WebhookEndpointWriteSerializer,
        responses=WebhookEndpointSerializer,
        summary="Change a webhook endpoint (is_active=true re-enables a disabled one)",
        description="Changes the fields given. `is_active: true` re-enables an endpoint the platform disabled: "
        "its paused deliveries resume (dead ones can then be replayed). `headers` replaces all custom headers.",
    )
    def patch(self, request: Request, tenant_id: UUID, webhook_id: UUID) -> Response:
        endpoint = self.get_endpoint(webhook_id)
        data = WebhookEndpointWriteSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        try:
            endpoint = services.webhook_endpoint_update(tenant=self.tenant, endpoint=endpoint, **data.validated_data)
        except services.WebhookError as exc:
            raise _webhook_error(exc) from None
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        responses={204: None},
        summary="Delete a webhook endpoint and its deliveries",
        description="No more calls to this URL; its deliveries, signing secret and custom headers are deleted.",
    )
    def delete(self, request: Request, tenant_id: UUID, webhook_id: UUID) -> Response:
        services.webhook_endpoint_delete(tenant=self.tenant, endpoint=self.get_endpoint(webhook_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookRotateSecretView(WebhookScopedMixin, APIView):
    @extend_schema(
        request=None,
        responses=inline_serializer(
            "WebhookSecretRotated",
            {
                "id": serializers.UUIDField(),
                "secret": serializers.CharField(help_text="the new `whsec_...` secret, shown this once"),
                "previous_secret_valid_until": serializers.DateTimeField(
                    allow_null=True, help_text="until then calls carry two signatures, new and previous"
                ),
            },
        ),
        summary="Rotate the signing secret (the new one is in the answer, this once)",
        description="Issues a new signing secret. During a grace period (`previous_secret_valid_until`) each "
        "call's `webhook-signature` carries two signatures, one per secret, so the receiver can switch without "
        "losing events.",
    )
    def post(self, request: Request, tenant_id: UUID, webhook_id: UUID) -> Response:
        endpoint = self.get_endpoint(webhook_id)
        secret = services.webhook_secret_rotate(tenant=self.tenant, endpoint=endpoint)
        endpoint.refresh_from_db()
        return Response(
            {
                "id": str(endpoint.pk),
                "secret": secret,
                "previous_secret_valid_until": endpoint.previous_secret_expires_at,
            }
        )


class WebhookDeliveryListView(WebhookScopedMixin, generics.GenericAPIView):
    serializer_class = WebhookDeliverySerializer

    @extend_schema(
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=WebhookDelivery.Status.values)],
        responses={200: WebhookDeliverySerializer(many=True), 400: error_response(400, "Unknown `status`.")},
        summary="Deliveries of a webhook endpoint, newest first",
        description="One delivery per event sent to this endpoint: `pending` (waiting for its next attempt), "
        "`succeeded`, or `dead` after its last retry failed. `status=dead` lists what to replay.",
    )
    def get(self, request: Request, tenant_id: UUID, webhook_id: UUID) -> Response:
        endpoint = self.get_endpoint(webhook_id)
        queryset = (
            WebhookDelivery.objects.for_tenant(self.tenant)
            .filter(endpoint=endpoint)
            .select_related("event")
            .order_by("-id")
        )
        wanted = request.query_params.get("status")
        if wanted:
            if wanted not in WebhookDelivery.Status.values:
                raise ApiError(400, "validation_error", "Unknown status.", {"status": WebhookDelivery.Status.values})
            queryset = queryset.filter(status=wanted)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)


class WebhookDeliveryLookupMixin(WebhookScopedMixin):
    def get_delivery(self, webhook_id: UUID, delivery_id: int) -> WebhookDelivery:
        endpoint = self.get_endpoint(webhook_id)
        delivery = (
            WebhookDelivery.objects.for_tenant(self.tenant)
            .filter(endpoint=endpoint, pk=delivery_id)
            .select_related("event")
            .first()
        )
        if delivery is None:
            raise ApiError(404, "not_found", "No such delivery.")
        return delivery


class WebhookDeliveryDetailView(WebhookDeliveryLookupMixin, APIView):
    @extend_schema(
        responses=WebhookDeliveryDetailSerializer,
        summary="A delivery with its attempts",
        description="Every attempt of one delivery: when, how long, the status code and the start of the "
        "receiver's answer, or the connection error. What to look at when a receiver reports missing events.",
    )
    def get(self, request: Request, tenant_id: UUID, webhook_id: UUID, delivery_id: int) -> Response:
        return Response(WebhookDeliveryDetailSerializer(self.get_delivery(webhook_id, delivery_id)).data)


class WebhookDeliveryReplayView(WebhookDeliveryLookupMixin, APIView):
    """An action: POST only; it must not inherit the delivery's GET."""

    @extend_schema(
        request=None,
        responses={
            200: WebhookDeliverySerializer,
            409: error_response(409, "The delivery is not dead, or its endpoint is disabled.", "not_dead"),
        },
        summary="Replay a dead delivery",
        description="Starts a fresh retry schedule for a dead delivery, with the same `webhook-id` (receivers "
        "that dedupe on it are safe). 409 when it is not dead or the endpoint is disabled (re-enable it first).",
    )
    def post(self, request: Request, tenant_id: UUID, webhook_id: UUID, delivery_id: int) -> Response:
        delivery = self.get_delivery(webhook_id, delivery_id)
        try:
            services.webhook_delivery_replay(tenant=self.tenant, delivery=delivery)
        except services.WebhookError as exc:
            raise _webhook_error(exc) from None
        delivery.refresh_from_db()
        return Response(WebhookDeliverySerializer(delivery).data)


class WebhookReplayView(WebhookScopedMixin, APIView):
    @extend_schema(
        request=ReplaySerializer,
        responses={
            200: inline_serializer("WebhookReplayed", {"replayed": serializers.IntegerField(min_value=0)}),
            409: error_response(409, "The endpoint is disabled: re-enable it first.", "endpoint_disabled"),
        },
        summary="Replay every dead delivery of an endpoint (optionally since a time)",
        description="After an outage of the receiver: every dead delivery of this endpoint (created at or "
        "after `since`, if given) starts a fresh retry schedule. The answer counts them.",
        examples=[OpenApiExample("Since the outage", value={"since": "2026-01-01T08:00:00Z"}, request_only=True)],
    )
    def post(self, request: Request, tenant_id: UUID, webhook_id: UUID) -> Response:
        endpoint = self.get_endpoint(webhook_id)
        data = ReplaySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            count = services.webhook_deliveries_replay(
                tenant=self.tenant, endpoint=endpoint, since=data.validated_data.get("since")
            )
        except services.WebhookError as exc:
            raise _webhook_error(exc) from None
        return Response({"replayed": count})
