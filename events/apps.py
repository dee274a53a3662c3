from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events"

    def ready(self) -> None:
        # After every commit that emitted an event: in-process subscribers, then the outbox kicks
        # (webhook fan-out, RabbitMQ). Explicit registration, not Django signals.
        from config.health import register_check
        from config.metrics import register_gauge
        from events import bus, outbox
        from events.health import check_outbox
        from events.metrics import event_log_gauge, outbox_lag_gauge
        from events.services import register_after_commit

        register_after_commit(bus.publish_committed)
        register_after_commit(outbox.on_event_committed)
        register_check("event_outbox", check_outbox)
        register_gauge("metachat_event_log_rows", "Rows in the event log (audit and outbox)", event_log_gauge)
        register_gauge(
            "metachat_outbox_lag_seconds", "Age of the oldest event not yet delivered, by outlet", outbox_lag_gauge
        )
