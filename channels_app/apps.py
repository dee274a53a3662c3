from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    label = "channels_app"
    verbose_name = "Channels"

    def ready(self) -> None:
        from channels_app import (
            services,  # noqa: F401  (registers the channels health check)
            webchat,
        )
        from channels_app.metrics import inbound_events_gauge
        from config.metrics import register_gauge
        from events import bus
        from events.types import EventType

        bus.subscribe(EventType.TENANT_UPDATED, webchat.close_tenant_sockets)
        register_gauge(
            "metachat_inbound_events", "Stored inbound messages and statuses by status", inbound_events_gauge
        )
