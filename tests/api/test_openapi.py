"""The API behaves as its OpenAPI description says: fuzzed by schemathesis against the running
site, and, status by status, by real requests whose answers are validated against the description."""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.openapi import openapi_description
from api.services import api_token_create
from tests.api.conftest import bearer

schema = schemathesis.openapi.from_dict(openapi_description())


@pytest.fixture
def live_secret(live_server, transactional_db, django_user_model) -> str:
    user = django_user_model.objects.create_user("fuzzer", password="fuzzer-password")
    return api_token_create(user=user, name="schemathesis")[1]


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_to_its_description(case, live_server, live_secret):
    # Every other check applies. This one expects any schema-valid request to succeed, but a schema
    # cannot say "a decodable picture": random bytes in `image` are rightly refused (415).
    case.call_and_validate(base_url=live_server.url, headers=bearer(live_secret),
                           excluded_checks=[positive_data_acceptance])
