from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from events.models import Event
from tenants.admin_scoping import TenantScopedAdmin


@admin.register(Event)
class EventAdmin(TenantScopedAdmin):
    list_display = ["created_at", "type", "tenant", "correlation_id"]
    list_filter = ["type", "created_at"]
    search_fields = ["=event_id", "=correlation_id"]
    readonly_fields = ["event_id", "tenant", "type", "payload", "correlation_id", "created_at"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
