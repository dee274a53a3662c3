"""API routes of this app, included under /api/ by config.urls."""

from django.urls import path

from channels_app import api

urlpatterns: list = [
    path("tenants/<uuid:tenant_id>/channels/", api.ChannelListView.as_view(), name="channel-list"),
    path(
        "tenants/<uuid:tenant_id>/channels/<uuid:channel_id>/",
        api.ChannelDetailView.as_view(),
        name="channel-detail",
    ),
    path(
        "tenants/<uuid:tenant_id>/channels/<uuid:channel_id>/credentials/",
        api.ChannelCredentialsView.as_view(),
        name="channel-credentials",
    ),
]
