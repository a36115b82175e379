"""Celery application: ``celery -A workers worker|beat|flower``."""

from workers.celery_app import app, create_celery

__all__ = ["app", "create_celery"]
