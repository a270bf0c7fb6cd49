import hashlib
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.http import Http404
from django.utils import timezone

from api import services
from api.models import ApiToken


class TestTokenCreate:
    def test_it_stores_only_the_hash_of_the_secret(self, user):
        token, secret = services.api_token_create(user=user, name="  backup script ")
        token.refresh_from_db()
        assert token.name == "backup script"
        assert token.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        assert secret.startswith(token.prefix) and len(secret) > len(token.prefix) + 30
        stored = [str(value) for value in ApiToken.objects.filter(pk=token.pk).values_list().get()]
        assert not any(secret in value for value in stored)

    def test_every_secret_is_new(self, user):
        secrets = {services.api_token_create(user=user, name=f"t{i}")[1] for i in range(20)}
        assert len(secrets) == 20

    @pytest.mark.parametrize(("name", "message"), [("", "Give the token a name"), ("   ", "Give the token a name"),
                                                   ("x" * 101, "at most 100 characters")])
    def test_a_bad_name_is_refused(self, user, name, message):
        with pytest.raises(ValidationError, match=message):
            services.api_token_create(user=user, name=name)
        assert not ApiToken.objects.exists()


class TestTokenRevoke:
    def test_it_marks_the_token_revoked(self, user):
        token, _ = services.api_token_create(user=user, name="t")
        revoked = services.api_token_revoke(token_id=token.pk, user=user)
        assert revoked.revoked_at is not None

    def test_another_users_token_is_not_found(self, user, other_user):
        token, _ = services.api_token_create(user=user, name="t")
        with pytest.raises(Http404):
            services.api_token_revoke(token_id=token.pk, user=other_user)
        token.refresh_from_db()
        assert token.revoked_at is None

    def test_a_revoked_token_cannot_be_revoked_again(self, user):
        token, _ = services.api_token_create(user=user, name="t")
        services.api_token_revoke(token_id=token.pk, user=user)
        with pytest.raises(Http404):
            services.api_token_revoke(token_id=token.pk, user=user)


def test_use_is_recorded_at_most_once_a_minute(user):
    token, _ = services.api_token_create(user=user, name="t")
    services.api_token_mark_used(token=token)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    services.api_token_mark_used(token=token)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    services.api_token_mark_used(token=token)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_a_token_used_lately_costs_no_write(user, django_assert_num_queries):
    token, _ = services.api_token_create(user=user, name="t")
    services.api_token_mark_used(token=token)
    token.refresh_from_db()
    with django_assert_num_queries(0):
        services.api_token_mark_used(token=token)
