"""Fetching a query picture from a URL without letting anyone point the server at itself. Free of Django.

Every host is resolved here, every address it resolves to must be public (or in an allowed
network), and the connection goes to the checked address itself, so a second DNS answer cannot
swap in a private one. Redirects are followed by hand and each hop is checked the same way.
Size and total time are bounded: the deadline holds for every byte of the exchange (connecting,
the status line, each header, each chunk of the body, every redirect), however the server paces
them. Whether the bytes are an image is for the caller to check.
"""
from __future__ import annotations

import fcntl
import http.client
import io
import ipaddress
import math
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from core.refusal import Refusal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_USER_AGENT = "Lookalike image search (fetching a picture a user asked to search with)"


class FetchRefused(Refusal):
    """A URL that will not be fetched, or whose answer will not be used."""


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


@contextmanager
def fetch_slot(folder: Path, slots: int, retry_after: float) -> Iterator[None]:
    """Hold one of ``slots`` places for a fetch, shared by every process on this machine that uses
    ``folder``, or raise ``FetchRefused`` at once when all are taken: waiting would hold the thread
    that the limit is there to keep free. A place is an flock on a file, which the kernel lets go
    when its holder exits, even killed, so a crashed process can never keep one."""
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(slots):
        handle = (folder / f"slot-{slot}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield
        finally:
            handle.close()  # which lets go of the lock
        return
    wait = math.ceil(retry_after)
    raise FetchRefused("url_busy", f"The server is already fetching as many pictures as it may at once; "
                                   f"try again in {wait} second{'s' if wait != 1 else ''}.", retry_after=wait)


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
    # getaddrinfo has no timeout of its own: a lookup past the deadline is left to finish in its
    # thread (within the resolver's own timeouts), without the fetch waiting for it.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(socket.getaddrinfo, hostname, port, type=socket.SOCK_STREAM)
        infos = future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout as exc:
        raise FetchRefused("url_timeout", f"Looking up {hostname} took too long.") from exc
    except OSError as exc:
        raise FetchRefused("url_unreachable", f"The host {hostname} could not be found.") from exc
    finally:
        pool.shutdown(wait=False)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if not _allowed(address, limits.allowed_networks):
            raise FetchRefused("url_forbidden", f"{hostname} is a private, local or reserved address; "
                                                "only public addresses are fetched.")
    return addresses[0]


# IPv6 addresses that carry an IPv4 address in their last 32 bits, and that reach it (through a
# translator, or a stack that still honours them); the IPv4 address is the one to judge.
_IPV4_IN_LAST_32_BITS = tuple(ipaddress.ip_network(network) for network in (
    "::ffff:0:0/96",  # IPv4-mapped
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "64:ff9b::/96",  # NAT64, well-known prefix
    "::/96",  # IPv4-compatible (deprecated)
))
# NAT64 for one operator's own network (RFC 8215): where it leads depends on that network, so it is
# never public.
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")


def _allowed(address: IPAddress, allowed_networks: Sequence[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return any(address in network for network in allowed_networks)
        address = _embedded_ipv4(address) or address
    if any(address in network for network in allowed_networks):
        return True
    return address.is_global and not address.is_multicast


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _IPV4_IN_LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _get(target: _Target, address: IPAddress, limits: FetchLimits, deadline: float) -> tuple[str | None, bytes]:
    """The redirect's location, or None and the body."""
    connection = _PinnedConnection(target, address, deadline)
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
        return None, _read_bounded(response, limits)
    finally:
        connection.close()


def _read_bounded(response: http.client.HTTPResponse, limits: FetchLimits) -> bytes:
    body = bytearray()
    while True:
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
    """An HTTP(S) connection to an address checked beforehand, sending the URL's own host name, that
    gives up at ``deadline`` whatever it is waiting for."""

    def __init__(self, target: _Target, address: IPAddress, deadline: float) -> None:
        super().__init__(target.hostname, target.port, timeout=_remaining(deadline))
        self._target = target
        self._address = address
        self._deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((str(self._address), self._target.port), timeout=_remaining(self._deadline))
        if self._target.scheme == "https":
            # The handshake as a whole is bounded by the socket's timeout.
            sock.settimeout(_remaining(self._deadline))
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._target.hostname)
        self.sock = _DeadlineSocket(sock, self._deadline)


class _DeadlineSocket:
    """The few socket methods http.client uses, each waiting at most until the deadline: a socket's
    own timeout bounds each read alone, so a server sending a byte at a time would never meet it.
    As with a plain socket, the response's reader may outlive the connection's close (a response
    that ends the connection is read after it), so the socket closes when both are closed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._users = 1

    def sendall(self, data: bytes) -> None:
        # The request's few hundred bytes fit in the socket's buffer: waiting to send them is
        # waiting for the connection, bounded like any other wait.
        self._sock.settimeout(_remaining(self._deadline))
        self._sock.sendall(data)

    def recv_into(self, buffer: memoryview) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str) -> io.BufferedReader:
        """A reader for the response (http.client asks for mode "rb", the only one there is here)."""
        self._users += 1
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.close()
        super().close()
