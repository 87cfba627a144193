"""Create or update the admin superuser from the environment, and make sure it has an API token.

DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD are required, DJANGO_SUPERUSER_EMAIL is
optional. Idempotent: running it again resets the password to the given one. Prints no secret.
"""
from __future__ import annotations

import os

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create/update the superuser from DJANGO_SUPERUSER_* environment variables and ensure its API token."

    def handle(self, *args, **options):
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "").strip()
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "").strip()
        if not username or not password:
            raise CommandError("DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD must be set")
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username, defaults={"email": email})
        user.is_staff = user.is_superuser = user.is_active = True
        if email:
            user.email = email
        if created or not user.check_password(password):
            user.set_password(password)
        user.save()
        Token.objects.get_or_create(user=user)
        verb = "Created" if created else "Updated"
        self.stdout.write(f"{verb} superuser {username!r}; an API token exists (`manage.py create_api_token {username}` shows it).")
