"""What every API view shares: JSON errors, authentication by token or session, and a body that is
checked before it is read. Whatever goes wrong, the answer is JSON with a stable ``code``."""
from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import (
    BadRequest,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFilesSent,
)
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from api import selectors, services
from config.ratelimit import RateLimited
from config.request_body import form_body_limit, max_body
from core.refusal import Refusal

log = logging.getLogger("api")

FORM_CONTENT_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class ApiError(Refusal):
    """An API request refused, with its HTTP status and any headers the answer needs."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.headers = headers or {}


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse({"code": error.code, "message": error.message}, status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def too_many_files_error() -> ApiError:
    limit = settings.LOOKALIKE_MAX_UPLOAD_FILES
    return ApiError(400, "too_many_files", f"Send at most {limit} files in one request.")


def rate_limited_error(exc: RateLimited) -> ApiError:
    return ApiError(429, "rate_limited", exc.message, {"Retry-After": str(exc.retry_after)})


def rate_limited_response(request: HttpRequest, exc: RateLimited) -> HttpResponse:
    return error_response(rate_limited_error(exc))


def not_authenticated(message: str, code: str = "not_authenticated") -> ApiError:
    return ApiError(401, code, message, {"WWW-Authenticate": 'Bearer realm="api"'})


class Anonymous(enum.Enum):
    ALLOWED = "allowed"  # anyone, always
    VIEWER = "viewer"  # when the gallery is public (LOOKALIKE_PUBLIC_GALLERY)
    REFUSED = "refused"  # never


def _check_content_length(request: HttpRequest) -> None:
    """A header that Django would take as no body at all is refused as what it is. (Its size is
    checked before, by config.request_body.)"""
    raw = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_content_length", "The Content-Length header is not a number.") from None
    if length < 0:
        raise ApiError(400, "invalid_content_length", "The Content-Length header is negative.")


def _authenticate(request: HttpRequest) -> None:
    """A bearer token, when one is sent, decides who this is, even where anonymous access would do;
    otherwise the browser session does, and then an unsafe method needs its CSRF token."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise not_authenticated("Send the token as 'Authorization: Bearer <token>'.", "invalid_authorization")
        token = selectors.api_token_for_secret(secret=secret.strip())
        if token is None:
            raise not_authenticated("The API token is not valid: it is unknown, revoked, or its user is inactive.",
                                    "invalid_token")
        services.api_token_mark_used(token=token)
        request.user = token.user
        return
    user = getattr(request, "user", AnonymousUser())
    if user.is_authenticated and request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
        # No view: only the check matters, for a request signed in by its session cookie.
        refusal = CsrfViewMiddleware(lambda _request: HttpResponse()).process_view(
            request, None, (), {})  # type: ignore[arg-type]
        if refusal is not None:
            raise ApiError(403, "csrf_failed", "A request signed in by the browser session needs its CSRF token "
                                               "(X-CSRFToken header); programs should use an API token instead.")


def _parse_body(request: HttpRequest) -> None:
    """Parse a form body now, so that a malformed one is refused as such before any view code."""
    if request.method == "POST" and request.content_type in FORM_CONTENT_TYPES:
        request.POST  # noqa: B018 (parsing is the point)
        request.FILES  # noqa: B018


def api_endpoint(*, methods: tuple[str, ...], anonymous: Anonymous,
                 max_body_bytes: Callable[[], int] = form_body_limit,
                 ) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Make ``view`` an API endpoint. ``max_body_bytes`` bounds the body by its declared length before
    a byte of it is read (a callable, because limits are settings)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @max_body(max_body_bytes)
        @csrf_exempt
        @wraps(view)
        def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here; "
                                   f"use {' or '.join(methods)}.", {"Allow": ", ".join(methods)})
                _check_content_length(request)
                _authenticate(request)
                if not request.user.is_authenticated and (
                    anonymous is Anonymous.REFUSED
                    or (anonymous is Anonymous.VIEWER and not settings.LOOKALIKE_PUBLIC_GALLERY)
                ):
                    raise not_authenticated("Sign in, or send an API token as 'Authorization: Bearer <token>'.")
                _parse_body(request)
                return view(request, *args, **kwargs)
            except ApiError as error:
                return error_response(error)
            except RateLimited as exc:
                return error_response(rate_limited_error(exc))
            except TooManyFilesSent:
                return error_response(too_many_files_error())
            except RequestDataTooBig:
                return error_response(ApiError(413, "request_too_large", "The request body is too large."))
            except (BadRequest, SuspiciousOperation, MultiPartParserError, UnreadablePostError) as exc:
                return error_response(ApiError(400, "malformed_request", f"The request body cannot be read: {exc}"))
            except Http404:
                return error_response(ApiError(404, "not_found", "There is nothing here."))
            except PermissionDenied:
                return error_response(ApiError(403, "forbidden", "You may not do this."))
            except Exception:
                log.exception("API request %s %s failed", request.method, request.path)
                return error_response(ApiError(500, "internal_error", "Something went wrong on the server; "
                                                                      "it has been logged."))

        return wrapped

    return decorate
