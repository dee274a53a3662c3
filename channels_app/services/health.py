"""The channels health check."""

from __future__ import annotations

from channels_app.models import Channel
from config.health import CheckResult, register_check


def check_channels() -> CheckResult:
    """Degraded while any channel cannot send (e.g. Meta token expired): an operator must act."""
    disabled = Channel.objects.exclude(sending_disabled_reason="").count()
    return CheckResult(ok=disabled == 0, detail={"sending_disabled": disabled})


register_check("channels", check_channels)
