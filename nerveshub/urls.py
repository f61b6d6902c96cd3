from django.contrib import admin
from django.urls import include, path

from nerveshub import views
from nerveshub.api import api, register_routers
from nerveshub.web.signin import AdminSignInForm

register_routers()

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
    path("console/", include("console.urls")),
    path("", include("nerveshub.web.urls")),
]
