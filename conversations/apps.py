from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from config.metrics import register_gauge
        from conversations.metrics import conversations_gauge

        register_gauge("metachat_conversations", "Conversations by state", conversations_gauge)
