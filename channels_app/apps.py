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
        from channels_app.secrets import channel_secret_repository
        from config.metrics import register_gauge
        from events import bus
        from events.types import EventType
        from tenants.secrets import register_secret_repository

        bus.subscribe(EventType.TENANT_UPDATED, webchat.close_tenant_sockets)
        register_secret_repository(channel_secret_repository)
        register_gauge(
            "metachat_inbound_events", "Stored inbound messages and statuses by status", inbound_events_gauge
        )
