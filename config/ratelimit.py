"""Rate limits for the site's costly requests: searching, uploading and fetching URLs.

Each limit is a fixed window ("60/minute" allows 60 from the start of each minute): requests
from a signed-in user count against that user, anonymous ones against the client's address, so
people behind one address do not share a budget once they sign in. The counters live in
Django's cache (Redis, or files under VAR_DIR), which every web process shares.
"""
from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render
from django.utils import timezone
from django.utils.timesince import timeuntil

from config.env import parse_rate

SCOPES = {
    "search": "LOOKALIKE_RATE_LIMIT_SEARCH",
    "upload": "LOOKALIKE_RATE_LIMIT_UPLOAD",
    "url_fetch": "LOOKALIKE_RATE_LIMIT_URL_FETCH",
}
_NOUNS = {"search": "searches", "upload": "uploaded files", "url_fetch": "URL fetches"}
_PERIOD_NAMES = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.count} per {_PERIOD_NAMES.get(self.seconds, f'{self.seconds} seconds')}"


class RateLimited(Exception):
    def __init__(self, scope: str, rate: Rate, retry_after: int) -> None:
        self.scope = scope
        self.rate = rate
        self.retry_after = retry_after
        self.message = (f"Too many {_NOUNS[scope]}: the limit is {rate}. "
                        f"Try again in {retry_after} second{'s' if retry_after != 1 else ''}.")
        super().__init__(self.message)


def rate_for(scope: str) -> Rate | None:
    setting = SCOPES[scope]
    parsed = parse_rate(setting, getattr(settings, setting))
    return Rate(*parsed) if parsed else None


def client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR, or, behind LOOKALIKE_TRUSTED_PROXY_COUNT proxies, the address the outermost of
    them saw: the one it appended to X-Forwarded-For. Entries further left are the client's to forge."""
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.LOOKALIKE_TRUSTED_PROXY_COUNT
    if proxies > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [part for part in forwarded if part]
        if len(forwarded) >= proxies:
            candidate = forwarded[-proxies]
            try:
                return str(ipaddress.ip_address(candidate))
            except ValueError:
                pass
    return remote


def requester_key(request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"ip:{client_address(request)}"


def rate_limit_hit(request: HttpRequest, *, scope: str, cost: int = 1) -> None:
    """Count ``cost`` requests (or files) against the requester's budget for ``scope``, or raise
    ``RateLimited`` without counting them when they do not fit in what is left of the window."""
    rate = rate_for(scope)
    if rate is None or cost <= 0:
        return
    now = time.time()
    window = int(now // rate.seconds)
    retry_after = max(1, math.ceil((window + 1) * rate.seconds - now))
    key = f"ratelimit:{scope}:{requester_key(request)}:{rate.seconds}:{window}"
    cache.add(key, 0, timeout=rate.seconds + 5)
    try:
        count = cache.incr(key, cost)
    except ValueError:  # the key expired between add and incr: this is its window's first use
        cache.set(key, cost, timeout=rate.seconds + 5)
        count = cost
    if count > rate.count:
        cache.decr(key, cost)
        raise RateLimited(scope, rate, retry_after)


def files_in(field: str) -> Callable[[HttpRequest], int]:
    """The cost of an upload: how many files it sends in ``field``. A body that cannot be parsed, or
    with more files than one request may send, costs nothing here: the view refuses it with its own
    message, and a refused request should not use up the budget."""
    def count(request: HttpRequest) -> int:
        try:
            files = len(request.FILES.getlist(field))
        except (BadRequest, SuspiciousOperation, MultiPartParserError, RequestDataTooBig, OSError):
            return 0
        return files if files <= settings.LOOKALIKE_MAX_UPLOAD_FILES else 0

    return count


def signin_locked_out_page(request: HttpRequest, original_response: HttpResponse | None,
                           credentials: dict | None) -> HttpResponse:
    """What django-axes answers a sign-in (the site's or the admin's) refused for too many failures."""
    lockout = settings.AXES_COOLOFF_TIME
    now = timezone.now()
    message = (f"Too many failed sign-ins for this account or from your address. Signing in is locked for "
               f"{timeuntil(now + lockout, now)} after the last failed try; wait, then try again.")
    response = render(request, "request_refused.html", {"title": "Too many failed sign-ins", "message": message},
                      status=429)
    response["Retry-After"] = str(math.ceil(lockout.total_seconds()))
    return response


def too_many_requests_page(request: HttpRequest, exc: RateLimited) -> HttpResponse:
    """A page saying so, or the site's JSON error to a page's script that asked for JSON."""
    if "application/json" in request.headers.get("Accept", ""):
        response: HttpResponse = JsonResponse({"code": "rate_limited", "message": exc.message}, status=429)
    else:
        response = render(request, "request_refused.html", {"title": "Slow down", "message": exc.message},
                          status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


def rate_limit(scope: str, *, cost: Callable[[HttpRequest], int] | None = None,
               respond: Callable[[HttpRequest, RateLimited], HttpResponse] = too_many_requests_page,
               methods: tuple[str, ...] = UNSAFE_METHODS,
               ) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Refuse a view's requests beyond the ``scope`` limit with ``respond`` (a 429 page by default).
    Only requests with one of ``methods`` count, so that showing a form is free by default. Apply
    it inside the authentication decorators, so that a signed-in user is counted as themselves."""
    if scope not in SCOPES:
        raise ValueError(f"Unknown rate-limit scope {scope!r}; known: {', '.join(SCOPES)}.")

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if request.method in methods:
                try:
                    rate_limit_hit(request, scope=scope, cost=cost(request) if cost else 1)
                except RateLimited as exc:
                    return respond(request, exc)
            return view(request, *args, **kwargs)

        return wrapped

    return decorate
