"""WSGI entry point (gunicorn queuemanager.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "queuemanager.settings")
application = get_wsgi_application()
