"""The inbox's pages and JSON endpoints, under ``/inbox/``, for the admin's logged-in staff.

Every endpoint names its tenant (``?tenant=<id>``; an agent of one tenant may leave it out) and is
refused unless the user is an agent of that tenant (403); conversations are looked up within the tenant
only (another tenant's id answers 404 like a missing one). Writes are POSTs with Django's CSRF token.
Errors are ``{"error": {"code", "message"}}`` (with ``details`` where the refusal has some: the window's
times, a template's status).
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable
from functools import wraps
from typing import Any
from uuid import UUID

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.views import redirect_to_login
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from channels_app.models import Channel
from channels_app.services import templates, window
from conversations.inbox import selectors, services
from conversations.models import Conversation, Message
from conversations.state import InvalidTransition
from tenants.models import Membership, Tenant

MAX_TEXT = 4096


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JsonResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return JsonResponse({"error": error}, status=status)


# A template refusal's status, as the REST API maps it (channels_app.api).
TEMPLATE_ERROR_STATUS = {"not_found": 404, "template_not_sendable": 409}


def user_tenants(user: Any) -> list[Tenant]:
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return []
    if user.is_superuser:
        return list(Tenant.objects.order_by("name")[:500])
    ids = Membership.objects.filter(user_id=user.pk).values_list("tenant_id", flat=True)
    return list(Tenant.objects.filter(pk__in=ids).order_by("name"))


def _tenant(request: HttpRequest) -> Tenant:
    wanted = request.GET.get("tenant") or request.headers.get("X-Tenant", "")
    user: Any = request.user
    if not wanted:
        ids = list(Membership.objects.filter(user_id=user.pk).values_list("tenant_id", flat=True)[:2])
        if len(ids) != 1:
            raise Refused(400, "tenant_required", "Name the tenant (?tenant=<id>).")
        wanted = str(ids[0])
    tenant = Tenant.objects.filter(pk=wanted).first() if _is_uuid(wanted) else None
    if tenant is None or not services.is_tenant_agent(tenant, request.user):
        raise Refused(403, "forbidden", "You are not an agent of this tenant.")
    return tenant


def _is_uuid(value: str) -> bool:
    try:
        UUID(str(value))
    except ValueError:
        return False
    return True


def api(view: Callable[..., Any]) -> Callable[..., HttpResponseBase]:
    """Staff session required (401 JSON otherwise); the tenant resolved and checked; refusals as JSON."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user: Any = request.user
        if not (user.is_authenticated and user.is_active and user.is_staff):
            return _error(401, "not_authenticated", "Log in to the admin first.")
        try:
            tenant = _tenant(request)
            result = view(request, tenant, *args, **kwargs)
        except Refused as exc:
            return _error(exc.status, exc.code, exc.message)
        except (Conversation.DoesNotExist, Message.DoesNotExist):
            return _error(404, "not_found", "No such conversation.")
        except services.InboxError as exc:
            return _error(400, exc.code, str(exc))
        except InvalidTransition as exc:
            return _error(409, "invalid_transition", str(exc))
        except window.OutsideWindow as exc:  # refused before anything was stored or sent
            return _error(409, window.OUTSIDE_WINDOW, str(exc), exc.details)
        except templates.TemplateError as exc:
            return _error(TEMPLATE_ERROR_STATUS.get(exc.code, 400), exc.code, str(exc), exc.details)
        return result if isinstance(result, HttpResponseBase) else JsonResponse(result)

    return wrapped


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        raise Refused(400, "invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise Refused(400, "invalid_json", "The body must be a JSON object.")
    return data


def _text(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise Refused(400, "empty", "The text is empty.")
    if len(text) > MAX_TEXT:
        raise Refused(400, "too_long", f"At most {MAX_TEXT} characters.")
    return text


def _conversation(tenant: Tenant, conversation_id: UUID) -> Conversation:
    return (
        Conversation.objects.for_tenant(tenant).select_related("contact", "channel", "assignee").get(pk=conversation_id)
    )


# --- the page -----------------------------------------------------------------------------------------


@ensure_csrf_cookie
def inbox_page(request: HttpRequest) -> HttpResponse:
    user: Any = request.user
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    tenants = user_tenants(user)
    wanted = request.GET.get("tenant", "")
    if wanted:
        tenant = next((t for t in tenants if str(t.pk) == wanted), None)
        if tenant is None:
            context = {**admin.site.each_context(request), "tenants": tenants, "refused": True}
            return render(request, "inbox/choose_tenant.html", context, status=403)
    else:
        tenant = tenants[0] if len(tenants) == 1 else None
    site = admin.site.each_context(request)  # the admin's header, titles and colour theme
    if tenant is None:
        return render(request, "inbox/choose_tenant.html", {**site, "tenants": tenants})
    context = {**site, "is_nav_sidebar_enabled": False, "tenant": tenant, "tenants": tenants}
    return render(request, "inbox/inbox.html", context)


# --- JSON ---------------------------------------------------------------------------------------------


@require_GET
@api
def meta(request: HttpRequest, tenant: Tenant) -> dict[str, Any]:
    channels = Channel.objects.for_tenant(tenant).order_by("name").values("id", "name", "type")
    return {
        "tenant": {"id": str(tenant.pk), "name": tenant.name},
        "me": services.user_frame(request.user),
        "agents": [services.user_frame(u) for u in services.tenant_agents(tenant)],
        "channels": [{"id": str(c["id"]), "name": c["name"], "type": c["type"]} for c in channels],
        "canned": services.canned_replies(tenant=tenant),
        "satisfaction": services.satisfaction_summary(tenant=tenant),
        # The list's tag filter offers the tenant's conversation categories (what analysis tags with).
        "categories": [c.name for c in tenant.config.categories],
        "sentiments": list(selectors.SENTIMENTS),
    }


@require_GET
@api
def conversation_list(request: HttpRequest, tenant: Tenant) -> dict[str, Any]:
    scope = request.GET.get("scope", "all")
    if scope not in selectors.FILTERS:
        raise Refused(400, "invalid_scope", f"scope is one of {', '.join(selectors.FILTERS)}.")
    state = request.GET.get("state", "")
    if state and state not in Conversation.State.values:
        raise Refused(400, "invalid_state", f"state is one of {', '.join(Conversation.State.values)}.")
    channel = request.GET.get("channel", "")
    if channel and not _is_uuid(channel):
        raise Refused(400, "invalid_channel", "channel is a channel id.")
    sentiment = request.GET.get("sentiment", "")
    if sentiment and sentiment not in selectors.SENTIMENTS:
        raise Refused(400, "invalid_sentiment", f"sentiment is one of {', '.join(selectors.SENTIMENTS)}.")
    tag = request.GET.get("tag", "")
    if len(tag) > selectors.TAG_MAX_CHARS:
        raise Refused(400, "invalid_tag", f"tag is a category name of at most {selectors.TAG_MAX_CHARS} characters.")
    only = request.GET.get("id", "")
    if only and not _is_uuid(only):
        raise Refused(404, "not_found", "No such conversation.")
    try:
        offset = int(request.GET.get("offset", "0"))
    except ValueError:
        raise Refused(400, "invalid_offset", "offset is a number.") from None
    rows = selectors.conversation_rows(
        tenant=tenant, user=request.user, scope=scope, state=state, channel_id=channel, sentiment=sentiment,
        tag=tag, conversation_id=only, offset=offset,
    )  # fmt: skip
    return {"results": rows, "offset": offset, "page_size": selectors.PAGE_SIZE}


@require_GET
@api
def conversation_detail(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    conversation = _conversation(tenant, conversation_id)
    detail = selectors.conversation_detail(tenant=tenant, conversation=conversation, user=request.user)
    services.mark_read(tenant=tenant, conversation=conversation, user=request.user)
    return detail


@require_POST
@api
def reply(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    text = _text(_body(request))
    conversation = _conversation(tenant, conversation_id)
    message = services.reply(tenant=tenant, conversation=conversation, text=text, user=request.user)
    return {"message": services.message_frame(message, agent=request.user)}


@require_GET
@api
def template_list(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    """The approved templates of the conversation's channel, with what to fill, for the composer."""
    conversation = _conversation(tenant, conversation_id)
    return {"templates": services.approved_templates(tenant=tenant, conversation=conversation)}


@require_POST
@api
def template_send(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> HttpResponseBase:
    """Send an approved template (``{name, language, variables: {body, header}}``). Refusals as the REST
    API's: 404 unknown, 409 ``template_not_sendable`` with its reason, 400 ``invalid_variables``; 502
    ``not_delivered`` when it was stored but Meta refused it (the timeline shows it failed)."""
    conversation = _conversation(tenant, conversation_id)
    data = _body(request)
    name, language, variables = data.get("name"), data.get("language"), data.get("variables", {})
    if not isinstance(name, str) or not name or len(name) > services.TEMPLATE_NAME_MAX:
        raise Refused(400, "invalid_template", "name is the template's name.")
    if not isinstance(language, str) or not language or len(language) > services.TEMPLATE_LANGUAGE_MAX:
        raise Refused(400, "invalid_template", "language is the template's language code.")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise Refused(400, "invalid_variables", "variables is an object with body and header.")
    message = services.send_template(
        tenant=tenant, conversation=conversation, name=name, language=language, variables=variables,
        user=request.user,
    )  # fmt: skip
    frame = services.message_frame(message, agent=request.user)
    if message.status == Message.Status.FAILED:
        return JsonResponse(
            {"error": {"code": "not_delivered", "message": f"The template was stored but not delivered: "
                       f"{frame['error']}", "details": {"message_id": message.pk}}, "message": frame},
            status=502,
        )  # fmt: skip
    return JsonResponse({"message": frame})


@require_POST
@api
def note(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    text = _text(_body(request))
    conversation = _conversation(tenant, conversation_id)
    created = services.add_note(tenant=tenant, conversation=conversation, text=text, user=request.user)
    return {"note": services.note_frame(created)}


@require_POST
@api
def assign(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    data = _body(request)
    conversation = _conversation(tenant, conversation_id)
    user_id = data.get("user_id")
    assignee = None
    if user_id is not None:
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise Refused(400, "invalid_user", "user_id is an agent's id (or null to unassign).")
        assignee = get_user_model().objects.filter(pk=user_id).first()
        if assignee is None or not services.is_tenant_agent(tenant, assignee):
            raise Refused(400, "not_an_agent", "Conversations can be assigned only to an agent of this tenant.")
    services.assign(tenant=tenant, conversation=conversation, assignee=assignee, by=request.user)
    return {"assignee": services.user_frame(assignee), "state": conversation.state}


@require_POST
@api
def resolve(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    conversation = services.resolve(
        tenant=tenant, conversation=_conversation(tenant, conversation_id), user=request.user
    )
    return {"state": conversation.state}


@require_POST
@api
def return_to_bot(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    conversation = _conversation(tenant, conversation_id)
    services.return_to_bot(tenant=tenant, conversation=conversation, user=request.user)
    return {"state": conversation.state}


@require_POST
@api
def mark_read(request: HttpRequest, tenant: Tenant, conversation_id: UUID) -> dict[str, Any]:
    data = _body(request)
    up_to = data.get("up_to")
    if up_to is not None and (isinstance(up_to, bool) or not isinstance(up_to, int)):
        raise Refused(400, "invalid_up_to", "up_to is a message id.")
    conversation = _conversation(tenant, conversation_id)
    return {"read_up_to": services.mark_read(tenant=tenant, conversation=conversation, user=request.user, up_to=up_to)}


@require_GET
@api
def media(request: HttpRequest, tenant: Tenant, conversation_id: UUID, message_id: int, index: int) -> HttpResponseBase:
    """An attachment of a message of the conversation, from the tenant's storage (images inline)."""
    message = Message.objects.for_tenant(tenant).get(conversation_id=conversation_id, pk=message_id)
    items = services.message_media(message)
    if index >= len(items) or not isinstance(items[index], dict) or not items[index].get("storage_path"):
        raise Http404("No such attachment.")
    item = items[index]
    path = str(item["storage_path"])
    if not path.startswith(f"{tenant.pk}/"):
        raise Http404("No such attachment.")
    mime = str(item.get("mime_type") or mimetypes.guess_type(path)[0] or "application/octet-stream")
    inline = mime.startswith("image/") and mime != "image/svg+xml"
    response = FileResponse(
        default_storage.open(path, "rb"),
        content_type=mime if inline else "application/octet-stream",
        as_attachment=not inline,
        filename=str(item.get("filename") or path.rsplit("/", 1)[-1]),
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
