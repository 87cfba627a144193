"""The Celery app: Redis broker, late acks, beat schedule (all configured from settings CELERY_*)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "queuemanager.settings")

app = Celery("queuemanager")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
