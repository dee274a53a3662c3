"""The audit log over REST: /api/tenants/{id}/events/ (filter by type and time, paginated)."""

from __future__ import annotations

from typing import Any

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import ApiError
from events.models import Event
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
                moment = parse_datetime(params[param])
                if moment is None:
                    raise ApiError(400, "validation_error", "Invalid date-time.", {param: ["use ISO 8601"]})
                queryset = queryset.filter(**{lookup: moment})
        return queryset

    @extend_schema(
        parameters=[
            OpenApiParameter("type", OpenApiTypes.STR, description="event type(s), comma-separated"),
            OpenApiParameter("since", OpenApiTypes.DATETIME),
            OpenApiParameter("until", OpenApiTypes.DATETIME),
        ],
        responses=EventSerializer(many=True),
        summary="The tenant's audit log",
    )
    def get(self, request: Request, tenant_id: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(EventSerializer(page, many=True).data)
