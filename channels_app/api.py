"""Channels over REST: /api/tenants/{id}/channels/. Credentials are write-only: answers list which
ones are set, never their values. Views validate input and call channels_app.services."""

from __future__ import annotations

from collections.abc import Callable
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
from channels_app.adapters.base import Choice, Choices, InvalidChoices, InvalidMedia, OutboundMedia, SendError
from channels_app.models import Campaign, Channel, MessageTemplate, new_widget_key
from channels_app.services import campaigns, conversation_sends, outbound_media, templates, window
from config.errors import ApiError
from config.openapi import error_response
from conversations.api import MessageSerializer
from conversations.models import Conversation, Message
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


# --- WhatsApp message templates ------------------------------------------------------------------------


class TemplateSerializer(serializers.ModelSerializer):
    variables = serializers.SerializerMethodField(help_text="What a send must supply: body names, header kind")
    preview = serializers.SerializerMethodField(help_text="The message as the contact reads it, unfilled")
    sendable = serializers.SerializerMethodField(help_text="Only APPROVED templates can be sent")

    class Meta:
        model = MessageTemplate
        fields = [
            "id",
            "name",
            "language",
            "category",
            "status",
            "rejected_reason",
            "parameter_format",
            "components",
            "variables",
            "preview",
            "sendable",
            "synced_at",
        ]
        read_only_fields = fields

    def get_variables(self, template: MessageTemplate) -> dict[str, Any]:
        return templates.template_variables(template)

    def get_preview(self, template: MessageTemplate) -> str:
        return templates.template_preview(template)

    def get_sendable(self, template: MessageTemplate) -> bool:
        return template.status.upper() == "APPROVED"


class TemplateSyncSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    removed = serializers.IntegerField()
    total = serializers.IntegerField()
    templates = TemplateSerializer(many=True)


class TemplateSendSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=512)
    language = serializers.CharField(max_length=16)
    variables = serializers.JSONField(
        required=False,
        default=dict,
        help_text='{"body": ["Ana", "A42"]} (positional) or {"body": {"first_name": "Ana"}} (named); '
        '"header": its text, or {"link": "https://..."} / {"id": "<media id>"} for a media header',
    )


def _template_error(exc: templates.TemplateError) -> ApiError:
    status_code = {"not_found": 404, "template_not_sendable": 409}.get(exc.code, 400)
    return ApiError(status_code, exc.code, str(exc), exc.details or None)


class ChannelTemplateListView(_ChannelLookup, APIView):
    @extend_schema(
        responses={200: TemplateSerializer(many=True)},
        summary="List a WhatsApp channel's message templates",
        description="The templates of the channel's WhatsApp Business Account as last synced, with what a send "
        "must supply (`variables`) and a `preview`. Only `sendable` (APPROVED) ones can be sent.",
    )
    def get(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        channel = self.get_channel(channel_id)
        rows = MessageTemplate.objects.for_tenant(self.tenant).filter(channel=channel)
        return Response(TemplateSerializer(rows, many=True).data)


class ChannelTemplateSyncView(_ChannelLookup, APIView):
    @extend_schema(
        request=None,
        responses={
            200: TemplateSyncSerializer,
            400: error_response(400, "No WhatsApp Business Account id (config.waba_id) or not WhatsApp.", "no_account"),
            503: error_response(503, "Meta's Graph API could not be asked now; try again later.", "graph_unavailable"),
        },
        summary="Sync a WhatsApp channel's templates from Meta",
        description="Reads every template of the channel's WhatsApp Business Account (`config.waba_id`) from the "
        "Graph API and replaces the stored ones: name, language, category, status (and why Meta rejected or "
        "paused one), components.",
    )
    def post(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        channel = self.get_channel(channel_id)
        try:
            result = templates.templates_sync(channel=channel)
        except templates.TemplateError as exc:
            raise _template_error(exc) from None
        except SendError as exc:
            if exc.permanent:
                raise ApiError(502, "graph_refused", f"Meta refused the template list: {exc}") from None
            raise ApiError(503, "graph_unavailable", "Meta's Graph API could not be asked now.") from None
        rows = MessageTemplate.objects.for_tenant(self.tenant).filter(channel=channel)
        return Response({**result.as_dict(), "templates": TemplateSerializer(rows, many=True).data})


class _ConversationSend(TenantScopedMixin, APIView):
    """What the sends to a conversation share (templates, options to tap, files): the tenant's
    conversation, the agent sending, and the stored message's answer."""

    def conversation(self, conversation_id: UUID) -> Conversation:
        found = Conversation.objects.for_tenant(self.tenant).filter(pk=conversation_id).first()
        if found is None:
            raise ApiError(404, "not_found", "No such conversation.")
        return found

    def sender(self, request: Request) -> Any:
        return request.user if getattr(request.user, "is_authenticated", False) else None

    @staticmethod
    def sent(send: Callable[[], Message]) -> Response:
        """201 with the stored message; 409 outside the customer-service window; 502 when it was stored
        but the channel did not accept it."""
        try:
            message = send()
        except window.OutsideWindow as exc:
            raise ApiError(409, window.OUTSIDE_WINDOW, str(exc), exc.details) from None
        if message.status == Message.Status.FAILED:
            raise ApiError(
                502,
                "not_delivered",
                "The message was stored but the channel did not accept it.",
                {"message_id": message.pk, "error": message.error},
            )
        return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)


class ConversationTemplateView(_ConversationSend):
    @extend_schema(
        request=TemplateSendSerializer,
        responses={
            201: MessageSerializer,
            404: error_response(404, "No such conversation, or no such template on its channel.", "not_found"),
            409: error_response(409, "The template is not approved (rejected, paused, ...): the reason is given.",
                                "template_not_sendable"),
            502: error_response(502, "The message is stored but Meta refused it.", "not_delivered"),
        },
        summary="Send a WhatsApp template into a conversation",
        description="The way to reach a contact outside the 24-hour customer-service window. The template must "
        "be APPROVED; `variables` fill its body (and a header's text or media). The message is stored as the "
        "agent's (kind `template`, the text the contact reads) and the conversation moves to `agent`.",
        examples=[
            OpenApiExample(
                "Order update",
                value={"name": "order_update", "language": "en_US", "variables": {"body": ["Ana", "A42"]}},
                request_only=True,
            )
        ],
    )  # fmt: skip
    def post(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        data = TemplateSendSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation, values = self.conversation(conversation_id), data.validated_data
        try:
            return self.sent(
                lambda: templates.conversation_send_template(
                    tenant=self.tenant,
                    conversation=conversation,
                    name=values["name"],
                    language=values["language"],
                    variables=values.get("variables") or {},
                    user=self.sender(request),
                )
            )
        except templates.TemplateError as exc:
            raise _template_error(exc) from None


# --- options to tap ------------------------------------------------------------------------------------


class ChoiceSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=1000, help_text="Comes back as the tap's reply.payload")
    title = serializers.CharField(max_length=24)
    description = serializers.CharField(max_length=72, required=False, default="")


class ChoicesSendSerializer(serializers.Serializer):
    body = serializers.CharField(max_length=4096)
    options = ChoiceSerializer(many=True)
    header = serializers.CharField(max_length=60, required=False, default="")
    footer = serializers.CharField(max_length=60, required=False, default="")
    button_label = serializers.CharField(max_length=20, required=False, default="")
    layout = serializers.ChoiceField(
        choices=["auto", "buttons", "list"],
        required=False,
        default="auto",
        help_text="WhatsApp: auto (buttons when up to 3 without descriptions, else a list), buttons or list",
    )


class ConversationChoicesView(_ConversationSend):
    @extend_schema(
        request=ChoicesSendSerializer,
        responses={
            201: MessageSerializer,
            400: error_response(400, "The platform cannot show these options (count, lengths).", "invalid_choices"),
            404: error_response(404, "No such conversation.", "not_found"),
            409: error_response(409, "The customer-service window has closed: send a template.",
                                "outside_customer_service_window"),
            502: error_response(502, "The message is stored but the channel refused it.", "not_delivered"),
        },
        summary="Offer options to tap in a conversation",
        description="WhatsApp: reply buttons (up to 3) or a list (up to 10 rows); Messenger: quick replies (up to "
        "13); other channels: numbered text. The contact's tap comes back as an inbound message whose "
        "`reply.payload` is the option's `id`. Stored as the agent's message (kind `choices`).",
        examples=[
            OpenApiExample(
                "Delivery slot",
                value={"body": "When should we deliver?", "options": [
                    {"id": "slot_am", "title": "Morning"}, {"id": "slot_pm", "title": "Afternoon"}]},
                request_only=True,
            )
        ],
    )  # fmt: skip
    def post(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        data = ChoicesSendSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = self.conversation(conversation_id)
        values = dict(data.validated_data)
        options = [Choice(**o) for o in values.pop("options")]
        choices = Choices(options=options, style=values.pop("layout"), **values)
        try:
            return self.sent(
                lambda: conversation_sends.conversation_send_choices(
                    tenant=self.tenant, conversation=conversation, choices=choices, user=self.sender(request)
                )
            )
        except InvalidChoices as exc:
            raise ApiError(400, "invalid_choices", str(exc)) from None


# --- files ---------------------------------------------------------------------------------------------


class MediaSendSerializer(serializers.Serializer):
    file = serializers.FileField(required=False, help_text="The file (multipart); uploaded to the platform")
    link = serializers.URLField(required=False, help_text="Or an https URL the platform fetches")
    kind = serializers.ChoiceField(
        choices=["image", "audio", "video", "document", "sticker"],
        required=False,
        help_text="Default: from the file's type (image/audio/video, else document)",
    )
    mime_type = serializers.CharField(max_length=127, required=False, help_text="Default: the upload's type")
    filename = serializers.CharField(max_length=240, required=False, default="")
    caption = serializers.CharField(max_length=1024, required=False, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("file")) == bool(attrs.get("link")):
            raise serializers.ValidationError("give either file or link")
        return attrs


class ConversationMediaView(_ConversationSend):
    @extend_schema(
        request={"multipart/form-data": MediaSendSerializer, "application/json": MediaSendSerializer},
        responses={
            201: MessageSerializer,
            400: error_response(400, "The platform does not take this file (type, size).", "invalid_media"),
            404: error_response(404, "No such conversation.", "not_found"),
            409: error_response(409, "The customer-service window has closed: send a template.",
                                "outside_customer_service_window"),
            502: error_response(502, "The message is stored but the channel refused it.", "not_delivered"),
        },
        summary="Send a file (image, document, audio, video) into a conversation",
        description="Upload a `file` (multipart; uploaded to Meta's media endpoint, then sent by id) or give an "
        "https `link` Meta fetches. WhatsApp: images JPEG/PNG up to 5 MB, audio and video up to 16 MB, "
        "documents (PDF, Office, text) up to 100 MB; Messenger: up to 25 MB. Stored as the agent's message "
        "(kind = the media kind, content = the caption).",
    )  # fmt: skip
    def post(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        data = MediaSendSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = self.conversation(conversation_id)
        values = data.validated_data
        upload = values.get("file")
        content = None
        mime = values.get("mime_type") or ""
        filename = values.get("filename") or ""
        if upload is not None:
            limit = settings.CHANNEL_MEDIA_SEND_MAX_BYTES
            if upload.size > limit:
                raise ApiError(413, "payload_too_large", f"Files are at most {limit // (1024 * 1024)} MB.")
            content = upload.read()
            mime = mime or upload.content_type or "application/octet-stream"
            filename = filename or upload.name or ""
        media = OutboundMedia(
            kind=values.get("kind") or outbound_media.media_kind(mime),
            link=values.get("link") or "",
            content=content,
            mime_type=mime,
            filename=filename,
            caption=values.get("caption") or "",
        )
        try:
            return self.sent(
                lambda: outbound_media.conversation_send_media(
                    tenant=self.tenant, conversation=conversation, media=media, user=self.sender(request)
                )
            )
        except InvalidMedia as exc:
            raise ApiError(400, "invalid_media", str(exc)) from None


# --- campaigns -----------------------------------------------------------------------------------------


class ConsentImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV with a `contact` column (phone number or BSUID); other columns "
                                 "are the contact's variables for campaign templates")  # fmt: skip
    opt_in_source = serializers.CharField(
        max_length=100, required=False, default="csv", help_text="Where these contacts opted in (kept with each)"
    )


class ConsentImportResultSerializer(serializers.Serializer):
    imported = serializers.IntegerField()
    opted_out = serializers.IntegerField(help_text="Contacts who opted out: kept out, forever")
    invalid = serializers.IntegerField()


class CampaignSerializer(serializers.ModelSerializer):
    template = serializers.SerializerMethodField()
    totals = serializers.SerializerMethodField()

    class Meta:
        model = Campaign
        fields = [
            "id", "channel", "name", "template", "variables", "status", "scheduled_at", "quiet_start",
            "quiet_end", "rate_per_second", "daily_limit", "totals", "created_at", "started_at", "finished_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_template(self, campaign: Campaign) -> dict[str, str]:
        return {"name": campaign.template.name, "language": campaign.template.language}

    def get_totals(self, campaign: Campaign) -> dict[str, int]:
        known = self.context.get("totals")  # a list's, counted at once
        return known[campaign.pk] if known is not None else campaigns.campaign_totals(campaign)


class CampaignCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    template_name = serializers.CharField(max_length=512)
    language = serializers.CharField(max_length=16)
    variables = serializers.JSONField(
        required=False, default=dict, help_text='As for a template send; "{column}" is the contact\'s own value'
    )
    scheduled_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    quiet_start = serializers.TimeField(required=False, allow_null=True, default=None, help_text="UTC")
    quiet_end = serializers.TimeField(required=False, allow_null=True, default=None, help_text="UTC")
    rate_per_second = serializers.FloatField(required=False, allow_null=True, default=None)
    daily_limit = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)


class ChannelConsentImportView(_ChannelLookup, APIView):
    @extend_schema(
        request={"multipart/form-data": ConsentImportSerializer},
        responses={200: ConsentImportResultSerializer},
        summary="Import opted-in contacts (CSV) for campaigns",
        description="Records each contact's opt-in with its source and time. A contact who opted out (sent an "
        "opt-out word such as STOP) stays out: no import opts them in again.",
    )
    def post(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        channel = self.get_channel(channel_id)
        data = ConsentImportSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            text = data.validated_data["file"].read().decode("utf-8-sig")
            counts = campaigns.consent_import_csv(
                channel=channel, text=text, source=data.validated_data["opt_in_source"]
            )
        except (UnicodeDecodeError, campaigns.CampaignError) as exc:
            raise ApiError(400, "invalid_csv", str(exc)) from None
        return Response(counts)


class ChannelCampaignListView(_ChannelLookup, generics.GenericAPIView):
    serializer_class = CampaignSerializer

    @extend_schema(responses={200: CampaignSerializer(many=True)}, summary="List a channel's campaigns, newest first")
    def get(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        channel = self.get_channel(channel_id)
        rows = (
            Campaign.objects.for_tenant(self.tenant)
            .filter(channel=channel)
            .select_related("template")
            .order_by("-created_at")
        )
        page = self.paginate_queryset(rows) or []
        totals = campaigns.campaigns_totals([c.pk for c in page])
        return self.get_paginated_response(CampaignSerializer(page, many=True, context={"totals": totals}).data)

    @extend_schema(
        request=CampaignCreateSerializer,
        responses={201: CampaignSerializer, 404: error_response(404, "No such template.", "not_found"),
                   409: error_response(409, "The template is not approved.", "template_not_sendable")},
        summary="Create a campaign (a draft until started)",
        description="An approved template for the channel's opted-in contacts, with per-contact variables, an "
        "optional schedule and quiet hours (UTC), throttled to `rate_per_second` (Meta's default throughput: "
        "80/s) and `daily_limit` (the number's messaging tier).",
    )  # fmt: skip
    def post(self, request: Request, tenant_id: UUID, channel_id: UUID) -> Response:
        channel = self.get_channel(channel_id)
        data = CampaignCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        try:
            template = templates.template_get(
                channel=channel, name=values.pop("template_name"), language=values.pop("language")
            )
            campaign = campaigns.campaign_create(channel=channel, template=template, **values)
        except templates.TemplateError as exc:
            raise _template_error(exc) from None
        except campaigns.CampaignError as exc:
            raise ApiError(400, exc.code, str(exc)) from None
        return Response(CampaignSerializer(campaign).data, status=status.HTTP_201_CREATED)


class _CampaignMixin(TenantScopedMixin):
    def campaign(self, campaign_id: UUID) -> Campaign:
        found = Campaign.objects.for_tenant(self.tenant).filter(pk=campaign_id).select_related("template").first()
        if found is None:
            raise ApiError(404, "not_found", "No such campaign.")
        return found


class CampaignDetailView(_CampaignMixin, APIView):
    @extend_schema(responses={200: CampaignSerializer}, summary="A campaign and its totals")
    def get(self, request: Request, tenant_id: UUID, campaign_id: UUID) -> Response:
        return Response(CampaignSerializer(self.campaign(campaign_id)).data)


class CampaignActionView(_CampaignMixin, APIView):
    """start / pause / resume: POST only (an action URL answers 405 to GET, as every action does)."""

    action = ""

    @extend_schema(
        request=None,
        responses={
            200: CampaignSerializer,
            409: error_response(409, "Only a draft campaign can be started.", "campaign_state"),
        },
        summary="Start, pause or resume a campaign",
        description="start: snapshot the opted-in audience (nobody twice) and send (a draft only: 409 "
        "`campaign_state` otherwise); pause: stop after the current batch; resume: go on.",
    )
    def post(self, request: Request, tenant_id: UUID, campaign_id: UUID) -> Response:
        campaign = self.campaign(campaign_id)
        try:
            {"start": lambda: campaigns.campaign_start(campaign=campaign),
             "pause": lambda: campaigns.campaign_pause(campaign=campaign),
             "resume": lambda: campaigns.campaign_resume(campaign=campaign)}[self.action]()  # fmt: skip
        except campaigns.CampaignStateError as exc:
            raise ApiError(409, "campaign_state", str(exc)) from None
        campaign.refresh_from_db()
        return Response(CampaignSerializer(campaign).data)
