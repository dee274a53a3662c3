"""Adding a platform is one adapter module and one registry line: routes, webhook paths and platform
checks are read from the registry, and optional abilities are declared protocols."""

from __future__ import annotations

from django.urls import resolve

from channels_app import services, webhook_asgi, webhooks
from channels_app.adapters import ADAPTERS, graph_platforms
from channels_app.adapters.base import ProfileAdapter, TypingAdapter
from channels_app.models import Channel


def test_every_channel_type_has_an_adapter_and_every_adapter_a_channel_type() -> None:
    assert set(ADAPTERS) == set(Channel.Type.values)


def test_webhook_routes_of_both_stacks_come_from_the_graph_platforms_of_the_registry() -> None:
    assert graph_platforms() == ("whatsapp", "messenger")
    assert graph_platforms() == services.META_PLATFORMS
    for platform in graph_platforms():
        for path in (f"/webhooks/{platform}", f"/webhooks/{platform}/"):
            match = resolve(path)
            assert match.func is webhooks.webhook and match.kwargs == {"platform": platform}
            assert webhook_asgi.PATHS[path] == platform
    assert "/webhooks/webchat" not in webhook_asgi.PATHS


def test_optional_abilities_are_declared_protocols() -> None:
    assert isinstance(ADAPTERS["messenger"], ProfileAdapter)
    assert not isinstance(ADAPTERS["whatsapp"], ProfileAdapter)
    assert all(isinstance(adapter, TypingAdapter) for adapter in ADAPTERS.values())
