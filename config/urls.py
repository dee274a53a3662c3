from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config import health, metrics
from tenants import admin_login

# Failed admin logins are throttled (tenants.admin_login); the throttled view answers 429 when locked.
admin.site.login_form = admin_login.ThrottledAdminLoginForm
admin.site.site_header = "Meta Chat Platform"
admin.site.site_title = "Meta Chat Platform"
admin.site.index_title = "Administration"
# No public site lives at "/": the "View site" link is left out rather than leading to a 404.
admin.site.site_url = None

urlpatterns = [
    path("api/health", health.health_view, name="health"),
    path("api/health/live", health.live_view, name="health-live"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and ReDoc load their scripts from /static/ (drf-spectacular-sidecar): they work offline.
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("api/", include("tenants.urls")),
    path("api/", include("channels_app.urls")),
    path("api/", include("knowledge.urls")),
    path("api/", include("conversations.urls")),
    path("api/", include("events.urls")),
    path("webhooks/", include("channels_app.webhook_urls")),
    path("api/", include("channels_app.webchat_urls")),
    path("", include("channels_app.page_urls")),
    # The agents' inbox (staff session): the page, its JSON endpoints; its socket is /ws/inbox/.
    path("inbox/", include("conversations.inbox.urls")),
    path("admin/login/", admin_login.login_view, name="admin-login"),
    path("admin/", admin.site.urls),
]

if settings.DEBUG:
    from django.conf.urls.static import static

    urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
