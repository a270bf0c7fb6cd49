"""The API behaves as its OpenAPI description says: fuzzed by schemathesis against the running
site, and, status by status, by real requests whose answers are validated against the description."""
import json
from collections.abc import Callable
from contextlib import ExitStack
from types import SimpleNamespace

import jsonschema_rs
import pytest
import schemathesis
from django.conf import settings as django_settings
from django.http import HttpResponseBase
from django.test import Client, override_settings
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.openapi import openapi_description
from api.services import api_token_create
from core.fetch import fetch_slot
from search.models import Embedding
from tests import images
from tests.api.conftest import bearer, indexed
from tests.conftest import store, upload_file

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


# Status by status ------------------------------------------------------------------------------

DESCRIPTION = openapi_description()
IMAGES = "/api/v1/images"
IMAGE = "/api/v1/images/{image_id}"
SEARCH = "/api/v1/search"
RECOMMENDATIONS = "/api/v1/images/{image_id}/recommendations"
CLUSTERS = "/api/v1/clusters"
CLUSTER_IMAGES = "/api/v1/clusters/{cluster_id}/images"


def documented() -> set[tuple[str, str, int]]:
    return {(method.upper(), path, int(status))
            for path, item in DESCRIPTION["paths"].items()
            for method, operation in item.items() if method != "parameters"
            for status in operation["responses"]}


def validate(response, method: str, path: str) -> None:
    """The response is one the description lists for this operation, and has the described shape."""
    operation = DESCRIPTION["paths"][path][method.lower()]
    assert str(response.status_code) in operation["responses"], f"{method} {path}: undocumented {response.status_code}"
    described = operation["responses"][str(response.status_code)]
    for header in described.get("headers", {}):
        assert response.has_header(header), f"{method} {path} {response.status_code}: no {header} header"
    content = described.get("content")
    if content is None:
        assert response.content == b""
        return
    media_type = response["Content-Type"].split(";")[0]
    assert media_type in content, f"{method} {path} {response.status_code}: {media_type} is not described"
    if media_type == "application/json":
        schema = {**content[media_type]["schema"], "components": DESCRIPTION["components"]}
        jsonschema_rs.validator_for(schema).validate(json.loads(response.content))


@pytest.fixture
def world(user, other_user, secret, clean_index):
    """Alice (with a token, an image of her own and one still queued) and Bob's public image."""
    return SimpleNamespace(secret=secret, mine=indexed(images.jpeg(1), "mine.jpg", owner=user),
                           theirs=indexed(images.jpeg(2), "theirs.jpg", owner=other_user),
                           queued=store(images.jpeg(3), "queued.jpg", owner=user), user=user)


def image_path(image) -> str:
    return IMAGE.replace("{image_id}", str(image.pk))


def upload_as(client, world, *files, **extra):
    return client.post(IMAGES, {"image": list(files)}, headers=bearer(world.secret), **extra)


def search_as(client, world, body: dict):
    return client.post(SEARCH, json.dumps(body), content_type="application/json", headers=bearer(world.secret))


def search_with_vectors_of_another_model(client, world):
    Embedding.objects.create(image=world.theirs, backbone="another", backbone_version="1", dim=2,
                             vector=b"\0" * 8)
    return client.post(SEARCH, {"image": upload_file("q.jpg", images.jpeg(5))})


def search_by_url_while_fetches_are_at_their_limit(client, world):
    slots, limit = django_settings.URL_FETCH_SLOTS_DIR, django_settings.LOOKALIKE_URL_FETCH_MAX_IN_FLIGHT
    with ExitStack() as held:
        for _ in range(limit):  # other requests' fetches
            held.enter_context(fetch_slot(slots, limit, retry_after=1))
        response = search_as(client, world, {"url": "http://example.com/picture.jpg"})
    assert response.has_header("Retry-After")
    return response


def upload_while_the_media_storage_refuses_writes(client, world):
    blocked = django_settings.DATA_DIR / "a-file-not-a-folder"
    blocked.write_bytes(b"")
    with override_settings(MEDIA_ROOT=blocked / "media"):
        response = upload_as(client, world, upload_file("new.jpg", images.jpeg(8)))
    assert json.loads(response.content)["results"][0]["code"] == "store_unavailable"
    return response


def grouped(client, world, *, images_of: bool = False, **extra):
    """The gallery (given vectors) grouped by look, then the groups, or the images of Bob's image's group."""
    from gallery.models import ClusterMember
    from search import runtime
    from tests.search.test_clusters import blob_vectors, run_job

    identity = runtime.index_identity()
    for image, vector in zip((world.mine, world.theirs), blob_vectors(2, 1, identity.dim), strict=True):
        Embedding.objects.create(image=image, backbone=identity.backbone, backbone_version=identity.backbone_version,
                                 dim=identity.dim, vector=vector.tobytes())
    run_job()
    if not images_of:
        return client.get(CLUSTERS, **extra)
    cluster_id = ClusterMember.objects.get(image=world.theirs).cluster_id
    return client.get(CLUSTER_IMAGES.replace("{cluster_id}", str(cluster_id)), **extra)


def session_client(user, *, csrf: bool = False) -> Client:
    browser = Client(enforce_csrf_checks=csrf)
    browser.force_login(user)
    return browser


SCENARIOS: dict[tuple[str, str, int], list[Callable[[Client, SimpleNamespace], HttpResponseBase]]] = {
    ("POST", IMAGES, 202): [lambda client, w: upload_as(client, w, upload_file("new.jpg", images.jpeg(7)))],
    ("POST", IMAGES, 400): [lambda client, w: upload_as(client, w),
                            lambda client, w: upload_as(client, w, upload_file("empty.jpg", b""))],
    ("POST", IMAGES, 401): [lambda client, w: client.post(IMAGES, {"image": upload_file("a.jpg", images.jpeg(7))})],
    ("POST", IMAGES, 403): [lambda client, w: session_client(w.user, csrf=True).post(
        IMAGES, {"image": upload_file("a.jpg", images.jpeg(7))})],
    ("POST", IMAGES, 413): [
        lambda client, w: upload_as(client, w, upload_file("a.jpg", images.jpeg(7)), CONTENT_LENGTH=str(10**13)),
        lambda client, w: upload_as(client, w, upload_file("big.bin", b"x" * 2000)),
    ],
    ("POST", IMAGES, 415): [lambda client, w: upload_as(client, w, upload_file("a.txt", b"text", "text/plain"))],
    ("POST", IMAGES, 429): [lambda client, w: [upload_as(client, w, upload_file(f"{i}.jpg", images.jpeg(10 + i)))
                                               for i in range(3)][-1]],
    ("POST", IMAGES, 503): [upload_while_the_media_storage_refuses_writes],
    ("GET", IMAGE, 200): [lambda client, w: client.get(image_path(w.theirs))],
    ("GET", IMAGE, 401): [lambda client, w: client.get(image_path(w.theirs), headers=bearer("lka_wrong"))],
    ("GET", IMAGE, 404): [lambda client, w: client.get(IMAGE.replace("{image_id}", "987654"))],
    ("DELETE", IMAGE, 204): [lambda client, w: client.delete(image_path(w.mine), headers=bearer(w.secret))],
    ("DELETE", IMAGE, 401): [lambda client, w: client.delete(image_path(w.mine))],
    ("DELETE", IMAGE, 403): [lambda client, w: client.delete(image_path(w.theirs), headers=bearer(w.secret)),
                             lambda client, w: session_client(w.user, csrf=True).delete(image_path(w.mine))],
    ("DELETE", IMAGE, 404): [lambda client, w: client.delete(IMAGE.replace("{image_id}", "987654"),
                                                             headers=bearer(w.secret))],
    ("POST", SEARCH, 400): [lambda client, w: search_as(client, w, {"image_id": w.theirs.pk, "k": 0}),
                            lambda client, w: client.post(SEARCH, b"{", content_type="application/json")],
    ("POST", SEARCH, 401): [lambda client, w: client.post(SEARCH, {"image_id": "1"}, headers=bearer("lka_x"))],
    ("POST", SEARCH, 403): [lambda client, w: session_client(w.user, csrf=True).post(SEARCH, {"image_id": "1"})],
    ("POST", SEARCH, 404): [lambda client, w: search_as(client, w, {"image_id": 987654})],
    ("POST", SEARCH, 409): [lambda client, w: search_as(client, w, {"image_id": w.queued.pk})],
    ("POST", SEARCH, 413): [lambda client, w: client.post(SEARCH, {"image": upload_file("q.jpg", images.jpeg(5))},
                                                          CONTENT_LENGTH=str(10**12))],
    ("POST", SEARCH, 415): [lambda client, w: client.post(SEARCH, {"image": upload_file("q.txt", b"text")}),
                            lambda client, w: client.post(SEARCH, b"text", content_type="text/plain")],
    ("POST", SEARCH, 429): [lambda client, w: [search_as(client, w, {"image_id": 987654}) for _ in range(3)][-1]],
    ("POST", SEARCH, 503): [search_with_vectors_of_another_model, search_by_url_while_fetches_are_at_their_limit],
    ("POST", SEARCH, 200): [lambda client, w: client.post(SEARCH, {"image": upload_file("q.jpg", images.jpeg(5))}),
                            lambda client, w: client.post(SEARCH, {"image": upload_file("q.jpg", images.jpeg(5)),
                                                                   "k": "3", "box": "0,0,100,100"}),
                            lambda client, w: search_as(client, w, {"q": "beach"})],
    ("GET", RECOMMENDATIONS, 200): [lambda client, w: client.get(image_path(w.theirs) + "/recommendations")],
    ("GET", RECOMMENDATIONS, 401): [lambda client, w: client.get(image_path(w.theirs) + "/recommendations",
                                                                 headers=bearer("lka_wrong"))],
    ("GET", RECOMMENDATIONS, 404): [lambda client, w: client.get("/api/v1/images/987654/recommendations")],
    ("GET", "/api/v1/recommendations", 200): [lambda client, w: client.get("/api/v1/recommendations",
                                                                           headers=bearer(w.secret))],
    ("GET", "/api/v1/recommendations", 401): [lambda client, w: client.get("/api/v1/recommendations")],
    ("GET", CLUSTERS, 200): [grouped, lambda client, w: client.get(CLUSTERS)],
    ("GET", CLUSTERS, 401): [lambda client, w: client.get(CLUSTERS, headers=bearer("lka_wrong"))],
    ("GET", CLUSTER_IMAGES, 200): [lambda client, w: grouped(client, w, images_of=True),
                                   lambda client, w: grouped(client, w, images_of=True, data={"page": "9"})],
    ("GET", CLUSTER_IMAGES, 401): [lambda client, w: client.get(CLUSTER_IMAGES.replace("{cluster_id}", "1"),
                                                                headers=bearer("lka_wrong"))],
    ("GET", CLUSTER_IMAGES, 404): [lambda client, w: client.get(CLUSTER_IMAGES.replace("{cluster_id}", "987654"))],
    ("GET", "/api/v1/openapi.json", 200): [lambda client, w: client.get("/api/v1/openapi.json")],
    ("GET", "/api/v1/docs/", 200): [lambda client, w: client.get("/api/v1/docs/")],
}


@pytest.mark.parametrize(("key", "index"), [(key, i) for key, makers in SCENARIOS.items()
                                            for i in range(len(makers))],
                         ids=lambda value: " ".join(map(str, value)) if isinstance(value, tuple) else str(value))
def test_each_documented_status_happens_as_described(client, world, settings, fresh_cache, key, index):
    method, path, status = key
    settings.LOOKALIKE_MAX_UPLOAD_BYTES = 1000 if key == ("POST", IMAGES, 413) else settings.LOOKALIKE_MAX_UPLOAD_BYTES
    settings.LOOKALIKE_RATE_LIMIT_UPLOAD = "2/day"
    settings.LOOKALIKE_RATE_LIMIT_SEARCH = "2/day"
    response = SCENARIOS[key][index](client, world)
    assert response.status_code == status, response.content[:300]
    validate(response, method, path)


def test_every_documented_status_has_a_scenario():
    assert set(SCENARIOS) == documented()


def test_the_description_is_served_as_it_is_written(client, db):
    assert client.get("/api/v1/openapi.json").json() == json.loads(json.dumps(DESCRIPTION))


def test_the_docs_page_is_rendered_from_the_description(client, db):
    body = client.get("/api/v1/docs/").content.decode()
    for path, item in DESCRIPTION["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                assert f'id="{operation["operationId"]}"' in body and path in body
                for status in operation["responses"]:
                    assert f"<code>{status}</code>" in body
    for name in DESCRIPTION["components"]["schemas"]:
        assert f'id="schema-{name}"' in body
    assert "<script" not in body.split("</main>")[0], "readable without scripts"
    assert "http://" not in body.replace("http://testserver", "") and "cdn" not in body.lower()
