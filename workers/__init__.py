"""Celery app and thin task wrappers around skillstore's library functions."""
