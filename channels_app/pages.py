"""Public pages: the web chat demo page at /demo/<tenant slug>/.

Only a web chat channel that opted in (``config["demo_page"] = true``) is shown, so a tenant's slug
alone reveals nothing. ``make run`` prints the demo tenant's page.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from channels_app.models import Channel
from tenants.models import Tenant


def demo_channel(*, tenant: Tenant) -> Channel | None:
    return (
        Channel.objects.for_tenant(tenant)
        .filter(type=Channel.Type.WEBCHAT, is_active=True, config__demo_page=True)
        .exclude(external_id="")
        .order_by("created_at")
        .first()
    )


def demo_page(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = Tenant.objects.filter(slug=slug, is_active=True).first()
    channel = demo_channel(tenant=tenant) if tenant else None
    if tenant is None or channel is None:
        raise Http404("No web chat demo for this tenant.")
    base_url = request.build_absolute_uri("/").rstrip("/")
    return render(
        request,
        "webchat/demo.html",
        {
            "tenant": tenant,
            "channel": channel,
            "widget_key": channel.external_id,
            "base_url": base_url,
            "title": (channel.config or {}).get("title") or tenant.name,
        },
    )
