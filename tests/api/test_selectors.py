from api import selectors, services


def test_a_live_secret_finds_its_token(user):
    token, secret = services.api_token_create(user=user, name="t")
    assert selectors.api_token_for_secret(secret=secret) == token


def test_unknown_revoked_and_inactive_users_secrets_find_nothing(user, other_user):
    _, revoked = services.api_token_create(user=user, name="revoked")
    services.api_token_revoke(token_id=selectors.api_token_for_secret(secret=revoked).pk, user=user)
    _, inactive = services.api_token_create(user=other_user, name="inactive")
    other_user.is_active = False
    other_user.save()
    assert selectors.api_token_for_secret(secret=revoked) is None
    assert selectors.api_token_for_secret(secret=inactive) is None
    assert selectors.api_token_for_secret(secret="lka_unknown") is None
    assert selectors.api_token_for_secret(secret="\udcff") is None


def test_only_active_tokens_are_listed(user, other_user):
    kept, _ = services.api_token_create(user=user, name="kept")
    gone, _ = services.api_token_create(user=user, name="gone")
    services.api_token_create(user=other_user, name="bob's")
    services.api_token_revoke(token_id=gone.pk, user=user)
    assert list(selectors.api_token_list_active(user=user)) == [kept]
