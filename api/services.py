"""Writes of the API app: creating, revoking and recording the use of API tokens."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.http import Http404
from django.utils import timezone

from api.models import TOKEN_NAME_MAX_LENGTH, ApiToken

SECRET_PREFIX = "lka_"
# Recording every request's use would turn each read into a write; a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def api_token_create(*, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token and its secret, which is returned this once and stored only as a hash."""
    name = name.strip()
    if not name:
        raise ValidationError("Give the token a name, such as the program that will use it.")
    if len(name) > TOKEN_NAME_MAX_LENGTH:
        raise ValidationError(f"A token name has at most {TOKEN_NAME_MAX_LENGTH} characters.")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=secret[: len(SECRET_PREFIX) + 6],
                                    secret_sha256=secret_digest(secret))
    return token, secret


def api_token_revoke(*, token_id: int, user: User) -> ApiToken:
    """Revoke one of the user's own tokens; another user's token is as unknown as a missing one."""
    token = ApiToken.objects.filter(pk=token_id, user=user, revoked_at__isnull=True).first()
    if token is None:
        raise Http404("No such token.")
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db()
    return token


def api_token_mark_used(*, token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is not None and token.last_used_at >= now - LAST_USED_RESOLUTION:
        return  # recorded lately: no write at all
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    ).update(last_used_at=now)
