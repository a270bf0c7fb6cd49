"""Request bodies larger than their view takes are refused before a byte of them is read.

Django reads a body the first time anything asks for it, and the CSRF check asks before any view
runs, writing every file of a multipart body to disk; so the limit is checked by a middleware
placed before CSRF's. A view states its limit with ``max_body``; any other takes a form of at most
DATA_UPLOAD_MAX_MEMORY_SIZE. Django never reads past the declared Content-Length, and under WSGI
reads nothing of a body sent without one (chunked), so such a request is refused with 411 rather
than taken as empty.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat

View = TypeVar("View", bound=Callable[..., HttpResponseBase])
BodyRefusal = Callable[[HttpRequest, int], HttpResponse]

# Room for the multipart framing and the form fields around the files of a request.
FORM_OVERHEAD_BYTES = 1024 * 1024


def form_body_limit() -> int:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2**31


def max_body(limit: Callable[[], int], refuse: BodyRefusal | None = None) -> Callable[[View], View]:
    """State the largest body ``view`` takes (a callable, because limits are settings) and, if the
    site's usual answer will not do, how to refuse a larger one."""

    def decorate(view: View) -> View:
        view.max_body_bytes = limit  # type: ignore[attr-defined]
        if refuse is not None:
            view.refuse_large_body = refuse  # type: ignore[attr-defined]
        return view

    return decorate


def too_large_message(limit: int) -> str:
    return f"The request body is larger than the limit of {filesizeformat(limit)}."


def _refusal(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"code": code, "message": message}, status=status)
    return render(request, "request_refused.html", {"title": "Request refused", "message": message}, status=status)


def _refuse_too_large(request: HttpRequest, limit: int) -> HttpResponse:
    return _refusal(request, 413, "request_too_large", too_large_message(limit))


class RequestBodyLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view: Callable[..., HttpResponse], args: object,
                     kwargs: object) -> HttpResponse | None:
        declared = request.META.get("CONTENT_LENGTH")
        if not declared and request.META.get("HTTP_TRANSFER_ENCODING"):
            return _refusal(request, 411, "length_required",
                            "Send the request body with a Content-Length header; a chunked body is not read.")
        try:
            length = int(declared or 0)
        except ValueError:
            return None  # Django reads no body then; the API says what is wrong with the header
        limit = getattr(view, "max_body_bytes", form_body_limit)()
        if length <= limit:
            return None
        refuse: BodyRefusal = getattr(view, "refuse_large_body", _refuse_too_large)
        return refuse(request, limit)
