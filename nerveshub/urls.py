from django.contrib import admin
from django.urls import include, path

from nerveshub import views
from nerveshub.api import api, register_routers

register_routers()

admin.site.site_header = "NervesHub"
admin.site.site_title = "NervesHub"
admin.site.index_title = "Fleet administration"

urlpatterns = [
    path("status/alive", views.alive, name="status-alive"),
    path("status/health", views.health, name="status-health"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("console/", include("console.urls")),
    path("", include("nerveshub.web.urls")),
]
