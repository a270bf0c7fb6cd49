"""Search pages: search with a picture (file, paste, URL, or a region of one), and "find similar"
from a gallery image. The logic lives in ``search.queries``; the API answers the same searches."""
from __future__ import annotations

import base64
import logging

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from config.ratelimit import RateLimited, rate_limit_hit
from config.request_body import max_body, too_large_message
from core.imaging import encode_jpeg
from gallery.access import viewer_required
from gallery.services import UploadResult, clean_original_name, image_upload
from search import queries
from search.queries import QueryError

log = logging.getLogger(__name__)

K_CHOICES = (12, 24, 48, 96)
MIN_SCORE_CHOICES = ((0, "Any"), (50, "50%"), (70, "70%"), (80, "80%"), (90, "90%"))
# Uploaded and fetched queries are shown back inline, since they are never stored; large enough
# to draw a region on.
QUERY_PREVIEW_SIDE = 640


def _is_fragment(request: HttpRequest) -> bool:
    """The page's script asks for the results alone, to put them in place without a reload."""
    return request.headers.get("X-Requested-With") == "fetch"


def _render(request: HttpRequest, context: dict[str, object], status: int = 200,
            form: QueryDict | None = None) -> HttpResponse:
    data = form if form is not None else request.POST if request.method == "POST" else request.GET
    params = context.get("params")
    if not isinstance(params, queries.SearchParams):
        params = None
    selected_k = params.k if params else settings.LOOKALIKE_SEARCH_DEFAULT_K
    context.update(k_choices=sorted({*K_CHOICES, selected_k}), min_score_choices=MIN_SCORE_CHOICES, form=data,
                   selected_k=selected_k,
                   selected_min_score=params.min_score_percent if params else 0)
    template = "search/_results.html" if _is_fragment(request) else "search/search.html"
    return render(request, template, context, status=status)


def _refuse_too_large(request: HttpRequest, limit: int) -> HttpResponse:
    """The page, with the form empty: the body that would fill it is not read."""
    return _render(request, {"error": too_large_message(limit)}, status=413, form=QueryDict())


@max_body(queries.search_body_limit, refuse=_refuse_too_large)
@require_http_methods(["GET", "POST"])
@viewer_required
def search(request: HttpRequest) -> HttpResponse:
    data = request.POST if request.method == "POST" else request.GET
    if request.method == "GET" and not data.get("image_id") and not data.get("q", "").strip():
        return _render(request, {})
    return _search(request, data)


@require_GET
@viewer_required
def similar(request: HttpRequest, image_id: int) -> HttpResponse:
    data = request.GET.copy()
    data["image_id"] = str(image_id)
    return _search(request, data)


def _search(request: HttpRequest, data: QueryDict) -> HttpResponse:
    context: dict[str, object] = {}
    try:
        rate_limit_hit(request, scope="search")
        params = queries.search_params_from(data)
        context["params"] = params
        if params.filters.words and not _picture_given(request, data):
            context["query_kind"] = "words"
            outcome = queries.search_words(params=params)
        else:
            query = _query_from(request, data, context)
            outcome = queries.search_run(query=query, user=request.user, params=params)
    except RateLimited as limited:
        context["error"] = limited.message
        response = _render(request, context, status=429)
        response["Retry-After"] = str(limited.retry_after)
        return response
    except QueryError as error:
        if error.status >= 500:
            log.error("Search unavailable: %s", error.message)
        context["error"] = error.message
        response = _render(request, context, status=error.status)
        if error.retry_after is not None:
            response["Retry-After"] = str(error.retry_after)
        return response
    context.update(outcome=outcome, searched=True)
    response = _render(request, context)
    response["Server-Timing"] = f"embed;dur={outcome.embed_ms:.1f}, index;dur={outcome.index_ms:.1f}"
    return response


def _picture_given(request: HttpRequest, data: QueryDict) -> bool:
    return bool(request.FILES.get("image") or data.get("url", "").strip() or data.get("image_id", "").strip())


def _query_from(request: HttpRequest, data: QueryDict, context: dict[str, object]) -> queries.Query:
    """The query picture: an uploaded file, else a URL, else a gallery image."""
    upload = request.FILES.get("image")
    url, image_id_text = str(data.get("url", "")), str(data.get("image_id", ""))
    if upload is not None:
        query = queries.query_from_upload(source=upload)
        context.update(query_kind="upload", query_name=upload.name, query_preview=_preview(query))
        if data.get("add_to_gallery") and request.user.is_authenticated:
            # Only when asked: a query picture is otherwise never stored.
            context["added"] = _add_to_gallery(request, upload, owner=request.user)
    elif url.strip():
        rate_limit_hit(request, scope="url_fetch")
        query = queries.query_from_url(url=url)
        context.update(query_kind="url", query_name=url.strip(), query_preview=_preview(query))
    elif image_id_text.strip():
        try:
            image_id = int(image_id_text)
        except ValueError:
            raise QueryError("invalid_parameter", "image_id must be the number of a gallery image.") from None
        query = queries.query_from_image(image_id=image_id, user=request.user)
        context.update(query_kind="image", source=query.source)
    else:
        raise QueryError("no_query", "Choose a picture, paste one, give its URL, or type words to search with.")
    context.update(query_width=query.width, query_height=query.height)
    return query


def _add_to_gallery(request: HttpRequest, upload: UploadedFile, *, owner: User) -> UploadResult:
    """Store the query picture as an upload like any other: it counts against the upload limit
    here and against the quota in the service. Past the limit the search is still answered."""
    try:
        rate_limit_hit(request, scope="upload")
    except RateLimited as limited:
        return UploadResult(clean_original_name(upload.name or ""), "refused", code="rate_limited",
                            message=limited.message)
    upload.seek(0)
    return image_upload(source=upload, original_name=upload.name or "", owner=owner)


def _preview(query: queries.Query) -> str:
    assert query.picture is not None
    jpeg = encode_jpeg(query.picture, max_side=QUERY_PREVIEW_SIDE, quality=80)
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}"
