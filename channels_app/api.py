"""Channels over REST: /api/tenants/{id}/channels/. Credentials are write-only: answers list which
ones are set, never their values. Views validate input and call channels_app.services."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from channels_app import services
from channels_app.models import Channel, new_widget_key
from config.errors import ApiError
from config.openapi import error_response
from tenants.auth import TenantScopedMixin


class CredentialsSerializer(serializers.Serializer):
    app_secret = serializers.CharField(
        max_length=512,
        required=False,
        trim_whitespace=True,
        write_only=True,
        help_text="The Meta app's secret: checks the X-Hub-Signature-256 of Meta's webhook calls",
    )
    access_token = serializers.CharField(
        max_length=4096,
        required=False,
        trim_whitespace=True,
        write_only=True,
        help_text="A Graph API token with access to the number or page, to send replies",
    )
    verify_token = serializers.CharField(
        max_length=512,
        required=False,
        trim_whitespace=True,
        write_only=True,
        help_text="The token you type in Meta's webhook setup; answered back at its verification",
    )


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


_CHANNEL_ERRORS = {
    409: error_response(409, "Another channel already has this type and external_id.", "conflict"),
    503: error_response(
        503, "Meta's Graph API could not be reached to check the claim; retry.", "graph_api_unavailable"
    ),
}


class ChannelListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = ChannelSerializer

    def get_queryset(self) -> Any:
        queryset = Channel.objects.for_tenant(self.tenant).order_by("name", "created_at")
        kind = self.request.query_params.get("type")
        return queryset.filter(type=kind) if kind else queryset

    @extend_schema(
        parameters=[OpenApiParameter("type", OpenApiTypes.STR, enum=Channel.Type.values, description="only this type")],
        responses=ChannelSerializer(many=True),
        summary="List channels (never credentials)",
        description="The tenant's channels by name. `credentials_set` says which credentials are stored (never "
        "their values); `webhook_url` is the callback URL to give Meta for WhatsApp and Messenger channels.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ChannelSerializer(page, many=True).data)

    @extend_schema(
        request=ChannelCreateSerializer,
        responses={201: ChannelSerializer, **_CHANNEL_ERRORS},
        summary="Create a channel",
        description="Connects a WhatsApp number, a Messenger page or a web chat widget. For WhatsApp and "
        "Messenger, `external_id` is the phone_number_id or page id and `credentials.access_token` must be able "
        "to read it (checked with Meta: 400 otherwise; 409 if another channel has it); then set the answer's "
        "`webhook_url` and your `verify_token` in Meta's app dashboard. For web chat, `external_id` is generated: "
        "it is the widget key to put in your page, and `config.allowed_origins` lists the sites allowed to "
        "embed it.",
        examples=[
            OpenApiExample(
                "Web chat",
                request_only=True,
                value={"type": "webchat", "name": "Website", "config": {"allowed_origins": ["https://shop.example"]}},
            ),
            OpenApiExample(
                "WhatsApp",
                request_only=True,
                value={
                    "type": "whatsapp",
                    "name": "Support line",
                    "external_id": "109876543210987",
                    "config": {"display_phone_number": "+33 1 23 45 67 89"},
                    "credentials": {
                        "access_token": "EAAG...",
                        "app_secret": "9f8e7d...",
                        "verify_token": "a-long-random-string",
                    },
                },
            ),
        ],
    )
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
    @extend_schema(
        responses=ChannelSerializer,
        summary="Read a channel",
        description="One channel; `sending_disabled_reason` says why replies are not being sent (e.g. Meta "
        "refused the token), empty when all is well.",
    )
    def get(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        return Response(ChannelSerializer(self.get_channel(channel_id)).data)

    @extend_schema(
        request=ChannelUpdateSerializer,
        responses={200: ChannelSerializer, **_CHANNEL_ERRORS},
        summary="Update a channel",
        description="Changes the fields given. A new `external_id` is checked with Meta like at creation; "
        "`credentials` are merged with those stored. `is_active=false` stops answering on the channel.",
    )
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

    @extend_schema(
        responses={204: None},
        summary="Delete a channel (its conversations go with it)",
        description="Deletes the channel with its conversations and messages. Remove the webhook in Meta's "
        "dashboard too; its calls for this number or page are then ignored.",
    )
    def delete(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        services.channel_delete(channel=self.get_channel(channel_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ChannelCredentialsView(_ChannelLookup, APIView):
    @extend_schema(
        request=CredentialsSerializer,
        responses={200: ChannelSerializer},
        summary="Set credentials (write-only; merged with those already set)",
        description="Stores credentials encrypted, e.g. to rotate an expired access token. Only the ones given "
        "change; none is ever returned (`credentials_set` lists which are set).",
        examples=[OpenApiExample("Rotate the token", value={"access_token": "EAAG..."}, request_only=True)],
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
