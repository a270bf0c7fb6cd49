"""Search pages: search with a picture, and "find similar" from a gallery image."""
from __future__ import annotations

import base64
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET, require_http_methods

from gallery import selectors as gallery_selectors
from gallery.access import viewer_required
from gallery.imaging import ImageRejected, decode_image, encode_jpeg
from gallery.services import read_limited
from search import selectors
from search.embedding import WeightsMissing

log = logging.getLogger(__name__)

K_CHOICES = (12, 24, 48, 96)
# The query is shown back inline, since it is never stored.
QUERY_PREVIEW_SIDE = 192


def _k_from(request: HttpRequest) -> int:
    try:
        return selectors.clamp_k(int(request.POST.get("k") or request.GET.get("k") or 0))
    except ValueError:
        return selectors.clamp_k(None)


def _render_results(request: HttpRequest, context: dict[str, object], status: int = 200) -> HttpResponse:
    context.setdefault("k", _k_from(request))
    context["k_choices"] = K_CHOICES
    return render(request, "search/search.html", context, status=status)


def _with_server_timing(response: HttpResponse, timings: selectors.SearchTimings) -> HttpResponse:
    """Say how long embedding and the index took (the ``Server-Timing`` header, in milliseconds),
    so that bench/search_http.py and browsers' developer tools can split a search's time."""
    response["Server-Timing"] = f"embed;dur={timings.embed * 1000:.2f}, index;dur={timings.index * 1000:.2f}"
    return response


@require_http_methods(["GET", "POST"])
@viewer_required
def search(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _render_results(request, {})
    query = request.FILES.get("image")
    timings = selectors.SearchTimings()
    if query is None:
        return _render_results(request, {"error": "Choose a picture to search with."}, status=400)
    try:
        # Validated like an upload, and never stored.
        data = read_limited(query, settings.LOOKALIKE_MAX_UPLOAD_BYTES)
        picture = decode_image(data, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS).image
        [results] = selectors.similar_to_pictures([picture], k=_k_from(request), timings=timings)
    except ImageRejected as rejection:
        return _render_results(request, {"error": rejection.message}, status=400)
    except (selectors.SearchUnavailable, WeightsMissing) as exc:
        log.error("Search unavailable: %s", exc)
        return _render_results(request, {"error": str(exc)}, status=503)
    preview = base64.b64encode(encode_jpeg(picture, max_side=QUERY_PREVIEW_SIDE, quality=80)).decode()
    response = _render_results(request, {"results": results, "query_name": query.name, "searched": True,
                                         "query_preview": f"data:image/jpeg;base64,{preview}"})
    return _with_server_timing(response, timings)


@require_GET
@viewer_required
def similar(request: HttpRequest, image_id: int) -> HttpResponse:
    source = get_object_or_404(gallery_selectors.image_list_visible(user=request.user), pk=image_id)
    timings = selectors.SearchTimings()
    try:
        results = selectors.similar_to_image(source, k=_k_from(request), timings=timings)
    except selectors.SearchUnavailable as exc:
        return _render_results(request, {"error": str(exc), "source": source}, status=409)
    return _with_server_timing(_render_results(request, {"results": results, "source": source, "searched": True}),
                               timings)
