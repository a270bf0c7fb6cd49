"""Fetching a query picture from a URL without letting anyone point the server at itself. Free of Django.

Every host is resolved here, every address it resolves to must be public (or in an allowed
network), and the connection goes to the checked address itself, so a second DNS answer cannot
swap in a private one. Redirects are followed by hand and each hop is checked the same way.
Size and total time are bounded; whether the bytes are an image is for the caller to check.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_USER_AGENT = "Lookalike image search (fetching a picture a user asked to search with)"


class FetchRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout: float  # for the whole fetch, redirects included
    max_redirects: int = 5
    allowed_networks: Sequence[IPNetwork] = field(default_factory=tuple)


def fetch_url(url: str, limits: FetchLimits) -> bytes:
    """The body of ``url`` after at most ``limits.max_redirects`` redirects, or ``FetchRefused``."""
    deadline = time.monotonic() + limits.timeout
    for _ in range(limits.max_redirects + 1):
        target = _parse(url)
        address = _resolve(target.hostname, target.port, limits, deadline)
        try:
            location, body = _get(target, address, limits, deadline)
        except TimeoutError as exc:
            raise FetchRefused("url_timeout", f"{target.hostname} did not send the picture within "
                                              f"{limits.timeout:g} seconds.") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise FetchRefused("url_unreachable", f"Could not fetch the picture from {target.hostname}: "
                                                  f"{_reason(exc)}.") from exc
        if location is None:
            return body
        url = urljoin(url, location)
    raise FetchRefused("url_redirects", f"The URL redirected more than {limits.max_redirects} times.")


@dataclass(frozen=True)
class _Target:
    scheme: str
    hostname: str
    port: int
    path: str


def _parse(url: str) -> _Target:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise FetchRefused("invalid_url", "That is not a valid URL.") from exc
    if parts.scheme not in ("http", "https"):
        raise FetchRefused("invalid_url", "Only http:// and https:// URLs can be fetched.")
    if not parts.hostname:
        raise FetchRefused("invalid_url", "The URL has no host name.")
    if parts.username or parts.password:
        raise FetchRefused("invalid_url", "URLs with a user name or password are not fetched.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def _resolve(hostname: str, port: int, limits: FetchLimits, deadline: float) -> IPAddress:
    """The address to connect to: every address the name has must be allowed, not just one."""
    # getaddrinfo has no timeout of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(socket.getaddrinfo, hostname, port, type=socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout as exc:
            raise FetchRefused("url_timeout", f"Looking up {hostname} took too long.") from exc
        except OSError as exc:
            raise FetchRefused("url_unreachable", f"The host {hostname} could not be found.") from exc
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    for address in addresses:
        if not _allowed(address, limits.allowed_networks):
            raise FetchRefused("url_forbidden", f"{hostname} is a private, local or reserved address; "
                                                "only public addresses are fetched.")
    return addresses[0]


def _allowed(address: IPAddress, allowed_networks: Sequence[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if any(address in network for network in allowed_networks):
        return True
    return address.is_global and not address.is_multicast


def _get(target: _Target, address: IPAddress, limits: FetchLimits, deadline: float) -> tuple[str | None, bytes]:
    """The redirect's location, or None and the body."""
    connection = _PinnedConnection(target, address, timeout=_remaining(deadline))
    try:
        connection.request("GET", target.path, headers={"User-Agent": _USER_AGENT, "Accept": "image/*",
                                                        "Accept-Encoding": "identity"})
        response = connection.getresponse()
        if response.status in _REDIRECTS:
            location = response.getheader("Location")
            if not location:
                raise FetchRefused("url_failed", "The URL redirected without saying where to.")
            return location, b""
        if response.status != 200:
            raise FetchRefused("url_failed", f"The server answered {response.status} {response.reason}.")
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > limits.max_bytes:
            raise _too_large(limits)
        return None, _read_bounded(response, connection, limits, deadline)
    finally:
        connection.close()


def _read_bounded(response: http.client.HTTPResponse, connection: _PinnedConnection, limits: FetchLimits,
                  deadline: float) -> bytes:
    body = bytearray()
    while True:
        if connection.sock is not None:
            # A slow trickle must not outlast the deadline, however each read is paced.
            connection.sock.settimeout(_remaining(deadline))
        chunk = response.read1(_CHUNK)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limits.max_bytes:
            raise _too_large(limits)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _too_large(limits: FetchLimits) -> FetchRefused:
    return FetchRefused("too_large", f"The picture at that URL is larger than {limits.max_bytes // (1024 * 1024)} MB.")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return "its secure connection could not be verified"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused"
    return str(exc) or type(exc).__name__


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address checked beforehand, sending the URL's own host name."""

    def __init__(self, target: _Target, address: IPAddress, timeout: float) -> None:
        super().__init__(target.hostname, target.port, timeout=timeout)
        self._target = target
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self._target.port), timeout=self.timeout)
        if self._target.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._target.hostname)
        self.sock = sock
