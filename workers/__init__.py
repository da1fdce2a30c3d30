"""Celery app and tasks: the glue between the database rows and nas_engine (ARCHITECTURE.md)."""

from workers.celery import app

__all__ = ("app",)
