"""Thin Celery tasks: unpack small arguments, call the service layer, record metrics."""
