"""Failed sign-ins lock an account, and a client address, out of the site's and the admin's sign-in
for a while (django-axes, configured in config/settings/base.py)."""
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.db.models import F
from django.test import Client
from django.urls import reverse

SIGN_INS = {"site": ("login", "alice", "alice-password"), "admin": ("admin:login", "carol", "carol-password")}
LOCKED = "Too many failed sign-ins for this account or from your address."
LIMIT = 3


@pytest.fixture
def accounts(user, staff_user, settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    return user, staff_user


def sign_in(client: Client, where: str, username: str, password: str, address: str = "192.0.2.1",
            forwarded: str | None = None):
    return client.post(reverse(SIGN_INS[where][0]), {"username": username, "password": password},
                       REMOTE_ADDR=address, headers={"X-Forwarded-For": forwarded} if forwarded else None)


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def fail(client: Client, where: str, usernames: list[str], address: str = "192.0.2.1",
         forwarded: str | None = None) -> list[int]:
    return [sign_in(client, where, name, "wrong-password", address, forwarded).status_code for name in usernames]


@pytest.mark.parametrize("where", SIGN_INS)
def test_wrong_passwords_lock_the_account_even_against_the_right_one(client, accounts, where):
    _, username, password = SIGN_INS[where]
    assert fail(client, where, [username] * (LIMIT - 1)) == [200] * (LIMIT - 1), "the form, with its error"
    assert fail(client, where, [username]) == [429]
    response = sign_in(client, where, username, password)
    assert response.status_code == 429
    assert LOCKED in response.content.decode()
    assert "locked for 15\xa0minutes after the last failed try" in response.content.decode()
    assert response["Retry-After"] == "900"
    assert not signed_in(client)


@pytest.mark.parametrize("where", SIGN_INS)
def test_the_lockout_ends_after_its_time(client, accounts, where):
    _, username, password = SIGN_INS[where]
    fail(client, where, [username] * LIMIT)
    assert sign_in(client, where, username, password).status_code == 429
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(seconds=899))
    assert sign_in(client, where, username, password).status_code == 429, "not yet"
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - timedelta(seconds=2))
    assert sign_in(client, where, username, password).status_code == 302
    assert signed_in(client)


def test_an_account_is_locked_whatever_address_the_tries_come_from(client, accounts):
    for i in range(LIMIT):
        fail(client, "site", ["alice"], address=f"198.51.100.{i + 1}")
    assert sign_in(client, "site", "alice", "alice-password", address="203.0.113.9").status_code == 429
    assert sign_in(client, "site", "carol", "carol-password", address="203.0.113.9").status_code == 302


def test_an_address_is_locked_whatever_accounts_it_tries(client, accounts):
    fail(client, "site", [f"guess-{i}" for i in range(LIMIT)], address="198.51.100.7")
    for where in SIGN_INS:
        _, username, password = SIGN_INS[where]
        response = sign_in(client, where, username, password, address="198.51.100.7")
        assert response.status_code == 429 and LOCKED in response.content.decode(), where
    assert sign_in(client, "site", "alice", "alice-password", address="198.51.100.8").status_code == 302


def test_clients_behind_the_trusted_proxy_are_locked_out_one_by_one(client, accounts, settings):
    settings.LOOKALIKE_TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    fail(client, "site", [f"guess-{i}" for i in range(LIMIT)], address=proxy, forwarded="198.51.100.7")
    assert sign_in(client, "site", "alice", "alice-password", address=proxy,
                   forwarded="198.51.100.7").status_code == 429
    # The address a client writes itself, left of the proxy's, changes nothing.
    assert sign_in(client, "site", "alice", "alice-password", address=proxy,
                   forwarded="203.0.113.1, 198.51.100.7").status_code == 429
    assert sign_in(client, "site", "alice", "alice-password", address=proxy,
                   forwarded="198.51.100.8").status_code == 302


def test_a_failure_below_the_limit_leaves_the_right_password_working(client, accounts):
    fail(client, "site", ["alice"] * (LIMIT - 1))
    assert sign_in(client, "site", "alice", "alice-password").status_code == 302
