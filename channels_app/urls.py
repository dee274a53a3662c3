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
    path(
        "tenants/<uuid:tenant_id>/channels/<uuid:channel_id>/templates/",
        api.ChannelTemplateListView.as_view(),
        name="channel-templates",
    ),
    path(
        "tenants/<uuid:tenant_id>/channels/<uuid:channel_id>/templates/sync/",
        api.ChannelTemplateSyncView.as_view(),
        name="channel-templates-sync",
    ),
    path(
        "tenants/<uuid:tenant_id>/conversations/<uuid:conversation_id>/template/",
        api.ConversationTemplateView.as_view(),
        name="conversation-template",
    ),
    path(
        "tenants/<uuid:tenant_id>/conversations/<uuid:conversation_id>/choices/",
        api.ConversationChoicesView.as_view(),
        name="conversation-choices",
    ),
    path(
        "tenants/<uuid:tenant_id>/conversations/<uuid:conversation_id>/media/",
        api.ConversationMediaView.as_view(),
        name="conversation-media",
    ),
    path(
        "tenants/<uuid:tenant_id>/channels/<uuid:channel_id>/consents/import/",
        api.ChannelConsentImportView.as_view(),
        name="channel-consents-import",
    ),
    path(
        "tenants/<uuid:tenant_id>/channels/<uuid:channel_id>/campaigns/",
        api.ChannelCampaignListView.as_view(),
        name="channel-campaigns",
    ),
    path("tenants/<uuid:tenant_id>/campaigns/<uuid:campaign_id>/", api.CampaignDetailView.as_view(), name="campaign"),
    *[
        path(
            f"tenants/<uuid:tenant_id>/campaigns/<uuid:campaign_id>/{action}/",
            api.CampaignActionView.as_view(action=action),
            name=f"campaign-{action}",
        )
        for action in ("start", "pause", "resume")
    ],
]
