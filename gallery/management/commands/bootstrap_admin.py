"""python manage.py bootstrap_admin: make the first administrator and say how to sign in."""
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the user 'admin' with a random password if no administrator exists, and print how to sign in."

    def handle(self, *args: object, **options: Any) -> None:
        users = get_user_model()
        password_file = settings.VAR_DIR / "admin-password.txt"
        if users.objects.filter(is_superuser=True).exists():
            hint = f" (first password: {password_file})" if password_file.exists() else ""
            self.stdout.write("Sign in at http://127.0.0.1:8000/accounts/login/ with your administrator "
                              f"account{hint}.")
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser("admin", email="", password=password)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        self.stdout.write(
            "Created the administrator account.\n"
            f"  Sign in at http://127.0.0.1:8000/accounts/login/ as admin with password {password}\n"
            f"  (also saved in {password_file}; change it with `python manage.py changepassword admin`)."
        )
