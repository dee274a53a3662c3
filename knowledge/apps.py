from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    name = "knowledge"
    verbose_name = "Knowledge"

    def ready(self) -> None:
        from config.metrics import register_gauge
        from knowledge.metrics import indexing_backlog_gauge

        register_gauge(
            "metachat_indexing_backlog_documents",
            "Documents waiting for or in indexing, by queue, tenant and status",
            indexing_backlog_gauge,
        )
