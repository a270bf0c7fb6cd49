"""Reads of the API app: a user's tokens, and the token a request presents."""
from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from api.models import ApiToken
from api.services import secret_digest


def api_token_list_active(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True)


def api_token_for_secret(*, secret: str) -> ApiToken | None:
    """The live token with this secret. The secret is looked up by its hash, so no comparison of
    secrets can leak through timing; a token of an inactive user counts as none."""
    token = (ApiToken.objects.select_related("user")
             .filter(secret_sha256=secret_digest(secret), revoked_at__isnull=True).first())
    if token is None or not token.user.is_active:
        return None
    return token
