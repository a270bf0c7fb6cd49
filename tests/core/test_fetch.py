import ipaddress
import signal
import socket
import subprocess
import sys
import time

import pytest

from core.fetch import FetchLimits, FetchRefused, fetch_slot, fetch_url
from tests.conftest import PictureServer, TricklingServer

LOOPBACK_ALLOWED = FetchLimits(max_bytes=1024 * 1024, timeout=1.0,
                               allowed_networks=[ipaddress.ip_network("127.0.0.1/32")])
DEFAULT = FetchLimits(max_bytes=1024 * 1024, timeout=1.0)


@pytest.fixture
def server():
    server = PictureServer()
    yield server
    server.close()


def refusal(url: str, limits: FetchLimits = LOOPBACK_ALLOWED) -> FetchRefused:
    with pytest.raises(FetchRefused) as caught:
        fetch_url(url, limits)
    return caught.value


def test_it_fetches_a_picture(server):
    assert fetch_url(server.url("/picture.jpg"), LOOPBACK_ALLOWED) == server.picture


def test_it_follows_a_redirect_to_an_allowed_address(server):
    assert fetch_url(server.url("/to-picture"), LOOPBACK_ALLOWED) == server.picture


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.jpg", "http://localhost/x.jpg", "http://[::1]/x.jpg",
                                 "http://10.0.0.8/x.jpg", "http://192.168.1.1/x.jpg", "http://172.16.0.1/x.jpg",
                                 "http://169.254.169.254/latest/meta-data/", "http://224.0.0.1/x.jpg",
                                 "http://0.0.0.0/x.jpg", "http://[::ffff:127.0.0.1]/x.jpg", "http://100.64.0.1/x.jpg"])
def test_private_loopback_link_local_and_multicast_addresses_are_refused(url):
    assert refusal(url, DEFAULT).code == "url_forbidden"


@pytest.mark.parametrize("url", [
    "http://[64:ff9b::7f00:1]/x.jpg",  # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 of 169.254.169.254
    "http://[::7f00:1]/x.jpg",  # IPv4-compatible 127.0.0.1
    "http://[::a00:8]/x.jpg",  # IPv4-compatible 10.0.0.8
    "http://[2002:7f00:1::]/x.jpg",  # 6to4 of 127.0.0.1
    "http://[2002:c0a8:101::1]/x.jpg",  # 6to4 of 192.168.1.1
    "http://[::ffff:0:7f00:1]/x.jpg",  # SIIT (IPv4-translated) 127.0.0.1
    "http://[::ffff:0:a00:8]/x.jpg",  # SIIT 10.0.0.8
    "http://[64:ff9b:1::808:808]/x.jpg",  # local-use NAT64: leads wherever that network says
])
def test_ipv6_forms_that_wrap_a_private_ipv4_address_are_refused(url):
    assert ipaddress.ip_address(url.split("[")[1].split("]")[0]).is_global  # what ipaddress alone would let by
    assert refusal(url, DEFAULT).code == "url_forbidden"


@pytest.mark.parametrize("url", ["http://[64:ff9b::808:808]/x.jpg", "http://[2002:808:808::]/x.jpg"])
def test_ipv6_forms_that_wrap_a_public_ipv4_address_are_fetched(url):
    # Nothing answers here; what matters is that the fetch is tried.
    assert refusal(url, FetchLimits(max_bytes=1024, timeout=0.5)).code in ("url_unreachable", "url_timeout")


def test_the_loopback_is_refused_unless_allowed(server):
    error = refusal(server.url("/picture.jpg"), DEFAULT)
    assert error.code == "url_forbidden"
    assert "only public addresses" in error.message


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata"])
def test_a_redirect_to_a_private_address_is_refused(server, path):
    assert refusal(server.url(path)).code == "url_forbidden"


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://example.com/x.jpg", "Only http:// and https://"),
    ("file:///etc/passwd", "Only http:// and https://"),
    ("http://", "no host name"),
    ("http://user:secret@example.com/x.jpg", "user name or password"),
    ("http://example.com:99999/x.jpg", "not a valid URL"),
])
def test_a_url_that_is_not_fetchable_is_refused_with_the_reason(url, message):
    error = refusal(url, DEFAULT)
    assert error.code == "invalid_url"
    assert message in error.message


def test_a_slow_server_is_given_up_on_in_time(server):
    started = time.monotonic()
    assert refusal(server.url("/slow.jpg")).code == "url_timeout"
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("part", list(TricklingServer.ANSWERS))
def test_the_deadline_holds_for_a_server_that_trickles_its_answer(part):
    trickler = TricklingServer(part, interval=0.1)
    try:
        assert trickler.trickle_seconds > 3 * LOOPBACK_ALLOWED.timeout
        started = time.monotonic()
        assert refusal(trickler.url).code == "url_timeout"
        assert time.monotonic() - started < LOOPBACK_ALLOWED.timeout + 0.5
    finally:
        trickler.close()


def test_a_slow_name_lookup_is_given_up_on_in_time(monkeypatch):
    looked_up = socket.getaddrinfo

    def slow_lookup(*args, **kwargs):  # a name server that takes its time, as its owner may choose
        time.sleep(3)
        return looked_up(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    started = time.monotonic()
    assert refusal("http://slow-name.example/x.jpg").code == "url_timeout"
    assert time.monotonic() - started < LOOPBACK_ALLOWED.timeout + 0.5


def test_a_body_over_the_limit_is_refused(server):
    assert refusal(server.url("/huge.jpg")).code == "too_large"


def test_endless_redirects_are_refused(server):
    assert refusal(server.url("/loop")).code == "url_redirects"


def test_an_error_status_is_reported(server):
    error = refusal(server.url("/missing.jpg"))
    assert error.code == "url_failed"
    assert "404" in error.message


def test_a_closed_port_is_unreachable(server):
    port = server.httpd.server_address[1]
    server.close()
    assert refusal(f"http://127.0.0.1:{port}/picture.jpg").code == "url_unreachable"


def test_an_unknown_host_is_reported():
    assert refusal("http://no-such-host.invalid/x.jpg", DEFAULT).code == "url_unreachable"


def test_no_more_fetches_than_the_slots_run_at_once(tmp_path):
    with fetch_slot(tmp_path, 2, retry_after=9.5), fetch_slot(tmp_path, 2, retry_after=9.5):
        with pytest.raises(FetchRefused) as caught, fetch_slot(tmp_path, 2, retry_after=9.5):
            pass
        assert caught.value.code == "url_busy"
        assert caught.value.retry_after == 10
    with fetch_slot(tmp_path, 2, retry_after=1), fetch_slot(tmp_path, 2, retry_after=1):
        pass  # both free again


def test_a_slot_is_shared_with_other_processes_and_freed_when_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, pathlib; from core.fetch import fetch_slot\n"
                               "with fetch_slot(pathlib.Path(sys.argv[1]), 1, retry_after=1):\n"
                               "    print('holding', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(FetchRefused), fetch_slot(tmp_path, 1, retry_after=1):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    with fetch_slot(tmp_path, 1, retry_after=1):
        pass  # the killed holder's slot is free
