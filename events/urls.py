from django.urls import path

from events import api

T = "tenants/<uuid:tenant_id>"
W = f"{T}/webhooks/<uuid:webhook_id>"

urlpatterns = [
    path(f"{T}/events/", api.EventListView.as_view(), name="event-list"),
    path(f"{T}/webhooks/", api.WebhookListView.as_view(), name="webhook-list"),
    path(f"{W}/", api.WebhookDetailView.as_view(), name="webhook-detail"),
    path(f"{W}/rotate-secret/", api.WebhookRotateSecretView.as_view(), name="webhook-rotate-secret"),
    path(f"{W}/replay/", api.WebhookReplayView.as_view(), name="webhook-replay"),
    path(f"{W}/deliveries/", api.WebhookDeliveryListView.as_view(), name="webhook-delivery-list"),
    path(f"{W}/deliveries/<int:delivery_id>/", api.WebhookDeliveryDetailView.as_view(), name="webhook-delivery"),
    path(
        f"{W}/deliveries/<int:delivery_id>/replay/",
        api.WebhookDeliveryReplayView.as_view(),
        name="webhook-delivery-replay",
    ),
]
