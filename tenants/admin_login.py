"""Admin login with failed attempts throttled (the one rate limiter, tenants.ratelimit).

Failures are counted per username and client address (ADMIN_LOGIN_FAILURES_PER_USER_AND_ADDRESS) and
per client address whatever the username (ADMIN_LOGIN_FAILURES_PER_ADDRESS), in windows of
ADMIN_LOGIN_WINDOW_SECONDS. Once either count is reached, that login is refused before the password
is even checked (so the right password is refused too) until the window ends: the page says so and
answers 429 with Retry-After. Refusals are logged and counted (``admin_login_refusals_total``).
Per address and not per username alone, so that nobody can lock a staff member out from everywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

from config import metrics
from tenants import ratelimit

logger = logging.getLogger(__name__)


class ThrottledAdminLoginForm(AdminAuthenticationForm):
    """The admin's login form, refusing a username or an address with too many recent failures."""

    locked_for = 0  # seconds until the lockout that refused this attempt ends (0: not refused for that)

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "").strip().casefold()
        address = ratelimit.request_client_address(self.request) if self.request is not None else "unknown"
        limits = _limits(username=username, address=address)
        for group, key, limit in limits:
            seen = ratelimit.hit(
                group=group, key=key, limit=limit, period=settings.ADMIN_LOGIN_WINDOW_SECONDS, increment=False
            )
            if limit > 0 and seen.count >= limit:
                self.locked_for = seen.retry_after
                metrics.incr("admin_login_refusals_total", limit=group)
                logger.warning("admin login refused: too many failures", extra={"limit": group, "address": address})
                minutes = max(1, round(seen.retry_after / 60))
                raise ValidationError(
                    f"Too many failed logins; this login is locked for {minutes} more minute(s). "
                    "Try again later, or ask another administrator to reset the password.",
                    code="locked",
                )
        try:
            return super().clean()
        except ValidationError:
            for group, key, limit in limits:
                ratelimit.hit(group=group, key=key, limit=limit, period=settings.ADMIN_LOGIN_WINDOW_SECONDS)
            raise


def _limits(*, username: str, address: str) -> list[tuple[str, str, int]]:
    return [
        ("admin.login.user", f"{username}|{address}", int(settings.ADMIN_LOGIN_FAILURES_PER_USER_AND_ADDRESS)),
        ("admin.login.address", address, int(settings.ADMIN_LOGIN_FAILURES_PER_ADDRESS)),
    ]


def login_view(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
    """The admin site's own login (with ThrottledAdminLoginForm as its form); a locked-out attempt
    answers 429 with Retry-After, the page showing why."""
    response = admin.site.login(request, extra_context)
    form = (getattr(response, "context_data", None) or {}).get("form")
    if isinstance(form, ThrottledAdminLoginForm) and form.locked_for:
        response.status_code = 429
        response["Retry-After"] = str(form.locked_for)
    return response
