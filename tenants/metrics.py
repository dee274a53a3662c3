"""The tenants area's counters. Declared when TenantsConfig.ready() imports this module."""

from __future__ import annotations

from config.metrics import counter

counter(
    "ratelimit_unavailable_total",
    "Rate limit checks let through because Redis was unavailable, by limit group",
    labels=("group",),
)
counter("admin_login_refusals_total", "Admin logins refused by a throttle, by limit", labels=("limit",))
