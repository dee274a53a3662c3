"""API routes of this app, included under /api/ by config.urls."""

from django.urls import path

from conversations import api, experiments_api

base = "tenants/<uuid:tenant_id>/conversations/"
one = base + "<uuid:conversation_id>/"
experiments = "tenants/<uuid:tenant_id>/experiments/"
experiment = experiments + "<uuid:experiment_id>/"

urlpatterns = [
    path(base, api.ConversationListView.as_view(), name="conversation-list"),
    path(base + "usage/", api.UsageView.as_view(), name="conversation-usage"),
    path(one, api.ConversationDetailView.as_view(), name="conversation-detail"),
    path(one + "messages/", api.ConversationMessagesView.as_view(), name="conversation-messages"),
    path(one + "reply/", api.ConversationReplyView.as_view(), name="conversation-reply"),
    path(one + "resolve/", api.ConversationResolveView.as_view(), name="conversation-resolve"),
    path(one + "return-to-bot/", api.ConversationReturnToBotView.as_view(), name="conversation-return-to-bot"),
    path(one + "handoff/", api.ConversationHandoffView.as_view(), name="conversation-handoff"),
    path(one + "retry/", api.ConversationRetryView.as_view(), name="conversation-retry"),
    path(experiments, experiments_api.ExperimentListView.as_view(), name="experiment-list"),
    path(experiment, experiments_api.ExperimentDetailView.as_view(), name="experiment-detail"),
    path(experiment + "start/", experiments_api.ExperimentStartView.as_view(), name="experiment-start"),
    path(experiment + "stop/", experiments_api.ExperimentStopView.as_view(), name="experiment-stop"),
    path(experiment + "promote/", experiments_api.ExperimentPromoteView.as_view(), name="experiment-promote"),
    path("tenants/<uuid:tenant_id>/functions/", api.FunctionListView.as_view(), name="function-list"),
    path(
        "tenants/<uuid:tenant_id>/functions/<uuid:function_id>/",
        api.FunctionDetailView.as_view(),
        name="function-detail",
    ),
    path(
        "tenants/<uuid:tenant_id>/functions/<uuid:function_id>/rotate-secret/",
        api.FunctionRotateSecretView.as_view(),
        name="function-rotate-secret",
    ),
]
