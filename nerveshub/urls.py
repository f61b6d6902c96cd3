from django.contrib import admin
from django.urls import include, path

from nerveshub import views
from nerveshub.api import api, register_routers
from nerveshub.nhapi import api as nerveshub_api
from nerveshub.web.signin import AdminSignInForm

register_routers()
nerveshub_api.register_routers()

admin.site.site_header = "NervesHub"
admin.site.site_title = "NervesHub"
admin.site.index_title = "Fleet administration"
# Throttled like the org sign-in page (nerveshub.web.throttle).
admin.site.login_form = AdminSignInForm

urlpatterns = [
    path("status/alive", views.alive, name="status-alive"),
    path("status/health", views.health, name="status-health"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    # NervesHub's user API for its own tools (docs/nerveshub-api.md); after
    # api/v1/, whose paths it never shadows (none of its routes starts with v1/).
    path("api/", nerveshub_api.api.urls),
    path("console/", include("console.urls")),
    path("", include("nerveshub.web.urls")),
]
