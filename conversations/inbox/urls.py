"""``/inbox/``: the agents' inbox page and its JSON endpoints (conversations.inbox.views)."""

from django.urls import path

from conversations.inbox import views

app_name = "inbox"

urlpatterns = [
    path("", views.inbox_page, name="page"),
    path("api/meta/", views.meta, name="meta"),
    path("api/conversations/", views.conversation_list, name="list"),
    path("api/conversations/<uuid:conversation_id>/", views.conversation_detail, name="detail"),
    path("api/conversations/<uuid:conversation_id>/reply/", views.reply, name="reply"),
    path("api/conversations/<uuid:conversation_id>/templates/", views.template_list, name="templates"),
    path("api/conversations/<uuid:conversation_id>/template/", views.template_send, name="template"),
    path("api/conversations/<uuid:conversation_id>/notes/", views.note, name="note"),
    path("api/conversations/<uuid:conversation_id>/assign/", views.assign, name="assign"),
    path("api/conversations/<uuid:conversation_id>/resolve/", views.resolve, name="resolve"),
    path("api/conversations/<uuid:conversation_id>/return-to-bot/", views.return_to_bot, name="return"),
    path("api/conversations/<uuid:conversation_id>/read/", views.mark_read, name="read"),
    path("api/conversations/<uuid:conversation_id>/media/<int:message_id>/<int:index>/", views.media, name="media"),
]
