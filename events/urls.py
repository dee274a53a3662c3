from django.urls import path

from events import api

urlpatterns = [
    path("tenants/<uuid:tenant_id>/events/", api.EventListView.as_view(), name="event-list"),
]
