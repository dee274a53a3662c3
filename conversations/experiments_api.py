"""A/B tests of the assistant over REST (conversations.experiments): define, start, stop, read the results,
promote a variant into the tenant settings. Every view is tenant-scoped; another tenant's experiment is 404."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.errors import ApiError
from config.openapi import error_response
from conversations import experiments
from conversations.models import Experiment
from tenants.auth import TenantScopedMixin
from tenants.settings_schema import TenantSettingsError


class VariantSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=40, help_text="lowercase letters, digits, '-' or '_'")
    share = serializers.IntegerField(min_value=1, max_value=99, help_text="percentage of contacts; all sum to 100")
    overrides = serializers.JSONField(
        required=False,
        help_text="camelCase tenant settings this variant changes: tone, promptAddition, ragConfig, "
        "llm (model, temperature, maxTokens). `{}` for the control.",
    )


class VariantResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    share = serializers.IntegerField()
    control = serializers.BooleanField()
    conversations = serializers.IntegerField()
    observations = serializers.IntegerField(help_text="conversations, or ratings for the satisfaction goal")
    value = serializers.FloatField(allow_null=True, help_text="rate (0-1), mean rating (1-5) or mean cost (USD)")
    ci_low = serializers.FloatField(allow_null=True, help_text="95 % confidence interval")
    ci_high = serializers.FloatField(allow_null=True)
    difference = serializers.FloatField(allow_null=True, help_text="value minus the control's")
    p_value = serializers.FloatField(allow_null=True, help_text="two-sided, against the control")
    significant = serializers.BooleanField()
    better = serializers.BooleanField(help_text="significantly better than the control")


class ResultsSerializer(serializers.Serializer):
    goal = serializers.CharField()
    alpha = serializers.FloatField()
    winner = serializers.CharField(allow_null=True)
    variants = VariantResultSerializer(many=True)


class ExperimentSerializer(serializers.ModelSerializer):
    variants = VariantSerializer(many=True)
    # Text, not an enum: its name would collide with the other models' "status" enums in the schema.
    status = serializers.CharField(help_text="draft, running or stopped")

    class Meta:
        model = Experiment
        fields = [
            "id",
            "name",
            "goal",
            "status",
            "variants",
            "started_at",
            "stopped_at",
            "promoted_variant",
            "created_at",
        ]
        read_only_fields = fields


class ExperimentCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    goal = serializers.ChoiceField(choices=Experiment.Goal.choices)
    variants = serializers.JSONField(help_text="2 to 5 variants {name, share, overrides}; the first is the control")
    start = serializers.BooleanField(required=False, default=False, help_text="start it at once")


class PromoteSerializer(serializers.Serializer):
    variant = serializers.CharField(
        max_length=40, required=False, help_text="the variant to promote; default: the results' winner"
    )


def _validation(exc: experiments.ExperimentError | TenantSettingsError) -> ApiError:
    return ApiError(400, "validation_error", "Invalid experiment; see details for each field.", exc.errors)


class ExperimentMixin(TenantScopedMixin):
    kwargs: dict[str, Any]

    def experiment(self) -> Experiment:
        try:
            return experiments.experiment_get(tenant=self.tenant, experiment_id=self.kwargs["experiment_id"])
        except Experiment.DoesNotExist:
            raise ApiError(404, "not_found", "No such experiment.") from None

    def detail(self, experiment: Experiment) -> dict[str, Any]:
        body = dict(ExperimentSerializer(experiment).data)
        body["results"] = experiments.experiment_results(tenant=self.tenant, experiment=experiment)
        return body


TAG = "Conversations"  # an area of the conversations app (config.openapi tags by module)
CONFLICT = error_response(409, "The experiment's status does not allow this.", "experiment_conflict")
DETAIL = inline_serializer(
    "ExperimentWithResults", {**ExperimentSerializer().get_fields(), "results": ResultsSerializer()}
)


@extend_schema(tags=[TAG])
class ExperimentListView(ExperimentMixin, generics.GenericAPIView):
    serializer_class = ExperimentSerializer

    @extend_schema(
        responses=ExperimentSerializer(many=True),
        summary="List the tenant's A/B tests",
        description="The tenant's experiments, newest first (draft, running or stopped).",
    )
    def get(self, request: Request, tenant_id: UUID) -> Response:
        page = self.paginate_queryset(experiments.experiment_list(tenant=self.tenant))
        return self.get_paginated_response(ExperimentSerializer(page, many=True).data)

    @extend_schema(
        request=ExperimentCreateSerializer,
        responses={201: DETAIL, 400: error_response(400), 409: CONFLICT},
        summary="Define an A/B test of the assistant",
        description="Variants of the assistant settings (`overrides` of tone, promptAddition, ragConfig, "
        "llm.model/temperature/maxTokens; the first variant is the control), each answering `share` % of the "
        "contacts (the shares sum to 100), compared on `goal`: `resolved_without_human` (rate), `satisfaction` "
        "(mean 1-5 rating) or `cost` (mean per conversation). A contact always gets the same variant. "
        "`start: true` starts it at once (409 `experiment_conflict` while another one runs).",
        examples=[
            OpenApiExample(
                "Tone",
                request_only=True,
                value={
                    "name": "Warmer tone",
                    "goal": "resolved_without_human",
                    "variants": [
                        {"name": "control", "share": 50, "overrides": {}},
                        {"name": "warm", "share": 50, "overrides": {"tone": "warm and playful"}},
                    ],
                    "start": True,
                },
            )
        ],
    )
    def post(self, request: Request, tenant_id: UUID) -> Response:
        data = ExperimentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            experiment = experiments.experiment_create(tenant=self.tenant, **data.validated_data)
        except experiments.ExperimentError as exc:
            raise _validation(exc) from None
        except experiments.ExperimentConflict as exc:
            raise ApiError(409, "experiment_conflict", str(exc)) from None
        return Response(self.detail(experiment), status=status.HTTP_201_CREATED)


@extend_schema(tags=[TAG])
class ExperimentDetailView(ExperimentMixin, APIView):
    @extend_schema(
        responses=DETAIL,
        summary="Read an A/B test and its results",
        description="The experiment and, per variant, its conversations, the goal's value with a 95 % confidence "
        "interval, and the test against the control (two-proportion z-test for the rate, Welch's t-test for "
        "means; `significant` at p < 0.05). `winner`: the best variant significantly better than the control.",
    )
    def get(self, request: Request, tenant_id: UUID, experiment_id: UUID) -> Response:
        return Response(self.detail(self.experiment()))


@extend_schema(tags=[TAG])
class _ActionView(ExperimentMixin, APIView):
    action = ""

    @extend_schema(request=None, responses={200: DETAIL, 409: CONFLICT})
    def post(self, request: Request, tenant_id: UUID, experiment_id: UUID) -> Response:
        operation = {"start": experiments.experiment_start, "stop": experiments.experiment_stop}[self.action]
        try:
            experiment = operation(tenant=self.tenant, experiment=self.experiment())
        except experiments.ExperimentConflict as exc:
            raise ApiError(409, "experiment_conflict", str(exc)) from None
        return Response(self.detail(experiment))


@extend_schema(
    tags=[TAG],
    summary="Start an A/B test",
    description="A draft starts: from the next turn each contact gets its variant. 409 while another runs.",
)
class ExperimentStartView(_ActionView):
    action = "start"


@extend_schema(
    tags=[TAG],
    summary="Stop an A/B test",
    description="From the next turn every contact gets the tenant settings again; the results stay readable.",
)
class ExperimentStopView(_ActionView):
    action = "stop"


@extend_schema(tags=[TAG])
class ExperimentPromoteView(ExperimentMixin, APIView):
    @extend_schema(
        request=PromoteSerializer,
        responses={200: DETAIL, 400: error_response(400), 409: CONFLICT},
        summary="Promote a variant into the tenant settings",
        description="Writes the variant's overrides (default: the results' `winner`) into the tenant settings, "
        "validated like any settings change, and stops the experiment. 409 `experiment_conflict` for a draft, an "
        "unknown variant, or no winner yet without a `variant`.",
    )
    def post(self, request: Request, tenant_id: UUID, experiment_id: UUID) -> Response:
        data = PromoteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            experiment = experiments.experiment_promote(
                tenant=self.tenant, experiment=self.experiment(), variant=data.validated_data.get("variant")
            )
        except experiments.ExperimentConflict as exc:
            raise ApiError(409, "experiment_conflict", str(exc)) from None
        except TenantSettingsError as exc:
            raise _validation(exc) from None
        return Response(self.detail(experiment))
