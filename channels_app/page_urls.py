"""Public pages (web chat demo page), included at the site root by config.urls."""

from django.urls import path

from channels_app import pages

urlpatterns = [
    path("demo/<slug:slug>/", pages.demo_page, name="webchat-demo"),
]
