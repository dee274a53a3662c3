"""Public pages (web chat demo page), included at the site root by config.urls."""

urlpatterns: list = []
