"""Channels over REST: /api/tenants/{id}/channels/. Credentials are write-only: answers list which
ones are set, never their values. Views validate input and call channels_app.services."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from channels_app import services
from channels_app.models import Channel, new_widget_key
from config.errors import ApiError
from tenants.auth import TenantScopedMixin


class CredentialsSerializer(serializers.Serializer):
    app_secret = serializers.CharField(max_length=512, required=False, trim_whitespace=True, write_only=True)
    access_token = serializers.CharField(max_length=4096, required=False, trim_whitespace=True, write_only=True)
    verify_token = serializers.CharField(max_length=512, required=False, trim_whitespace=True, write_only=True)


class ChannelSerializer(serializers.ModelSerializer):
    credentials_set = serializers.SerializerMethodField()
    webhook_url = serializers.SerializerMethodField()

    class Meta:
        model = Channel
        fields = [
            "id",
            "type",
            "name",
            "is_active",
            "external_id",
            "config",
            "sending_disabled_reason",
            "credentials_set",
            "webhook_url",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_credentials_set(self, channel: Channel) -> list[str]:
        return services.channel_credential_names(channel=channel)

    def get_webhook_url(self, channel: Channel) -> str:
        if channel.type not in services.META_PLATFORMS:
            return ""
        return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/webhooks/{channel.type}"


class ChannelCreateSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=Channel.Type.choices)
    name = serializers.CharField(max_length=200)
    external_id = serializers.CharField(
        max_length=128,
        required=False,
        allow_blank=True,
        default="",
        help_text=(
            "WhatsApp phone_number_id or Messenger page id (web chat: generated widget key). Meta must confirm "
            "that credentials.access_token can read it (docs/channels.md, 'Claiming an id')."
        ),
    )
    is_active = serializers.BooleanField(required=False, default=True)
    config = serializers.JSONField(
        required=False, default=dict, help_text="Public settings, e.g. display_phone_number."
    )
    credentials = CredentialsSerializer(required=False)

    def validate_config(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        return value


class ChannelUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    external_id = serializers.CharField(max_length=128, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)
    config = serializers.JSONField(required=False)
    credentials = CredentialsSerializer(required=False)

    def validate_config(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        return value


def _channel_error(exc: services.ChannelError) -> ApiError:
    status_code, code = {"conflict": (409, "conflict"), "unavailable": (503, "graph_api_unavailable")}.get(
        exc.code, (400, "validation_error")
    )
    return ApiError(status_code, code, str(exc), {exc.field: [str(exc)]} if exc.field else None)


class ChannelListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = ChannelSerializer

    def get_queryset(self) -> Any:
        queryset = Channel.objects.for_tenant(self.tenant).order_by("name", "created_at")
        kind = self.request.query_params.get("type")
        return queryset.filter(type=kind) if kind else queryset

    @extend_schema(responses=ChannelSerializer(many=True), summary="List channels (never credentials)")
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ChannelSerializer(page, many=True).data)

    @extend_schema(request=ChannelCreateSerializer, responses={201: ChannelSerializer}, summary="Create a channel")
    def post(self, request: Request, tenant_id: UUID) -> Response:
        data = ChannelCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        if values["type"] == Channel.Type.WEBCHAT and not values["external_id"]:
            values["external_id"] = new_widget_key()
        try:
            channel = services.channel_create(tenant=self.tenant, verify_claim=True, **values)
        except services.ChannelError as exc:
            raise _channel_error(exc) from None
        return Response(ChannelSerializer(channel).data, status=status.HTTP_201_CREATED)


class _ChannelLookup(TenantScopedMixin):
    def get_channel(self, channel_id: UUID) -> Channel:
        channel = Channel.objects.for_tenant(self.tenant).filter(pk=channel_id).first()
        if channel is None:
            raise ApiError(404, "not_found", "No such channel.")
        return channel


class ChannelDetailView(_ChannelLookup, APIView):
    @extend_schema(responses=ChannelSerializer, summary="Read a channel")
    def get(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        return Response(ChannelSerializer(self.get_channel(channel_id)).data)

    @extend_schema(request=ChannelUpdateSerializer, responses=ChannelSerializer, summary="Update a channel")
    def patch(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        channel = self.get_channel(channel_id)
        data = ChannelUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        credentials = values.pop("credentials", None)
        try:
            if values:
                services.channel_update(
                    channel=channel,
                    verify_claim=True,
                    access_token=(credentials or {}).get("access_token", ""),
                    **values,
                )
            if credentials:
                services.channel_set_credentials(channel=channel, credentials=credentials)
        except services.ChannelError as exc:
            raise _channel_error(exc) from None
        channel.refresh_from_db()
        return Response(ChannelSerializer(channel).data)

    put = patch

    @extend_schema(responses={204: None}, summary="Delete a channel (its conversations go with it)")
    def delete(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        services.channel_delete(channel=self.get_channel(channel_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ChannelCredentialsView(_ChannelLookup, APIView):
    @extend_schema(
        request=CredentialsSerializer,
        responses={200: ChannelSerializer},
        summary="Set credentials (write-only; merged with those already set)",
    )
    def put(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        channel = self.get_channel(channel_id)
        data = CredentialsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if not data.validated_data:
            raise ApiError(400, "validation_error", "Give at least one of app_secret, access_token, verify_token.")
        services.channel_set_credentials(channel=channel, credentials=dict(data.validated_data))
        channel.refresh_from_db()
        return Response(ChannelSerializer(channel).data)

    patch = put
