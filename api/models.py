from __future__ import annotations

from django.conf import settings
from django.db import models

TOKEN_NAME_MAX_LENGTH = 100


class ApiToken(models.Model):
    """A secret that lets a program act as its user through the API. Only the secret's SHA-256 is
    kept: the secret itself is shown once, when the token is created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=TOKEN_NAME_MAX_LENGTH)
    # The start of the secret, so that a person can tell their tokens apart; not enough to use one.
    prefix = models.CharField(max_length=16)
    secret_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
