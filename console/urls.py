from __future__ import annotations

from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("<int:device_id>/", views.console_page, name="page"),
]
