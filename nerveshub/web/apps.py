from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "nerveshub.web"
    label = "web"
    verbose_name = "Organization pages"
