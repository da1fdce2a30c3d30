from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "webapp.fleet"
    verbose_name = "Workers"
