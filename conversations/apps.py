from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from config.metrics import register_gauge, register_tenant_ranking
        from conversations.metrics import busiest_tenants, conversations_gauge

        register_gauge("metachat_conversations", "Conversations by state", conversations_gauge)
        register_tenant_ranking(busiest_tenants)
