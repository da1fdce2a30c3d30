"""Websocket routes (webapp.asgi)."""

from django.urls import path

from webapp.live.consumers import SearchEventsConsumer

websocket_urlpatterns = [
    path("ws/searches/<int:search_id>/", SearchEventsConsumer.as_asgi()),
]
