"""Public webhook routes (/webhooks/...), included by config.urls."""

from django.urls import path

from channels_app import webhooks

urlpatterns: list = [
    path("whatsapp", webhooks.whatsapp_webhook, name="webhook-whatsapp"),
    path("whatsapp/", webhooks.whatsapp_webhook),
    path("messenger", webhooks.messenger_webhook, name="webhook-messenger"),
    path("messenger/", webhooks.messenger_webhook),
]
