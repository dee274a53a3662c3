"""Campaigns: an approved WhatsApp template sent first to the contacts who opted in.

- Consent: imported from CSV (``contact`` column: phone number or BSUID; other columns are the
  contact's variables) with its source and time; an opt-out word ("STOP", the channel's
  ``config.opt_out_words``) received on the channel records the opt-out at once and forever: no
  import opts the contact in again, and their pending campaign messages are skipped.
- ``campaign_start`` snapshots the audience into ``CampaignRecipient`` rows, unique per contact.
- ``run_campaign`` (the Celery task ``channels_app.run_campaign``) claims batches of pending rows
  with SKIP LOCKED, commits them as ``sending`` before the Graph call, sends with
  ``biz_opaque_callback_data = "campaign:<row id>"`` and records the outcome; it paces itself to the
  campaign's ``rate_per_second`` and stops for quiet hours, the daily limit and a pause. A row left
  ``sending`` by a crash is never sent again (nobody gets a campaign twice); the status webhooks tell
  whether it went (``apply_status``).
- Events (docs/events.md), each written in the transaction of the state change it reports, once:
  ``campaign.started`` (with the audience), ``campaign.paused`` (``reason``: ``manual``,
  ``template_paused``, ``template_rejected``, ``template_not_sendable``, ``channel_disabled``),
  ``campaign.resumed`` and ``campaign.finished`` (with the totals).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from datetime import time as day_time
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from channels_app import queries
from channels_app.adapters.base import NormalizedMessage, SendError, StatusUpdate
from channels_app.graph import OUTCOME_UNKNOWN, posts_at_most_once
from channels_app.models import Campaign, CampaignRecipient, Channel, Consent, ContactAlias, MessageTemplate
from channels_app.services import identities, templates
from events.services import emit
from events.types import EventType

logger = logging.getLogger(__name__)

CALLBACK_PREFIX = "campaign:"
_CONTACT = re.compile(r"^(?:[0-9]{6,20}|[A-Z]{2}\.[A-Za-z0-9.]{1,140})$")
_VARIABLE = re.compile(r"^\{([A-Za-z0-9_]+)\}$")
STATUS_ORDER = {"sending": 0, "sent": 1, "delivered": 2, "read": 3}


class CampaignError(Exception):
    def __init__(self, message: str, *, code: str = "invalid"):
        super().__init__(message)
        self.code = code


# --- consent ----------------------------------------------------------------------------------------


def opt_out_words(channel: Channel) -> set[str]:
    words = (channel.config or {}).get("opt_out_words") or settings.CAMPAIGN_OPT_OUT_WORDS
    return {str(w).strip().upper() for w in words if str(w).strip()}


def record_opt_outs(*, channel: Channel, messages: list[NormalizedMessage]) -> int:
    """An opt-out word as a whole message opts its sender out, at once and forever."""
    words = opt_out_words(channel)
    senders = {m.sender_id for m in messages if m.text.strip().upper().strip(".!") in words and m.sender_id}
    now = timezone.now()
    # Every id the contact is known by (phone number and BSUID): an opt-out under one holds for all.
    every_id = {i for sender in senders for i in identities.contact_ids(channel=channel, external_id=sender)}
    for sender in every_id:
        consent, created = Consent.objects.get_or_create(
            tenant_id=channel.tenant_id,
            channel=channel,
            contact_id=sender,
            defaults={"source": "opt_out_word", "opted_in_at": now, "opted_out_at": now, "opt_out_source": "message"},
        )
        if not created and consent.opted_out_at is None:
            Consent.objects.filter(pk=consent.pk).update(opted_out_at=now, opt_out_source="message")
        CampaignRecipient.objects.filter(
            tenant_id=channel.tenant_id,
            campaign__channel=channel,
            contact_id=sender,
            status=CampaignRecipient.Status.PENDING,
        ).update(status=CampaignRecipient.Status.SKIPPED, error="opted out")
    return len(senders)


def consent_import_csv(*, channel: Channel, text: str, source: str = "csv") -> dict[str, int]:
    """Opt-ins from CSV text with a ``contact`` column. Returns counts: imported, opted_out (kept out),
    invalid. Re-importing updates the variables and never clears an opt-out."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "contact" not in reader.fieldnames:
        raise CampaignError("the CSV needs a 'contact' column (phone number or BSUID)")
    now = timezone.now()
    rows: dict[str, dict[str, str]] = {}
    invalid = 0
    for line in reader:
        contact = str(line.get("contact") or "").strip().lstrip("+")
        if not _CONTACT.match(contact):
            invalid += 1
            continue
        rows[contact] = {k: str(v or "") for k, v in line.items() if k and k != "contact"}
    opted_out = set(
        Consent.objects.for_tenant(channel.tenant_id)
        .filter(channel=channel, contact_id__in=list(rows), opted_out_at__isnull=False)
        .values_list("contact_id", flat=True)
    )
    Consent.objects.bulk_create(
        [
            Consent(
                tenant_id=channel.tenant_id,
                channel=channel,
                contact_id=contact,
                source=source[:100],
                opted_in_at=now,
                variables=variables,
            )
            for contact, variables in rows.items()
            if contact not in opted_out
        ],
        update_conflicts=True,
        unique_fields=["channel", "contact_id"],
        update_fields=["variables", "source"],
    )
    return {"imported": len(rows) - len(opted_out), "opted_out": len(opted_out), "invalid": invalid}


# --- campaigns ---------------------------------------------------------------------------------------


def campaign_create(
    *,
    channel: Channel,
    name: str,
    template: MessageTemplate,
    variables: dict[str, Any] | None = None,
    scheduled_at: datetime | None = None,
    quiet_start: day_time | None = None,
    quiet_end: day_time | None = None,
    rate_per_second: float | None = None,
    daily_limit: int | None = None,
) -> Campaign:
    if template.channel_id != channel.pk or template.tenant_id != channel.tenant_id:
        raise CampaignError("the template is not one of this channel's", code="not_found")
    templates.check_sendable(template)
    try:  # the variables fit the template (each contact's own values stand in as "x")
        templates.template_render(template, _fill_variables(variables or {}, lambda _name: "x"))
    except templates.TemplateError as exc:
        raise CampaignError(str(exc), code="invalid_variables") from None
    rate = float(rate_per_second or settings.CAMPAIGN_RATE_PER_SECOND)
    if not 0 < rate <= settings.CAMPAIGN_MAX_RATE_PER_SECOND:
        raise CampaignError(f"rate_per_second is 0-{settings.CAMPAIGN_MAX_RATE_PER_SECOND} (Meta's throughput)")
    return Campaign.objects.create(
        tenant_id=channel.tenant_id,
        channel=channel,
        template=template,
        name=name,
        variables=variables or {},
        scheduled_at=scheduled_at,
        quiet_start=quiet_start,
        quiet_end=quiet_end,
        rate_per_second=rate,
        daily_limit=daily_limit or settings.CAMPAIGN_DAILY_LIMIT,
    )


class CampaignStateError(CampaignError):
    """The campaign is not in a state that allows this (a start of a campaign already started)."""


def campaign_start(*, campaign: Campaign) -> int:
    """Snapshot the opted-in audience and start sending; only a draft starts (a started campaign is
    paused and resumed, never started again: that would queue a second runner)."""
    consents = Consent.objects.for_tenant(campaign.tenant_id).filter(
        channel_id=campaign.channel_id, opted_out_at__isnull=True
    )
    with transaction.atomic():
        CampaignRecipient.objects.bulk_create(
            [
                CampaignRecipient(
                    tenant_id=campaign.tenant_id, campaign=campaign, contact_id=c.contact_id, variables=c.variables
                )
                for c in consents.only("contact_id", "variables").iterator()
            ],
            ignore_conflicts=True,
            batch_size=1000,
        )
        started = Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.DRAFT).update(
            status=Campaign.Status.RUNNING, started_at=campaign.started_at or timezone.now()
        )
        if not started:
            raise CampaignStateError(f"the campaign is {campaign.status}: only a draft can be started")
        campaign.refresh_from_db()
        recipients = campaign.recipients.count()
        _emit(
            campaign,
            EventType.CAMPAIGN_STARTED,
            recipients=recipients,
            scheduled_at=campaign.scheduled_at.isoformat() if campaign.scheduled_at else None,
            rate_per_second=campaign.rate_per_second,
            daily_limit=campaign.daily_limit,
        )
        transaction.on_commit(lambda: enqueue(campaign.pk))
    return recipients


def campaign_pause(*, campaign: Campaign) -> None:
    """Pause a running campaign by hand (after its current batch); ``campaign.paused`` with reason
    ``manual``. A campaign that is not running is left as it is."""
    _pause(campaign, reason=PAUSE_MANUAL, detail="")


def campaign_resume(*, campaign: Campaign) -> None:
    with transaction.atomic():
        if Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.PAUSED).update(
            status=Campaign.Status.RUNNING
        ):
            _emit(campaign, EventType.CAMPAIGN_RESUMED)
            transaction.on_commit(lambda: enqueue(campaign.pk))


# Why a campaign paused (``campaign.paused``'s ``reason``).
PAUSE_MANUAL = "manual"
PAUSE_CHANNEL_DISABLED = "channel_disabled"
_TEMPLATE_PAUSE_REASONS = {"PAUSED": "template_paused", "REJECTED": "template_rejected"}


def _emit(campaign: Campaign, type: EventType, **details: Any) -> None:
    """A ``campaign.*`` event, in the caller's transaction (the one that changed the campaign)."""
    template = campaign.template
    emit(
        tenant=campaign.tenant_id,
        type=type,
        payload={
            "campaign_id": str(campaign.pk),
            "channel_id": str(campaign.channel_id),
            "name": campaign.name,
            "template": {"name": template.name, "language": template.language},
            **details,
        },
    )


def _pause(campaign: Campaign, *, reason: str, detail: str) -> bool:
    """RUNNING → PAUSED with ``campaign.paused`` in one transaction; False when it was not running
    (paused already, by hand or by another sending thread: the event is written once)."""
    with transaction.atomic():
        if not Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.RUNNING).update(
            status=Campaign.Status.PAUSED
        ):
            return False
        _emit(campaign, EventType.CAMPAIGN_PAUSED, reason=reason, detail=detail[:500])
    return True


def enqueue(campaign_id: UUID | str, countdown: float = 0) -> None:
    from channels_app.tasks import run_campaign as task

    task.apply_async(args=[str(campaign_id)], countdown=countdown)


def campaign_totals(campaign: Campaign) -> dict[str, int]:
    return campaigns_totals([campaign.pk])[campaign.pk]


def campaigns_totals(campaign_ids: list[Any]) -> dict[Any, dict[str, int]]:
    """Each campaign's recipients by status, and their total: one grouped query for all of them."""
    from django.db.models import Count

    totals: dict[Any, dict[str, int]] = {pk: dict.fromkeys(CampaignRecipient.Status.values, 0) for pk in campaign_ids}
    rows = (
        CampaignRecipient.objects.filter(campaign_id__in=campaign_ids)
        .values_list("campaign_id", "status")
        .annotate(n=Count("id"))
    )
    for campaign_id, status, n in rows:
        totals[campaign_id][str(status)] = int(n)
    for counts in totals.values():
        counts["total"] = sum(counts.values())
    return totals


# --- the runner --------------------------------------------------------------------------------------


def _in_quiet_hours(campaign: Campaign, now: datetime) -> bool:
    start, end = campaign.quiet_start, campaign.quiet_end
    if start is None or end is None or start == end:
        return False
    current = now.astimezone(UTC).time()
    return start <= current < end if start < end else current >= start or current < end


def _sent_today(channel_id: UUID, now: datetime) -> int:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return (
        CampaignRecipient.objects.filter(campaign__channel_id=channel_id, claimed_at__gte=midnight)
        .exclude(status__in=[CampaignRecipient.Status.PENDING, CampaignRecipient.Status.SKIPPED])
        .count()
    )


def run_campaign(*, campaign_id: UUID | str, budget_seconds: float = 50.0) -> tuple[str, float]:
    """Send for up to ``budget_seconds``. Returns (outcome, seconds until the task should run again):
    ``continue`` (0), ``done``, ``paused``, ``scheduled`` / ``quiet`` / ``daily_limit`` (later)."""
    # One runner per campaign: a second one (a start and a resume racing, beat's stall check beside a
    # countdown) would send at N times the rate. A killed runner's lock goes with its connection.
    lock_name = f"campaign-runner:{campaign_id}"
    with connection.cursor() as cursor:
        cursor.execute(queries.ADVISORY_TRY_LOCK, [lock_name])
        (locked,) = cursor.fetchone()
    if not locked:
        return "busy", 0.0
    try:
        return _run_locked(campaign_id, budget_seconds)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(queries.ADVISORY_UNLOCK, [lock_name])


def _run_locked(campaign_id: UUID | str, budget_seconds: float) -> tuple[str, float]:
    deadline = time.monotonic() + budget_seconds
    while True:
        campaign = Campaign.objects.select_related("template", "channel").filter(pk=campaign_id).first()
        if campaign is None or campaign.status != Campaign.Status.RUNNING:
            return (campaign.status if campaign else "missing"), 0.0
        now = timezone.now()
        blocked = _blocked(campaign, now)
        if blocked is not None:
            return blocked
        room = campaign.daily_limit - _sent_today(campaign.channel_id, now)
        batch = _claim(campaign, min(room, max(1, int(campaign.rate_per_second))))
        if not batch:
            _finish(campaign)
            return "done", 0.0
        started = time.monotonic()
        _send_batch(campaign, batch)
        pause = len(batch) / campaign.rate_per_second - (time.monotonic() - started)
        if pause > 0:
            time.sleep(pause)
        if time.monotonic() >= deadline:
            return "continue", 0.0


def _blocked(campaign: Campaign, now: datetime) -> tuple[str, float] | None:
    """Why the campaign may not send now, and for how long: its schedule, quiet hours, the daily limit."""
    if campaign.scheduled_at and now < campaign.scheduled_at:
        return "scheduled", (campaign.scheduled_at - now).total_seconds()
    if _in_quiet_hours(campaign, now):
        return "quiet", 60.0
    if campaign.daily_limit - _sent_today(campaign.channel_id, now) <= 0:
        tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=5, microsecond=0)
        return "daily_limit", (tomorrow - now).total_seconds()
    return None


def resume_stalled(*, stall_seconds: float) -> int:
    """Beat: a running campaign with recipients pending and nothing claimed for ``stall_seconds`` lost
    its runner (a worker killed; its unacknowledged task comes back only after the broker's visibility
    timeout): enqueue a new one. Safe beside a live runner (claims skip locked rows; a claimed row is
    never sent twice). Returns how many were resumed."""
    from django.db.models import Max

    now = timezone.now()
    cutoff = now - timedelta(seconds=stall_seconds)
    resumed = 0
    for campaign in Campaign.objects.filter(status=Campaign.Status.RUNNING, started_at__lt=cutoff):
        rows = CampaignRecipient.objects.filter(campaign=campaign)
        if not rows.filter(status=CampaignRecipient.Status.PENDING).exists() or _blocked(campaign, now):
            continue
        last = rows.aggregate(last=Max("claimed_at"))["last"]
        if last is None or last < cutoff:
            enqueue(campaign.pk)
            resumed += 1
    return resumed


def _claim(campaign: Campaign, size: int) -> list[CampaignRecipient]:
    with transaction.atomic():
        rows = list(
            CampaignRecipient.objects.select_for_update(skip_locked=True)
            .filter(campaign=campaign, status=CampaignRecipient.Status.PENDING)
            .order_by("id")[:size]
        )
        if rows:
            CampaignRecipient.objects.filter(pk__in=[r.pk for r in rows]).update(
                status=CampaignRecipient.Status.SENDING, claimed_at=timezone.now()
            )
    return rows


def _finish(campaign: Campaign) -> None:
    """Done once nobody is pending: ``campaign.finished`` with the totals, in the same transaction."""
    if CampaignRecipient.objects.filter(campaign=campaign, status=CampaignRecipient.Status.PENDING).exists():
        return
    with transaction.atomic():
        finished_at = timezone.now()
        if not Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.RUNNING).update(
            status=Campaign.Status.DONE, finished_at=finished_at
        ):
            return
        totals = campaign_totals(campaign)
        _emit(
            campaign,
            EventType.CAMPAIGN_FINISHED,
            finished_at=finished_at.isoformat(),
            totals={k: totals[k] for k in ("total", "sent", "delivered", "read", "failed", "skipped", "sending")},
        )


def _fill_variables(variables: dict[str, Any], contact_value: Any) -> dict[str, Any]:
    """The campaign's template variables with each per-contact reference replaced by
    ``contact_value(name)``."""

    def fill(value: Any) -> Any:
        if isinstance(value, str) and (match := _VARIABLE.match(value)):
            return str(contact_value(match.group(1)))
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return fill(variables)


def _values(campaign: Campaign, row: CampaignRecipient) -> dict[str, Any]:
    return _fill_variables(campaign.variables or {}, lambda name: row.variables.get(name, ""))


def _send_batch(campaign: Campaign, rows: list[CampaignRecipient]) -> None:
    """Send a claimed batch, skipping whoever opted out."""
    ids = [r.contact_id for r in rows]
    # A recipient known by another id too (phone number and BSUID): an opt-out under either holds.
    canonical = dict(
        ContactAlias.objects.for_tenant(campaign.tenant_id)
        .filter(channel_id=campaign.channel_id, alias__in=ids)
        .values_list("alias", "external_id")
    )
    said_stop = set(
        Consent.objects.for_tenant(campaign.tenant_id)
        .filter(channel_id=campaign.channel_id, contact_id__in={*ids, *canonical.values()}, opted_out_at__isnull=False)
        .values_list("contact_id", flat=True)
    )
    opted_out = {i for i in ids if i in said_stop or canonical.get(i) in said_stop}
    return _send_rows(campaign, rows, opted_out)


def _send_rows(campaign: Campaign, rows: list[CampaignRecipient], opted_out: set[str]) -> None:
    """Over CAMPAIGN_SEND_THREADS connections at once: one runner is otherwise bound by the Graph API's
    latency, not by the limit. Each thread closes its database connection."""
    threads = max(1, min(settings.CAMPAIGN_SEND_THREADS, len(rows)))
    if threads == 1:
        for row in rows:
            _send_one(campaign, row, opted_out=row.contact_id in opted_out)
        return

    def work(chunk: list[CampaignRecipient]) -> None:
        try:
            for row in chunk:
                _send_one(campaign, row, opted_out=row.contact_id in opted_out)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="campaign") as pool:
        for future in [pool.submit(work, rows[i::threads]) for i in range(threads)]:
            future.result()


def _pause_for(campaign: Campaign, reason: str, detail: str) -> None:
    """Stop the campaign where it stands (resume when the cause is fixed): a problem of the template or
    of the channel would otherwise fail every remaining recipient, who could never get it."""
    if _pause(campaign, reason=reason, detail=detail):
        logger.warning(
            "campaign paused", extra={"campaign_id": str(campaign.pk), "reason": f"{reason}: {detail[:300]}"}
        )


def _template_pause_reason(exc: templates.TemplateError) -> str:
    status = str(exc.details.get("status", "")).upper()
    return _TEMPLATE_PAUSE_REASONS.get(status, "template_not_sendable")


def _send_one(campaign: Campaign, row: CampaignRecipient, *, opted_out: bool) -> None:
    update: dict[str, Any]
    if opted_out:
        update = {"status": CampaignRecipient.Status.SKIPPED, "error": "opted out"}
    else:
        try:
            with posts_at_most_once():  # a message Meta may have taken is never posted again
                result, _text = templates.send_template(
                    channel=campaign.channel,
                    recipient_id=row.contact_id,
                    template=campaign.template,
                    variables=_values(campaign, row),
                    callback_data=f"{CALLBACK_PREFIX}{row.pk}",
                )
            wamid = result.platform_message_ids[0] if result.platform_message_ids else ""
            update = {"status": CampaignRecipient.Status.SENT, "platform_message_id": wamid}
        except templates.TemplateError as exc:
            if exc.code == "invalid_variables":  # this contact's own values do not fit
                update = {"status": CampaignRecipient.Status.FAILED, "error": str(exc)[:500]}
            else:  # the template stopped being sendable (Meta paused or rejected it): nobody else fails
                update = {"status": CampaignRecipient.Status.PENDING, "claimed_at": None}
                _pause_for(campaign, _template_pause_reason(exc), str(exc))
        except SendError as exc:
            if exc.disable_channel or exc.code == "channel_disabled":  # the channel cannot send at all
                update = {"status": CampaignRecipient.Status.PENDING, "claimed_at": None}
                _pause_for(campaign, PAUSE_CHANNEL_DISABLED, str(exc))
            elif exc.permanent:
                update = {"status": CampaignRecipient.Status.FAILED, "error": str(exc)[:500]}
            elif exc.code == OUTCOME_UNKNOWN:
                # Meta may have taken it: never sent again; the status webhook (our callback data
                # names the row) says what happened. Until then it stays "sending".
                update = {"error": str(exc)[:500]}
                logger.warning("campaign send outcome unknown", extra={"campaign_id": str(campaign.pk)})
            else:  # Meta certainly did not take it (throttled, no connection): it may go again
                update = {"status": CampaignRecipient.Status.PENDING, "claimed_at": None}
                logger.warning("campaign send deferred", extra={"campaign_id": str(campaign.pk), "error": str(exc)})
    CampaignRecipient.objects.filter(pk=row.pk, status=CampaignRecipient.Status.SENDING).update(**update)


# --- statuses -----------------------------------------------------------------------------------------


def apply_status(*, tenant_id: UUID, update: StatusUpdate) -> bool:
    """A delivery status for a campaign message (by wamid, or by our callback data for a row a crash
    left ``sending``). Never moves backwards; ``failed`` wins. Returns whether it was a campaign's."""
    raw = update.raw if isinstance(update.raw, dict) else {}
    callback = str(raw.get("biz_opaque_callback_data") or "")
    rows = CampaignRecipient.objects.filter(tenant_id=tenant_id)
    row = None
    if update.message_id:
        row = rows.filter(platform_message_id=update.message_id).first()
    if row is None and callback.startswith(CALLBACK_PREFIX) and callback[len(CALLBACK_PREFIX) :].isdigit():
        row = rows.filter(pk=int(callback[len(CALLBACK_PREFIX) :])).first()
    if row is None:
        return False
    status = update.status
    fields: dict[str, Any] = {}
    if status == "failed":
        fields = {"status": CampaignRecipient.Status.FAILED, "error": str((update.error or {}).get("title", ""))[:500]}
    elif status in STATUS_ORDER and STATUS_ORDER[status] > STATUS_ORDER.get(row.status, 99):
        fields = {"status": status}
    if not row.platform_message_id and update.message_id:
        fields["platform_message_id"] = update.message_id
    if fields:
        CampaignRecipient.objects.filter(pk=row.pk).update(**fields)
    return True
