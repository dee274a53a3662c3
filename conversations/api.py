"""Conversations, transcripts, agent actions and tenant functions over REST. Thin views over
``conversations.services`` and ``conversations.selectors``; every view is tenant-scoped."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from channels_app.services import window
from config.errors import ApiError
from config.openapi import error_response
from conversations import selectors, services
from conversations.models import Contact, Conversation, Message, TenantFunction
from conversations.state import ALLOWED, InvalidTransition
from conversations.tools import FunctionDefinitionError
from tenants.auth import TenantScopedMixin

# --- serializers ----------------------------------------------------------------------------------------


class ContactSerializer(serializers.ModelSerializer):
    class Meta:
        model = Contact
        fields = ["id", "external_id", "profile_name", "language", "created_at", "last_seen_at"]
        read_only_fields = fields


class ConversationSerializer(serializers.ModelSerializer):
    contact = ContactSerializer(read_only=True)
    channel_type = serializers.CharField(source="channel.type", read_only=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "channel_id",
            "channel_type",
            "contact",
            "state",
            "handoff_reason",
            "context_start_message_id",
            "last_activity_at",
            "created_at",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "language",
            "sentiment",
            "tags",
        ]
        read_only_fields = fields


class MessageSerializer(serializers.ModelSerializer):
    sources = serializers.SerializerMethodField()
    tool_call = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "direction",
            "sender",
            "kind",
            "content",
            "status",
            "error",
            "platform_message_id",
            "sources",
            "tool_call",
            "payload",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "timings",
            "agent_user_id",
            "created_at",
        ]
        read_only_fields = fields

    def get_sources(self, message: Message) -> list[dict[str, Any]]:
        return list((message.payload or {}).get("sources") or [])

    def get_tool_call(self, message: Message) -> dict[str, Any] | None:
        if message.sender != Message.Sender.TOOL:
            return None
        payload = message.payload or {}
        return {k: payload.get(k) for k in ("name", "arguments", "ok", "error", "result", "status_code", "duration_ms")}


class ReplySerializer(serializers.Serializer):
    text = serializers.CharField(max_length=4096, trim_whitespace=True)


class FunctionSerializer(serializers.ModelSerializer):
    class Meta:
        model = TenantFunction
        fields = [
            "id",
            "name",
            "description",
            "parameters",
            "endpoint_url",
            "timeout_seconds",
            "auth_header_name",
            "auth_secret_name",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]


class FunctionCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=64)
    description = serializers.CharField(max_length=1024)
    parameters = serializers.JSONField(required=False)
    endpoint_url = serializers.CharField(max_length=1000)
    timeout_seconds = serializers.FloatField(required=False, default=10.0)
    auth_header_name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    auth_secret_name = serializers.CharField(max_length=120, required=False, allow_blank=True, default="")
    is_active = serializers.BooleanField(required=False, default=True)


class FunctionUpdateSerializer(serializers.Serializer):
    description = serializers.CharField(max_length=1024, required=False)
    parameters = serializers.JSONField(required=False)
    endpoint_url = serializers.CharField(max_length=1000, required=False)
    timeout_seconds = serializers.FloatField(required=False)
    auth_header_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    auth_secret_name = serializers.CharField(max_length=120, required=False, allow_blank=True)
    is_active = serializers.BooleanField(required=False)


def _definition_error(exc: FunctionDefinitionError) -> ApiError:
    return ApiError(400, "validation_error", "Invalid function definition; see details for each field.", exc.errors)


def _date_param(request: Request, name: str) -> Any:
    raw = request.query_params.get(name)
    if not raw:
        return None
    value = parse_datetime(raw) or parse_date(raw)
    if value is None:
        raise ApiError(400, "validation_error", f"'{name}' must be an ISO date or date-time.", {name: [raw]})
    return value


# --- conversations -------------------------------------------------------------------------------------


class ConversationMixin(TenantScopedMixin):
    kwargs: dict[str, Any]

    def conversation(self) -> Conversation:
        try:
            return selectors.conversation_get(tenant=self.tenant, conversation_id=self.kwargs["conversation_id"])
        except Conversation.DoesNotExist:
            raise ApiError(404, "not_found", "No such conversation.") from None


class ConversationListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = ConversationSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=[s.value for s in Conversation.State]),
            OpenApiParameter("channel", str, description="channel id"),
            OpenApiParameter("since", str, description="last activity at or after (ISO date/time)"),
            OpenApiParameter("until", str, description="last activity before (ISO date/time)"),
            OpenApiParameter("sentiment", str, enum=["negative", "neutral", "positive"]),
            OpenApiParameter("tag", str, description="one of the tenant's conversation categories"),
        ],
        responses={200: ConversationSerializer(many=True), 400: error_response(400)},
        summary="List conversations (waiting for a human first)",
        description="The tenant's conversations across channels, those waiting for a human (`handoff_requested`) "
        "first, then by last activity, newest first. Filter by `state`, by `channel` id and by a period of last "
        "activity (`since` inclusive, `until` exclusive; ISO 8601 date or date-time), by `sentiment` and by `tag` (the "
        "user's sentiment and the tenant's categories, analysed about a minute after the user writes). An agent inbox polls this "
        "with `state=handoff_requested`, or follows the `human_handoff.requested` webhook event instead.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        state = request.query_params.get("state") or None
        if state and state not in Conversation.State.values:
            raise ApiError(
                400, "validation_error", "Unknown state.", {"state": [f"one of {', '.join(Conversation.State.values)}"]}
            )
        channel = request.query_params.get("channel") or None
        if channel:
            import uuid

            try:
                uuid.UUID(channel)
            except ValueError:
                raise ApiError(
                    400, "validation_error", "'channel' must be a channel id.", {"channel": [channel]}
                ) from None
        sentiment = request.query_params.get("sentiment") or None
        if sentiment and sentiment not in {"negative", "neutral", "positive"}:
            raise ApiError(
                400, "validation_error", "Unknown sentiment.", {"sentiment": ["one of negative, neutral, positive"]}
            )
        queryset = selectors.conversation_list(
            tenant=self.tenant,
            state=state,
            channel_id=channel,
            since=_date_param(request, "since"),
            until=_date_param(request, "until"),
            sentiment=sentiment,
            tag=request.query_params.get("tag") or None,
        )
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(ConversationSerializer(page, many=True).data)


class ConversationDetailView(ConversationMixin, APIView):
    @extend_schema(
        responses=ConversationSerializer,
        summary="Read a conversation",
        description="One conversation: its contact, channel, state (`bot`, `handoff_requested`, `agent`, "
        "`resolved`) and the tokens and estimated LLM cost it has used so far.",
    )
    def get(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        return Response(ConversationSerializer(self.conversation()).data)


class ConversationMessagesView(ConversationMixin, generics.GenericAPIView):
    serializer_class = MessageSerializer

    @extend_schema(
        responses=MessageSerializer(many=True),
        summary="The transcript: messages, sources, tool calls",
        description="Every message of the conversation, oldest first: the contact's messages, the assistant's "
        "replies with the document passages they cited (`sources`), the functions it called (`tool_call`) and "
        "human agents' replies, with each message's delivery `status` (`sent`, `delivered`, `read`, `failed`).",
    )
    def get(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        queryset = selectors.transcript(tenant=self.tenant, conversation=self.conversation())
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(MessageSerializer(page, many=True).data)


class ConversationReplyView(ConversationMixin, APIView):
    @extend_schema(
        request=ReplySerializer,
        responses={
            201: MessageSerializer,
            502: error_response(
                502, "The reply is stored but the channel (e.g. Meta's Graph API) refused it.", "not_delivered"
            ),
            409: error_response(
                409,
                "The contact's customer-service window has closed: nothing was stored or sent; send an approved "
                "template instead.",
                "outside_customer_service_window",
            ),
        },
        summary="Reply as a human agent",
        description="Sends `text` to the contact on the conversation's channel, as a human agent. Replying takes "
        "the conversation over from the bot (state `agent`; a resolved one reopens): the assistant stays quiet "
        "until it is returned to the bot. The answer is the stored message; 502 `not_delivered` when the channel "
        "refused it (e.g. WhatsApp's 24-hour window has closed).",
        examples=[OpenApiExample("A reply", value={"text": "Hi, I'm Ana from support: your order left today."})],
    )
    def post(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        data = ReplySerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = self.conversation()
        try:  # outside the window: refused before anything is stored or sent
            services.check_reply_window(conversation)
        except window.OutsideWindow as exc:
            raise ApiError(409, window.OUTSIDE_WINDOW, str(exc), exc.details) from None
        try:
            message = services.agent_reply(
                tenant=self.tenant, conversation=conversation, text=data.validated_data["text"]
            )
        except ValueError as exc:
            raise ApiError(400, "validation_error", str(exc), {"text": [str(exc)]}) from None
        if message.status == Message.Status.FAILED:
            raise ApiError(
                502,
                "not_delivered",
                "The reply was stored but the channel did not accept it.",
                {"message_id": message.pk, "error": message.error},
            )
        return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)


class _TransitionView(ConversationMixin, APIView):
    action = ""

    @extend_schema(
        request=None,
        responses={
            200: ConversationSerializer,
            409: error_response(409, "The conversation's state does not allow this move.", "invalid_transition"),
        },
    )
    def post(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        conversation = self.conversation()
        operation = {
            "resolve": services.conversation_resolve,
            "return_to_bot": services.conversation_return_to_bot,
            "handoff": services.conversation_request_handoff,
        }[self.action]
        try:
            operation(tenant=self.tenant, conversation=conversation, actor="api")
        except InvalidTransition as exc:
            allowed = sorted(ALLOWED[exc.current])
            raise ApiError(409, "invalid_transition", str(exc), {"state": exc.current, "allowed": allowed}) from None
        return Response(ConversationSerializer(conversation).data)


def _transition_schema(summary: str, description: str) -> Any:
    return extend_schema_view(post=extend_schema(summary=summary, description=description))


@_transition_schema(
    "Resolve a conversation",
    "Marks the conversation resolved (from any state). It reopens, with the bot, when the contact writes "
    "again. Resolving a resolved conversation is a no-op; the answer is the conversation.",
)
class ConversationResolveView(_TransitionView):
    action = "resolve"


@_transition_schema(
    "Return a conversation to the bot",
    "Ends a human takeover: the assistant answers the contact's next messages again, starting from a fresh "
    "context (what was said before is kept in the transcript, not fed back to the model).",
)
class ConversationReturnToBotView(_TransitionView):
    action = "return_to_bot"


@_transition_schema(
    "Ask for a human",
    "Moves a conversation the bot is handling to `handoff_requested` and emits `human_handoff.requested`, as "
    "when the contact asks for a person. 409 `invalid_transition` when a human already has it or it is resolved.",
)
class ConversationHandoffView(_TransitionView):
    action = "handoff"


class ConversationRetryView(ConversationMixin, APIView):
    @extend_schema(
        request=None,
        responses={
            202: inline_serializer("RetryQueued", {"queued_messages": serializers.IntegerField(min_value=1)}),
            409: error_response(409, "No message of this conversation has a failed turn.", "nothing_to_retry"),
        },
        summary="Answer again the messages whose turn failed",
        description="Queues a new assistant turn for each of the contact's messages whose answer failed (e.g. "
        "the LLM provider was down). The answer says how many were queued; replies arrive on the channel and as "
        "`message.sent` events.",
    )
    def post(self, request: Request, tenant_id: UUID, conversation_id: UUID) -> Response:
        count = services.conversation_retry(tenant=self.tenant, conversation=self.conversation())
        if not count:
            raise ApiError(409, "nothing_to_retry", "No message of this conversation has a failed turn.")
        return Response({"queued_messages": count}, status=status.HTTP_202_ACCEPTED)


class UsageView(TenantScopedMixin, APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("since", str, description="messages at or after (ISO date/time)"),
            OpenApiParameter("until", str, description="messages before (ISO date/time)"),
        ],
        responses={
            400: error_response(400, "`since` or `until` is not an ISO date or date-time."),
            200: inline_serializer(
                "TenantUsage",
                {
                    "prompt_tokens": serializers.IntegerField(),
                    "completion_tokens": serializers.IntegerField(),
                    "cost_usd": serializers.DecimalField(
                        max_digits=14, decimal_places=6, help_text="estimated, as a decimal string"
                    ),
                    "conversations": serializers.IntegerField(help_text="all the tenant's conversations"),
                },
            ),
        },
        summary="Tokens and estimated LLM cost of the tenant (optionally for a period)",
        description="LLM tokens the tenant's conversations used and their estimated cost in US dollars (a string, "
        "to keep its precision), over all time or a period of messages (`since` inclusive, `until` exclusive).",
        examples=[
            OpenApiExample(
                "A month",
                value={
                    "prompt_tokens": 182340,
                    "completion_tokens": 40211,
                    "cost_usd": "0.051476",
                    "conversations": 312,
                },
                response_only=True,
            )
        ],
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        usage = selectors.tenant_usage(
            tenant=self.tenant, since=_date_param(request, "since"), until=_date_param(request, "until")
        )
        return Response({**usage, "cost_usd": str(usage["cost_usd"])})


# --- functions ---------------------------------------------------------------------------------------------


class FunctionListView(TenantScopedMixin, generics.GenericAPIView):
    serializer_class = FunctionSerializer

    @extend_schema(
        responses=FunctionSerializer(many=True),
        summary="List the tenant's functions",
        description="The HTTP functions the assistant may call during a conversation (look up an order, book a "
        "slot...), by name. Signing secrets are never listed.",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(TenantFunction.objects.for_tenant(self.tenant).order_by("name"))
        return self.get_paginated_response(FunctionSerializer(page, many=True).data)

    @extend_schema(
        request=FunctionCreateSerializer,
        responses={
            201: inline_serializer(
                "FunctionCreated",
                {
                    **FunctionSerializer().get_fields(),
                    "signing_secret": serializers.CharField(
                        help_text="signs every call to endpoint_url; shown this once"
                    ),
                },
            )
        },
        summary="Create a function",
        description="Declares an HTTP endpoint the assistant may call: `name` and `description` tell the model "
        "when to call it, `parameters` is the JSON Schema of its arguments. The platform POSTs the arguments to "
        "`endpoint_url` (HTTPS, public address), signed with the `signing_secret` returned here once, and gives "
        "the answer to the model. `auth_header_name` + `auth_secret_name` add a header from a tenant secret.",
        examples=[
            OpenApiExample(
                "Order lookup",
                request_only=True,
                value={
                    "name": "order_status",
                    "description": "Look up the status of an order by its number.",
                    "parameters": {
                        "type": "object",
                        "properties": {"order_number": {"type": "string"}},
                        "required": ["order_number"],
                    },
                    "endpoint_url": "https://shop.example/api/assistant/order-status",
                    "timeout_seconds": 5,
                },
            )
        ],
    )
    def post(self, request: Request, tenant_id: UUID) -> Response:
        data = FunctionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            created = services.function_create(tenant=self.tenant, **data.validated_data)
        except FunctionDefinitionError as exc:
            raise _definition_error(exc) from None
        body = dict(FunctionSerializer(created.function).data)
        body["signing_secret"] = created.signing_secret  # shown once
        return Response(body, status=status.HTTP_201_CREATED)


class FunctionLookupMixin(TenantScopedMixin):
    kwargs: dict[str, Any]

    def function(self) -> TenantFunction:
        found = TenantFunction.objects.for_tenant(self.tenant).filter(pk=self.kwargs["function_id"]).first()
        if found is None:
            raise ApiError(404, "not_found", "No such function.")
        return found


class FunctionDetailView(FunctionLookupMixin, APIView):
    @extend_schema(
        responses=FunctionSerializer,
        summary="Read a function",
        description="One function's definition (never its signing secret).",
    )
    def get(self, request: Request, tenant_id: UUID, function_id: UUID) -> Response:
        return Response(FunctionSerializer(self.function()).data)

    @extend_schema(
        request=FunctionUpdateSerializer,
        responses=FunctionSerializer,
        summary="Change a function",
        description="Changes the fields given; the name stays. `is_active=false` hides the function from the "
        "assistant without deleting it.",
    )
    def patch(self, request: Request, tenant_id: UUID, function_id: UUID) -> Response:
        data = FunctionUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            function = services.function_update(tenant=self.tenant, function=self.function(), **data.validated_data)
        except FunctionDefinitionError as exc:
            raise _definition_error(exc) from None
        return Response(FunctionSerializer(function).data)

    @extend_schema(
        responses={204: None},
        summary="Delete a function (and its signing secret)",
        description="The assistant stops calling it from its next turn.",
    )
    def delete(self, request: Request, tenant_id: UUID, function_id: UUID) -> Response:
        services.function_delete(tenant=self.tenant, function=self.function())
        return Response(status=status.HTTP_204_NO_CONTENT)


class FunctionRotateSecretView(FunctionLookupMixin, APIView):
    """An action: POST only; it must not inherit the function's GET, PATCH and DELETE."""

    @extend_schema(
        request=None,
        responses=inline_serializer("FunctionSecret", {"signing_secret": serializers.CharField()}),
        summary="Rotate the signing secret (the new one is shown once)",
        description="Replaces the secret the platform signs this function's calls with; calls are signed with "
        "the new one from now on. Store it: it is not shown again.",
    )
    def post(self, request: Request, tenant_id: UUID, function_id: UUID) -> Response:
        secret = services.function_rotate_signing_secret(tenant=self.tenant, function=self.function())
        return Response({"signing_secret": secret})
