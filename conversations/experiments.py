"""A/B tests of the assistant: services, the turn's hook, results and their statistics.

A tenant's experiment has variants of its assistant settings (camelCase overrides of ``tone``,
``promptAddition``, ``ragConfig`` and ``llm``'s model, temperature and maxTokens), each with a share of
the contacts (the shares sum to 100; the first variant is the control), and a goal:

- ``resolved_without_human``: the share of the variant's conversations that reached no human (no
  ``human_handoff.requested``, no agent reply since the experiment started); two-proportion z-test;
- ``satisfaction``: the mean of the 1-5 ratings its conversations got (inbox's SatisfactionRating);
  Welch's t-test;
- ``cost``: the mean LLM cost of its conversations (lower is better); Welch's t-test.

A contact's variant is a pure function of (experiment id, contact id): the first 32 bits of
SHA-256("<experiment id>:<contact id>") modulo 100 is its bucket, and the variants take the buckets in
order of their shares. The turn computes it in PostgreSQL (``apply``, one statement that also records
the experiment and variant on the conversation), ``bucket`` computes the same in Python.

At most one experiment of a tenant runs (a partial unique constraint). Promoting a variant writes its
overrides into the tenant settings through ``tenants.services.tenant_update`` (the settings schema
validates them) and stops the experiment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from conversations import queries
from conversations.models import Conversation, Experiment, Message, SatisfactionRating
from events.models import Event
from events.types import EventType
from tenants import services as tenant_services
from tenants.settings_schema import TenantSettingsError, parse_tenant_settings, validate_tenant_settings

if TYPE_CHECKING:
    from conversations.pipeline.turn import Turn
    from tenants.models import Tenant

logger = logging.getLogger(__name__)

OVERRIDABLE = ("tone", "promptAddition", "ragConfig", "llm")
LLM_OVERRIDABLE = ("model", "temperature", "maxTokens")
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
MAX_VARIANTS = 5
ALPHA = 0.05
Goal = Experiment.Goal
Status = Experiment.Status


class ExperimentError(ValueError):
    """An invalid definition: ``errors`` maps a field path (``variants.1.overrides.tone``) to problems."""

    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {', '.join(v)}" for k, v in errors.items()))


class ExperimentConflict(Exception):
    """The experiment's status (or the tenant's running experiment) does not allow this."""


# --- definition ---------------------------------------------------------------------------------------


def _variant_errors(tenant: Tenant, index: int, variant: Any, names: set[str]) -> dict[str, list[str]]:
    at = f"variants.{index}"
    if not isinstance(variant, dict):
        return {at: ["must be an object with name, share and overrides"]}
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(variant) - {"name", "share", "overrides"})
    if unknown:
        errors[at] = [f"unknown field(s): {', '.join(unknown)}"]
    name = variant.get("name")
    if not isinstance(name, str) or not VARIANT_NAME.match(name):
        errors[f"{at}.name"] = ["a short name: lowercase letters, digits, '-' or '_' (at most 40)"]
    elif name in names:
        errors[f"{at}.name"] = ["variant names must be different"]
    else:
        names.add(name)
    share = variant.get("share")
    if isinstance(share, bool) or not isinstance(share, int) or not 1 <= share <= 99:
        errors[f"{at}.share"] = ["an integer percentage from 1 to 99"]
    overrides = variant.get("overrides", {})
    if not isinstance(overrides, dict):
        errors[f"{at}.overrides"] = ["must be an object"]
        return errors
    extra = sorted(set(overrides) - set(OVERRIDABLE))
    if extra:
        errors[f"{at}.overrides"] = [f"only {', '.join(OVERRIDABLE)} can vary; not {', '.join(extra)}"]
    llm = overrides.get("llm")
    if isinstance(llm, dict) and set(llm) - set(LLM_OVERRIDABLE):
        errors[f"{at}.overrides.llm"] = [f"only {', '.join(LLM_OVERRIDABLE)} can vary"]
    try:  # the tenant's settings with these overrides, as they would be saved
        validate_tenant_settings(overrides, base=tenant.settings)
    except TenantSettingsError as exc:
        for path, problems in exc.errors.items():
            errors.setdefault(f"{at}.overrides.{path}", []).extend(problems)
    return errors


def validate_variants(*, tenant: Tenant, variants: Any) -> list[dict[str, Any]]:
    """The variants as stored (``{"name", "share", "overrides"}`` each), or ExperimentError."""
    if not isinstance(variants, list) or not 2 <= len(variants) <= MAX_VARIANTS:
        raise ExperimentError({"variants": [f"a list of 2 to {MAX_VARIANTS} variants (the first is the control)"]})
    errors: dict[str, list[str]] = {}
    names: set[str] = set()
    for index, variant in enumerate(variants):
        errors.update(_variant_errors(tenant, index, variant, names))
    if not errors and sum(v["share"] for v in variants) != 100:
        errors["variants"] = [f"the shares must sum to 100 (they sum to {sum(v['share'] for v in variants)})"]
    if errors:
        raise ExperimentError(errors)
    return [{"name": v["name"], "share": v["share"], "overrides": v.get("overrides", {})} for v in variants]


def experiment_create(*, tenant: Tenant, name: str, goal: str, variants: Any, start: bool = False) -> Experiment:
    errors: dict[str, list[str]] = {}
    if not isinstance(name, str) or not name.strip() or len(name) > 120:
        errors["name"] = ["1 to 120 characters"]
    if goal not in Goal.values:
        errors["goal"] = [f"one of {', '.join(Goal.values)}"]
    try:
        stored = validate_variants(tenant=tenant, variants=variants)
    except ExperimentError as exc:
        errors.update(exc.errors)
    if errors:
        raise ExperimentError(errors)
    experiment = Experiment.objects.create(tenant=tenant, name=name.strip(), goal=goal, variants=stored)
    if start:
        experiment_start(tenant=tenant, experiment=experiment)
    return experiment


def experiment_start(*, tenant: Tenant, experiment: Experiment) -> Experiment:
    """Draft → running. Refused while another of the tenant's experiments runs."""
    if experiment.status != Status.DRAFT:
        raise ExperimentConflict(f"only a draft experiment can start (this one is {experiment.status})")
    try:
        with transaction.atomic():
            updated = Experiment.objects.for_tenant(tenant).filter(pk=experiment.pk, status=Status.DRAFT)
            now = timezone.now()
            if not updated.update(status=Status.RUNNING, started_at=now):
                raise ExperimentConflict("the experiment is no longer a draft")
    except IntegrityError:
        raise ExperimentConflict("another experiment of this tenant is running: stop it first") from None
    experiment.status, experiment.started_at = Status.RUNNING, now
    return experiment


def experiment_stop(*, tenant: Tenant, experiment: Experiment) -> Experiment:
    """Running → stopped: from the next turn every contact gets the tenant settings again."""
    if experiment.status != Status.RUNNING:
        raise ExperimentConflict(f"only a running experiment can stop (this one is {experiment.status})")
    now = timezone.now()
    Experiment.objects.for_tenant(tenant).filter(pk=experiment.pk).update(status=Status.STOPPED, stopped_at=now)
    experiment.status, experiment.stopped_at = Status.STOPPED, now
    return experiment


def experiment_promote(*, tenant: Tenant, experiment: Experiment, variant: str | None = None) -> Experiment:
    """Write ``variant``'s overrides (default: the results' winner) into the tenant settings, validated by
    the settings schema, and stop the experiment. ExperimentConflict when there is no such variant or no
    winner; TenantSettingsError when the tenant's settings changed so that the overrides no longer fit."""
    if experiment.status == Status.DRAFT:
        raise ExperimentConflict("a draft experiment has no results to promote")
    if variant is None:
        variant = experiment_results(tenant=tenant, experiment=experiment)["winner"]
        if variant is None:
            raise ExperimentConflict("no variant is significantly better than the others yet; name one to promote")
    chosen = next((v for v in experiment.variants if v["name"] == variant), None)
    if chosen is None:
        raise ExperimentConflict(f"no variant named '{variant}'")
    with transaction.atomic():
        if chosen["overrides"]:
            tenant_services.tenant_update(tenant=tenant, settings=chosen["overrides"])
        if experiment.status == Status.RUNNING:
            experiment_stop(tenant=tenant, experiment=experiment)
        experiment.promoted_variant = variant
        Experiment.objects.for_tenant(tenant).filter(pk=experiment.pk).update(promoted_variant=variant)
    return experiment


# --- assignment and the turn's hook -------------------------------------------------------------------------


def bucket(experiment_id: Any, contact_id: Any) -> int:
    """The contact's bucket (0-99) in the experiment; the SQL of ``apply`` computes the same."""
    digest = hashlib.sha256(f"{experiment_id}:{contact_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 100


def variant_for(variants: list[dict[str, Any]], bucket_: int) -> dict[str, Any]:
    """The variant owning ``bucket_``: the variants take the buckets in order of their shares."""
    upto = 0
    for variant in variants:
        upto += variant["share"]
        if bucket_ < upto:
            return variant
    return variants[-1]


def assign(experiment: Experiment, contact_id: Any) -> dict[str, Any]:
    return variant_for(experiment.variants, bucket(experiment.pk, contact_id))


def apply(turn: Turn) -> None:
    """The tenant's running experiment, if any, for this turn: the contact's variant overlays the tenant
    settings the rest of the turn reads (``turn.config``, the LLM provider, retrieval), and the
    conversation records the experiment and variant. One statement; a tenant without a running
    experiment pays one indexed lookup."""
    conversation, contact = turn.conversation, turn.contact
    if conversation is None or contact is None:
        return
    tenant_id = turn.tenant.pk
    with connection.cursor() as cursor:
        cursor.execute(queries.experiment_apply_sql(), [str(contact.pk), tenant_id, conversation.pk, tenant_id])
        row = cursor.fetchone()
    if row is None:
        return
    variant = json.loads(row[1])
    conversation.experiment_id, conversation.experiment_variant = row[0], variant["name"]
    if variant.get("overrides"):
        turn.tenant.__dict__["config"] = overlaid(turn.tenant.settings, variant["overrides"])


def overlaid(settings: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """The tenant settings with a variant's overrides merged in (nested objects merged), parsed as at turn
    time (leniently: an override that no longer fits falls back to the default and is logged)."""
    return parse_tenant_settings(_merge(settings or {}, overrides))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# --- statistics (normal and Student's t approximations, with math only) ---------------------------------


def normal_two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1) < 1e-12:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The t value whose two-sided p is ``alpha`` (bisection)."""
    low, high = 0.0, 1000.0
    for _ in range(100):
        middle = (low + high) / 2
        if t_two_sided_p(middle, df) > alpha:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p of H0: the two rates are equal (pooled two-proportion z-test)."""
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return normal_two_sided_p((x1 / n1 - x2 / n2) / se)


def _mean_var(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var


def welch_t(a: list[float], b: list[float]) -> float:
    """Two-sided p of H0: the two means are equal (Welch's t-test, Welch-Satterthwaite degrees)."""
    (m1, v1), (m2, v2) = _mean_var(a), _mean_var(b)
    s1, s2 = v1 / len(a), v2 / len(b)
    if s1 + s2 == 0:
        return 1.0 if m1 == m2 else 0.0
    t = (m1 - m2) / math.sqrt(s1 + s2)
    df = (s1 + s2) ** 2 / (
        (s1 * s1 / (len(a) - 1) if len(a) > 1 else 0) + (s2 * s2 / (len(b) - 1) if len(b) > 1 else 0)
    )
    return t_two_sided_p(t, df)


def mean_interval(values: list[float]) -> tuple[float, float]:
    mean, var = _mean_var(values)
    if len(values) < 2:
        return mean, mean
    half = t_critical(len(values) - 1) * math.sqrt(var / len(values))
    return mean - half, mean + half


# --- results ---------------------------------------------------------------------------------------------


@dataclass
class VariantResult:
    name: str
    share: int
    control: bool
    conversations: int
    observations: int  # conversations (rates, cost) or ratings (satisfaction)
    value: float | None
    ci_low: float | None
    ci_high: float | None
    difference: float | None  # value - the control's
    p_value: float | None  # against the control
    significant: bool
    better: bool  # significantly better than the control


def _outcomes(tenant: Tenant, experiment: Experiment) -> dict[str, list[float]]:
    """Each variant's observations of the goal: 1/0 per conversation, a rating, a cost."""
    rows = list(
        Conversation.objects.for_tenant(tenant)
        .filter(experiment=experiment)
        .values_list("id", "experiment_variant", "cost_usd")
    )
    found: dict[str, list[float]] = {v["name"]: [] for v in experiment.variants}
    if experiment.goal == Goal.SATISFACTION:
        ratings = (
            SatisfactionRating.objects.for_tenant(tenant)
            .filter(conversation__experiment=experiment, conversation__tenant_id=tenant.pk)
            .filter(created_at__gte=experiment.started_at)
            .values_list("conversation__experiment_variant", "score")
        )
        for name, score in ratings:
            found.setdefault(name, []).append(float(score))
        return found
    if experiment.goal == Goal.COST:
        for _id, name, cost in rows:
            found.setdefault(name, []).append(float(cost))
        return found
    ids = [str(r[0]) for r in rows]
    human = {
        str(c)
        for c in Message.objects.for_tenant(tenant)
        .filter(conversation__experiment=experiment, sender=Message.Sender.AGENT, created_at__gte=experiment.started_at)
        .values_list("conversation_id", flat=True)
    }
    human |= set(
        Event.objects.for_tenant(tenant)
        .filter(type=EventType.HUMAN_HANDOFF_REQUESTED, created_at__gte=experiment.started_at)
        .filter(payload__conversation_id__in=ids)
        .values_list("payload__conversation_id", flat=True)
    )
    for conversation_id, name, _cost in rows:
        found.setdefault(name, []).append(0.0 if str(conversation_id) in human else 1.0)
    return found


def _interval(goal: str, values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if goal == Goal.RESOLVED_WITHOUT_HUMAN:
        return wilson_interval(int(sum(values)), len(values))
    return mean_interval(values)


def _p_value(goal: str, values: list[float], control: list[float]) -> float | None:
    if not values or not control:
        return None
    if goal == Goal.RESOLVED_WITHOUT_HUMAN:
        return two_proportion_z(int(sum(values)), len(values), int(sum(control)), len(control))
    if len(values) < 2 or len(control) < 2:
        return None
    return welch_t(values, control)


def experiment_results(*, tenant: Tenant, experiment: Experiment) -> dict[str, Any]:
    """Per variant: conversations, the goal's value with its 95 % confidence interval, and the test against
    the control; ``winner``: the best variant that is significantly better than the control (or the
    control, when every other variant is significantly worse), else None."""
    outcomes = _outcomes(tenant, experiment) if experiment.started_at else {}
    conversations: dict[str, int] = dict.fromkeys((v["name"] for v in experiment.variants), 0)
    for name in (
        Conversation.objects.for_tenant(tenant)
        .filter(experiment=experiment)
        .values_list("experiment_variant", flat=True)
    ):
        conversations[name] = conversations.get(name, 0) + 1
    lower_better = experiment.goal == Goal.COST
    control_name = experiment.variants[0]["name"]
    control = outcomes.get(control_name, [])
    results: list[VariantResult] = []
    for variant in experiment.variants:
        values = outcomes.get(variant["name"], [])
        is_control = variant["name"] == control_name
        value = sum(values) / len(values) if values else None
        low, high = _interval(experiment.goal, values)
        p = None if is_control else _p_value(experiment.goal, values, control)
        difference = None if is_control or value is None or not control else value - sum(control) / len(control)
        significant = p is not None and p < ALPHA
        better = bool(significant and difference is not None and (difference < 0 if lower_better else difference > 0))
        results.append(
            VariantResult(
                name=variant["name"], share=variant["share"], control=is_control,
                conversations=conversations.get(variant["name"], 0), observations=len(values), value=value,
                ci_low=low, ci_high=high, difference=difference, p_value=p, significant=significant, better=better,
            )
        )  # fmt: skip
    return {"goal": experiment.goal, "alpha": ALPHA, "winner": _winner(results, lower_better), "variants": [
        asdict(r) for r in results
    ]}  # fmt: skip


def _winner(results: list[VariantResult], lower_better: bool) -> str | None:
    better = [r for r in results if r.better and r.value is not None]
    if better:
        best = min(better, key=lambda r: r.value) if lower_better else max(better, key=lambda r: r.value)  # type: ignore[arg-type,return-value]
        return best.name
    challengers = [r for r in results if not r.control]
    if challengers and all(r.significant and not r.better for r in challengers):
        return results[0].name
    return None


# --- selectors -----------------------------------------------------------------------------------------------


def experiment_list(*, tenant: Tenant) -> Any:
    return Experiment.objects.for_tenant(tenant).order_by("-created_at")


def experiment_get(*, tenant: Tenant, experiment_id: UUID) -> Experiment:
    """Raises Experiment.DoesNotExist (also for another tenant's experiment)."""
    return Experiment.objects.for_tenant(tenant).get(pk=experiment_id)
