"""WhatsApp message templates: synced from Meta per WhatsApp Business Account, previewed, and sent with
their variables. A template is the one way to reach a contact outside the customer-service window.

- ``templates_sync(channel)``: ``GET /{waba-id}/message_templates`` (the channel's ``config.waba_id``),
  stored as ``MessageTemplate`` rows (name, language, category, status, components); templates Meta no
  longer lists are removed.
- ``template_render(template, variables)``: the wire ``components`` (body parameters, positional or
  named; a header's text parameter or media by link or uploaded media id) and the text the contact
  will read. Wrong or missing variables raise TemplateError ``invalid_variables``.
- ``send_template(...)``: only an ``APPROVED`` template goes; a rejected, paused, disabled or pending
  one is refused with Meta's reason (TemplateError ``template_not_sendable``) before any Graph call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone

from channels_app.adapters.base import SendResult, TemplateAdapter, get_adapter
from channels_app.models import Channel, MessageTemplate
from channels_app.services.conversation_sends import conversation_send
from channels_app.services.sending import call_adapter, guard_sendable

_META_ID = re.compile(r"[0-9]{1,32}")
# {{1}} (positional) or {{first_name}} (named: lowercase letters, digits, underscores).
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9_]+)\s*\}\}")
MEDIA_FORMATS = {"IMAGE": "image", "VIDEO": "video", "DOCUMENT": "document"}
# Why Meta will not send a template in each status that is not APPROVED (Template management docs).
NOT_SENDABLE = {
    "REJECTED": "rejected by Meta's review",
    "PAUSED": "paused by Meta after low quality ratings from recipients",
    "DISABLED": "disabled by Meta after repeated low quality ratings",
    "PENDING": "still in Meta's review",
    "IN_APPEAL": "rejected and under appeal",
    "PENDING_DELETION": "being deleted",
    "DELETED": "deleted",
    "LIMIT_EXCEEDED": "over the account's template limit",
    "ARCHIVED": "archived",
}
MAX_PARAMETER_CHARS = 1024


class TemplateError(Exception):
    """A template operation was refused. ``code``: ``template_not_sendable`` (409), ``not_found`` (404),
    ``invalid_variables`` / ``no_account`` / ``not_supported`` (400)."""

    def __init__(self, message: str, *, code: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.details = details or {}


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    removed: int = 0

    @property
    def total(self) -> int:
        return self.created + self.updated

    def as_dict(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "removed": self.removed, "total": self.total}


def _template_adapter(channel: Channel) -> TemplateAdapter:
    adapter = get_adapter(channel.type)
    if not isinstance(adapter, TemplateAdapter):
        raise TemplateError(f"{channel.type} channels have no message templates", code="not_supported")
    return adapter


def account_id(channel: Channel) -> str:
    """The WhatsApp Business Account id the channel's templates live in (``config.waba_id``)."""
    waba = str((channel.config or {}).get("waba_id", "")).strip()
    if not _META_ID.fullmatch(waba):
        raise TemplateError(
            "set the channel's WhatsApp Business Account id (config.waba_id, digits) to sync its templates",
            code="no_account",
        )
    return waba


# --- sync --------------------------------------------------------------------------------------------


def templates_sync(*, channel: Channel) -> SyncResult:
    """Replace the channel's stored templates with what Meta lists for its WABA now. Raises
    TemplateError, or SendError when Meta cannot be asked (nothing is changed then)."""
    _template_adapter(channel)
    waba = account_id(channel)
    listed = call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.fetch_templates(account_id=waba, credentials=credentials),
    )
    now = timezone.now()
    result = SyncResult()
    with transaction.atomic():
        existing = {
            (t.name, t.language): t
            for t in MessageTemplate.objects.for_tenant(channel.tenant_id).select_for_update().filter(channel=channel)
        }
        seen: set[tuple[str, str]] = set()
        for item in listed:
            fields = _fields(item)
            if fields is None:
                continue
            key = (fields["name"], fields["language"])
            if key in seen:
                continue
            seen.add(key)
            row = existing.get(key)
            if row is None:
                MessageTemplate.objects.create(
                    tenant_id=channel.tenant_id, channel=channel, waba_id=waba, synced_at=now, **fields
                )
                result.created += 1
            else:
                for name, value in fields.items():
                    setattr(row, name, value)
                row.waba_id, row.synced_at = waba, now
                row.save()
                result.updated += 1
        gone = [row.pk for key, row in existing.items() if key not in seen]
        if gone:
            result.removed = MessageTemplate.objects.for_tenant(channel.tenant_id).filter(pk__in=gone).delete()[0]
    return result


def _fields(item: dict[str, Any]) -> dict[str, Any] | None:
    name, language = str(item.get("name") or ""), str(item.get("language") or "")
    if not name or not language:
        return None
    components = item.get("components")
    return {
        "meta_id": str(item.get("id") or "")[:64],
        "name": name[:512],
        "language": language[:16],
        "category": str(item.get("category") or "")[:32],
        "status": str(item.get("status") or "")[:32],
        "rejected_reason": _reason(item.get("rejected_reason"))[:200],
        "parameter_format": str(item.get("parameter_format") or "")[:16],
        "components": [c for c in components if isinstance(c, dict)] if isinstance(components, list) else [],
    }


def _reason(value: Any) -> str:
    text = str(value or "")
    return "" if text.upper() == "NONE" else text


# --- lookup, preview, render ---------------------------------------------------------------------------


def template_get(*, channel: Channel, name: str, language: str) -> MessageTemplate:
    found = (
        MessageTemplate.objects.for_tenant(channel.tenant_id)
        .filter(channel=channel, name=name, language=language)
        .first()
    )
    if found is None:
        raise TemplateError(
            f"no template '{name}' in language '{language}' on this channel (sync the templates first?)",
            code="not_found",
        )
    return found


def _component(template: MessageTemplate, kind: str) -> dict[str, Any] | None:
    for component in template.components or []:
        if isinstance(component, dict) and str(component.get("type", "")).upper() == kind:
            return component
    return None


def placeholders(text: str) -> list[str]:
    """The variable names of a template text in order of first appearance ("1", "2" or "first_name")."""
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(text or ""):
        if match.group(1) not in names:
            names.append(match.group(1))
    return names


def _fill(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text or "")


def template_variables(template: MessageTemplate) -> dict[str, Any]:
    """What a sender must supply: the body's variable names and the header's (text variable or media)."""
    body = _component(template, "BODY") or {}
    header = _component(template, "HEADER") or {}
    header_format = str(header.get("format", "")).upper()
    needs: dict[str, Any] = {"body": placeholders(str(body.get("text", "")))}
    if header_format in MEDIA_FORMATS:
        needs["header"] = MEDIA_FORMATS[header_format]
    elif header_format == "TEXT" and placeholders(str(header.get("text", ""))):
        needs["header"] = "text"
    return needs


def template_preview(template: MessageTemplate, variables: dict[str, Any] | None = None) -> str:
    """The message as the contact will read it: header, body, footer and button labels, with the given
    body variables filled in (unfilled ones stay as {{n}})."""
    body_values = _body_values(template, (variables or {}).get("body"), strict=False)
    parts: list[str] = []
    header = _component(template, "HEADER")
    if header is not None:
        header_format = str(header.get("format", "")).upper()
        if header_format == "TEXT":
            value = (variables or {}).get("header")
            names = placeholders(str(header.get("text", "")))
            filled = {names[0]: value} if names and isinstance(value, str) and value else {}
            parts.append(_fill(str(header.get("text", "")), filled))
        elif header_format:
            parts.append(f"[{header_format.lower()}]")
    body = _component(template, "BODY")
    if body is not None:
        parts.append(_fill(str(body.get("text", "")), body_values))
    footer = _component(template, "FOOTER")
    if footer is not None and footer.get("text"):
        parts.append(str(footer["text"]))
    buttons = _component(template, "BUTTONS")
    if buttons is not None:
        labels = [str(b.get("text", "")) for b in buttons.get("buttons") or [] if isinstance(b, dict)]
        if labels:
            parts.append(" | ".join(f"[{label}]" for label in labels))
    return "\n\n".join(p for p in parts if p)


def _body_values(template: MessageTemplate, given: Any, *, strict: bool) -> dict[str, str]:
    names = placeholders(str((_component(template, "BODY") or {}).get("text", "")))
    if given is None:
        given = [] if not names or names[0].isdigit() else {}
    if isinstance(given, list):
        values = {str(i + 1): v for i, v in enumerate(given)}
    elif isinstance(given, dict):
        values = {str(k): v for k, v in given.items()}
    else:
        raise TemplateError("variables.body must be a list (positional) or an object (named)", code="invalid_variables")
    if not strict:
        return {k: str(v) for k, v in values.items() if isinstance(v, str | int | float)}
    missing = [n for n in names if not isinstance(values.get(n), str) or not values[n].strip()]
    extra = sorted(set(values) - set(names))
    if missing or extra:
        raise TemplateError(
            f"template '{template.name}' needs body variables {names or 'none'}"
            + (f"; missing: {missing}" if missing else "")
            + (f"; unknown: {extra}" if extra else ""),
            code="invalid_variables",
            details={"body": names},
        )
    too_long = [n for n in names if len(values[n]) > MAX_PARAMETER_CHARS]
    if too_long:
        raise TemplateError(
            f"body variables over {MAX_PARAMETER_CHARS} characters: {too_long}", code="invalid_variables"
        )
    return {n: values[n] for n in names}


def _header_parameter(template: MessageTemplate, given: Any) -> dict[str, Any] | None:
    header = _component(template, "HEADER")
    header_format = str((header or {}).get("format", "")).upper()
    if header_format in MEDIA_FORMATS:
        kind = MEDIA_FORMATS[header_format]
        if not isinstance(given, dict) or not (given.get("link") or given.get("id")):
            raise TemplateError(
                f"template '{template.name}' has a {kind} header: variables.header needs its link or media id",
                code="invalid_variables",
                details={"header": kind},
            )
        media: dict[str, Any] = {}
        if given.get("id"):
            media["id"] = str(given["id"])
        else:
            link = str(given["link"])
            if urlsplit(link).scheme != "https":
                raise TemplateError("a header media link must be an https:// URL", code="invalid_variables")
            media["link"] = link
        if kind == "document" and given.get("filename"):
            media["filename"] = str(given["filename"])[:240]
        return {"type": kind, kind: media}
    if header_format == "TEXT" and placeholders(str((header or {}).get("text", ""))):
        if not isinstance(given, str) or not given.strip():
            raise TemplateError(
                f"template '{template.name}' has a header variable: variables.header must be its text",
                code="invalid_variables",
                details={"header": "text"},
            )
        return {"type": "text", "text": given[:60]}
    if given not in (None, "", {}):
        raise TemplateError(f"template '{template.name}' has no header variable", code="invalid_variables")
    return None


def template_render(template: MessageTemplate, variables: dict[str, Any] | None) -> tuple[list[dict[str, Any]], str]:
    """The ``components`` for the send and the text the contact will read. Raises TemplateError."""
    variables = variables or {}
    if not isinstance(variables, dict):
        raise TemplateError("variables must be an object with body and header", code="invalid_variables")
    unknown = sorted(set(variables) - {"body", "header"})
    if unknown:
        raise TemplateError(f"unknown variables {unknown}: use body and header", code="invalid_variables")
    body_values = _body_values(template, variables.get("body"), strict=True)
    header = _header_parameter(template, variables.get("header"))
    components: list[dict[str, Any]] = []
    if header is not None:
        components.append({"type": "header", "parameters": [header]})
    if body_values:
        named = template.parameter_format.upper() == "NAMED" or not all(n.isdigit() for n in body_values)
        parameters = [
            {"type": "text", "parameter_name": n, "text": v} if named else {"type": "text", "text": v}
            for n, v in body_values.items()
        ]
        components.append({"type": "body", "parameters": parameters})
    return components, template_preview(template, variables)


# --- send ------------------------------------------------------------------------------------------------


def check_sendable(template: MessageTemplate) -> None:
    status = (template.status or "").upper()
    if status == "APPROVED":
        return
    why = NOT_SENDABLE.get(status, f"in status {status or 'unknown'}")
    reason = f" ({template.rejected_reason})" if template.rejected_reason else ""
    raise TemplateError(
        f"template '{template.name}' ({template.language}) cannot be sent: {why}{reason}",
        code="template_not_sendable",
        details={"status": status, "rejected_reason": template.rejected_reason},
    )


def send_template(
    *,
    channel: Channel,
    recipient_id: str,
    template: MessageTemplate,
    variables: dict[str, Any] | None = None,
    callback_data: str = "",
) -> tuple[SendResult, str]:
    """Send an approved template with its variables (no window applies). Returns the result and the text
    the contact reads. Raises TemplateError before any Graph call, or SendError from Meta."""
    if template.tenant_id != channel.tenant_id or template.channel_id != channel.pk:
        raise TemplateError("this template does not belong to this channel", code="not_found")
    _template_adapter(channel)
    check_sendable(template)
    components, text = template_render(template, variables)
    guard_sendable(channel)
    result = call_adapter(
        channel=channel,
        fn=lambda adapter, credentials: adapter.send_template(
            channel_external_id=channel.external_id,
            recipient_id=recipient_id,
            name=template.name,
            language=template.language,
            components=components,
            credentials=credentials,
            callback_data=callback_data,
        ),
    )
    return result, text


def conversation_send_template(
    *,
    tenant: Any,
    conversation: Any,
    name: str,
    language: str,
    variables: dict[str, Any] | None = None,
    user: Any = None,
) -> Any:
    """An agent (or the API) sends a template into a conversation, window or not: checked first (not
    found, not approved, wrong variables: TemplateError, nothing stored), then stored and sent as the
    agent's message (kind ``template``, the text the contact reads; ``conversation_send``)."""
    if conversation.tenant_id != tenant.pk:
        raise TemplateError("no such conversation", code="not_found")
    channel = conversation.channel
    template = template_get(channel=channel, name=name, language=language)
    check_sendable(template)
    _components, text = template_render(template, variables)
    return conversation_send(
        tenant=tenant,
        conversation=conversation,
        kind="template",
        text=text,
        payload={"template": {"name": name, "language": language, "variables": variables or {}}},
        user=user,
        send=lambda: send_template(
            channel=channel, recipient_id=conversation.contact.external_id, template=template, variables=variables
        )[0],
    )
