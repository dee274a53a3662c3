from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from config.metrics import register_gauge, register_tenant_ranking
        from conversations.metrics import busiest_tenants, conversations_gauge

        register_gauge("metachat_conversations", "Conversations by state", conversations_gauge)
        from conversations.inbox import live
        from events import bus

        bus.subscribe(bus.ALL, live.on_event)  # messages and state changes reach the agents' inbox live
        register_tenant_ranking(busiest_tenants)
