"""Bodies larger than an endpoint takes are refused before a byte of them is read, on every endpoint
that takes a body, through the whole middleware stack with its CSRF check enforced."""
import io
import sys

import pytest
from django.test.client import ClientHandler
from django.urls import reverse

from tests import images
from tests.conftest import upload_file

MB = 1024 * 1024
BOUNDARY = "lookalike-test-boundary"
CSRF_TOKEN = "a" * 32


class MultipartBody(io.RawIOBase):
    """A form with a CSRF token and one file of ``size`` zero bytes, made as it is read, counting what
    is read."""

    def __init__(self, size: int) -> None:
        self.head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrfmiddlewaretoken\"\r\n\r\n"
                     f"{CSRF_TOKEN}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
                     f"filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.length = len(self.head) + size + len(self.tail)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        start = self.read_bytes
        count = min(len(buffer), self.length - start)
        zeros_end = self.length - len(self.tail)
        whole = self.head[start:start + count] if start < len(self.head) else b""
        whole += bytes(max(0, min(start + count, zeros_end) - max(start, len(self.head))))
        whole += self.tail[max(0, start - zeros_end):max(0, start + count - zeros_end)]
        buffer[:count] = whole
        self.read_bytes += count
        return count


def send(path: str, body: MultipartBody, *, session: str = "", chunked: bool = False):
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BufferedReader(body), "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
        "HTTP_COOKIE": f"csrftoken={CSRF_TOKEN}" + (f"; sessionid={session}" if session else ""),
    }
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(body.length)
    return ClientHandler(enforce_csrf_checks=True)(environ)


@pytest.fixture
def limits(settings):
    settings.LOOKALIKE_MAX_UPLOAD_BYTES = MB
    settings.LOOKALIKE_MAX_UPLOAD_FILES = 2


@pytest.fixture
def session(client, user) -> str:
    client.force_login(user)
    return client.cookies["sessionid"].value


ENDPOINTS = [
    # (path, signed in)
    ("/search/", False),
    ("/upload/", True),
    ("/api/v1/search", False),
    ("/api/v1/images", True),
    ("/accounts/login/", False),
    ("/account/tokens/", True),
    ("/admin/login/", False),
]


@pytest.mark.parametrize(("path", "signed_in"), ENDPOINTS)
def test_a_body_over_the_limit_is_refused_before_it_is_read(limits, session, path, signed_in):
    body = MultipartBody(30 * MB)
    response = send(path, body, session=session if signed_in else "")
    assert response.status_code == 413
    assert body.read_bytes == 0


@pytest.mark.parametrize(("path", "signed_in"), ENDPOINTS)
def test_a_body_without_a_length_is_refused_unread(limits, session, path, signed_in):
    body = MultipartBody(30 * MB)
    response = send(path, body, session=session if signed_in else "", chunked=True)
    assert response.status_code == 411
    assert b"Content-Length" in response.content
    assert body.read_bytes == 0


def test_the_search_page_says_so_in_place(client, db, limits):
    response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(1))},
                           CONTENT_LENGTH=str(30 * MB), headers={"X-Requested-With": "fetch"})
    assert response.status_code == 413
    assert response.context["error"] == "The request body is larger than the limit of 2.0\xa0MB."
    assert response.templates[0].name == "search/_results.html"


def test_a_body_within_the_limit_is_read(client, db, clean_index, limits):
    response = client.post(reverse("search:search"), {"image": upload_file("q.jpg", images.jpeg(1))})
    assert response.status_code == 200
