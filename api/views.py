"""The JSON API, version 1: upload, look up and delete images, search, browse by look, and the API's
description."""
from __future__ import annotations

import json
import time
from collections.abc import Mapping

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views import defaults

from api.endpoint import (
    FORM_CONTENT_TYPES,
    Anonymous,
    ApiError,
    api_endpoint,
    error_response,
    not_authenticated,
    rate_limited_response,
    too_many_files_error,
)
from api.openapi import openapi_description, operations
from config.ratelimit import files_in, rate_limit, rate_limit_hit
from config.request_body import FORM_OVERHEAD_BYTES
from config.signed_in import SignedInRequest
from gallery import selectors as gallery_selectors
from gallery import services as gallery_services
from gallery.models import Cluster, Image
from gallery.resources import image_summary
from gallery.services import UploadResult
from search import clusters, queries, recommendations

# Images in a page of a cluster's images.
CLUSTER_PAGE_SIZE = 48
# What the API answers when every file of an upload is refused, by the first refusal's code.
REFUSAL_STATUS = {"too_large": 413, "unsupported_format": 415, "not_an_image": 415}


def upload_body_limit() -> int:
    return settings.LOOKALIKE_MAX_UPLOAD_FILES * settings.LOOKALIKE_MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES


def image_resource(image: Image) -> dict[str, object]:
    return {
        **image_summary(image),
        "width": image.width,
        "height": image.height,
        "byte_size": image.byte_size,
        "created_at": image.created_at.isoformat(),
        "tags": [tag.name for tag in image.tags.all()],
        "owner": image.owner.get_username() if image.owner else None,
    }


def _upload_result(result: UploadResult) -> dict[str, object]:
    # A duplicate names only an image that the uploader may see (gallery.services.images_upload).
    image = result.image
    return {
        "original_name": result.original_name,
        "status": result.status,
        "code": result.code or result.status,
        "message": result.message or "Stored; it is queued to be indexed.",
        "id": image.pk if image else None,
        "status_url": reverse("api:image", args=[image.pk]) if image else None,
    }


@api_endpoint(methods=("POST",), anonymous=Anonymous.REFUSED, max_body_bytes=upload_body_limit)
@rate_limit("upload", cost=files_in("image"), respond=rate_limited_response)
def images(request: SignedInRequest) -> JsonResponse:
    files = request.FILES.getlist("image")
    if len(files) > settings.LOOKALIKE_MAX_UPLOAD_FILES:
        raise too_many_files_error()
    if not files:
        raise ApiError(400, "missing_image", 'Send one or more files in the multipart form field "image".')
    results = gallery_services.images_upload(uploads=[(f.name or "", f) for f in files], owner=request.user)
    stored = any(result.status != "refused" for result in results)
    if any(result.code == "store_unavailable" for result in results):
        status = 503  # nothing of the upload was stored: all of it may be sent again
    else:
        status = 202 if stored else REFUSAL_STATUS.get(results[0].code, 400)
    return JsonResponse({"results": [_upload_result(result) for result in results]}, status=status)


def _visible_image(request: HttpRequest, image_id: str) -> Image | None:
    return (gallery_selectors.image_list_visible(user=request.user).prefetch_related("tags")
            .filter(pk=int(image_id)).first() if image_id.isdigit() and len(image_id) < 19 else None)


def recommendations_json(picked: list[recommendations.Recommendation]) -> JsonResponse:
    return JsonResponse({"results": [
        {"id": r.image.pk, "original_name": r.image.original_name, "score": round(r.score, 4),
         "url": reverse("gallery:detail", args=[r.image.pk]), "thumbnail_url": r.image.thumbnail_url}
        for r in picked]})


@api_endpoint(methods=("GET",), anonymous=Anonymous.VIEWER)
def image_recommendations(request: HttpRequest, image_id: str) -> JsonResponse:
    found = _visible_image(request, image_id)
    if found is None:
        raise ApiError(404, "image_not_found", f"There is no image #{image_id} that you can see.")
    return recommendations_json(recommendations.recommendations_for_image(image=found, user=request.user))


@api_endpoint(methods=("GET",), anonymous=Anonymous.REFUSED)
def user_recommendations(request: HttpRequest) -> JsonResponse:
    return recommendations_json(recommendations.recommendations_for_user(user=request.user))


@api_endpoint(methods=("GET",), anonymous=Anonymous.VIEWER)
def clusters_list(request: HttpRequest) -> JsonResponse:
    """Every cluster that holds images you may see, largest first, with the most typical of them."""
    clustering = clusters.clustering_current()
    counts = clusters.cluster_counts_visible(user=request.user, clustering=clustering) if clustering else {}
    shown = list(Cluster.objects.filter(pk__in=list(counts)).select_related("clustering").order_by("number"))
    return JsonResponse({"results": [
        {"id": card.cluster.pk, "number": card.cluster.number, "count": card.count,
         "url": reverse("gallery:browse_cluster", args=[card.cluster.pk]),
         "images_url": reverse("api:cluster_images", args=[card.cluster.pk]),
         "representatives": [{"id": i.pk, "original_name": i.original_name, "thumbnail_url": i.thumbnail_url,
                              "url": reverse("gallery:detail", args=[i.pk])} for i in card.representatives]}
        for card in clusters.cluster_cards(user=request.user, clusters=shown, counts=counts)]})


@api_endpoint(methods=("GET",), anonymous=Anonymous.VIEWER)
def cluster_images(request: HttpRequest, cluster_id: str) -> JsonResponse:
    """A page of a cluster's images that you may see, the most typical first."""
    cluster = (Cluster.objects.filter(pk=int(cluster_id), clustering=clusters.clustering_current()).first()
               if cluster_id.isdigit() and len(cluster_id) < 19 else None)
    images = clusters.cluster_images_visible(user=request.user, cluster=cluster).prefetch_related("tags") \
        if cluster is not None else Image.objects.none()
    page = Paginator(images, CLUSTER_PAGE_SIZE).get_page(request.GET.get("page"))
    if not page.paginator.count:
        raise ApiError(404, "cluster_not_found", f"There is no cluster #{cluster_id} with images that you can see.")
    return JsonResponse({"count": page.paginator.count, "page": page.number, "pages": page.paginator.num_pages,
                         "results": [image_resource(i) for i in page.object_list]})


@api_endpoint(methods=("GET", "DELETE"), anonymous=Anonymous.VIEWER)
def image(request: HttpRequest, image_id: str) -> HttpResponse:
    found = _visible_image(request, image_id)
    if request.method == "DELETE" and not request.user.is_authenticated:
        raise not_authenticated("Sign in, or send an API token, to delete images.")
    if found is None:
        raise ApiError(404, "image_not_found", f"There is no image #{image_id} that you can see.")
    if request.method == "GET":
        return JsonResponse(image_resource(found))
    if not gallery_selectors.image_can_manage(image=found, user=request.user):
        raise ApiError(403, "not_owner", "Only the image's owner or staff may delete it.")
    gallery_services.image_delete(image=found)
    return HttpResponse(status=204)


@api_endpoint(methods=("GET",), anonymous=Anonymous.ALLOWED)
def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_description())


@api_endpoint(methods=("GET",), anonymous=Anonymous.ALLOWED)
def docs(request: HttpRequest) -> HttpResponse:
    description = openapi_description()
    schemas = {name: json.dumps(schema, indent=2) for name, schema in description["components"]["schemas"].items()}
    return render(request, "api/docs.html", {"api": description, "operations": operations(description),
                                             "schemas": schemas})


def _search_input(request: HttpRequest) -> tuple[Mapping[str, object], UploadedFile | None]:
    """The request's fields (a JSON object or a form) and its uploaded picture, if any."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body)
        except ValueError:
            raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "The body must be a JSON object, such as {\"image_id\": 12}.")
        return data, None
    if request.content_type in FORM_CONTENT_TYPES:
        return request.POST, request.FILES.get("image")
    if request.body:
        raise ApiError(415, "unsupported_content_type",
                       "Send multipart/form-data (to upload a picture) or application/json.")
    return {}, None


def _image_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        value = None
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number < 2**63:
        raise ApiError(400, "invalid_parameter", "image_id must be the id of a gallery image, a whole number.")
    return number


def _pictures_given(data: Mapping[str, object], upload: UploadedFile | None) -> list[str]:
    return [name for name, present in (("image", upload is not None), ("url", data.get("url") not in (None, "")),
                                       ("image_id", data.get("image_id") not in (None, ""))) if present]


def _query(request: HttpRequest, data: Mapping[str, object], upload: UploadedFile | None) -> queries.Query:
    given = _pictures_given(data, upload)
    if not given:
        raise ApiError(400, "missing_query", 'Search with one of: a picture in "image", a "url" or an "image_id", '
                                             'or words in "q".')
    if len(given) > 1:
        raise ApiError(400, "ambiguous_query",
                       f"Search with one picture at a time; this request has {' and '.join(given)}.")
    if upload is not None:
        return queries.query_from_upload(source=upload)
    if "url" in given:
        rate_limit_hit(request, scope="url_fetch")
        return queries.query_from_url(url=data["url"])  # type: ignore[arg-type]
    return queries.query_from_image(image_id=_image_id(data["image_id"]), user=request.user)


def search_result(result: queries.Result) -> dict[str, object]:
    return {
        "id": result.image.pk,
        "original_name": result.image.original_name,
        "score": round(result.score, 4),
        "match": round(result.match, 4),
        "verdict": result.verdict,
        "url": reverse("gallery:detail", args=[result.image.pk]),
        "thumbnail_url": result.image.thumbnail_url,
    }


@api_endpoint(methods=("POST",), anonymous=Anonymous.VIEWER, max_body_bytes=queries.search_body_limit)
@rate_limit("search", respond=rate_limited_response)
def search(request: HttpRequest) -> JsonResponse:
    started = time.perf_counter()
    data, upload = _search_input(request)
    try:
        params = queries.search_params_from(data)
        if params.filters.words and not _pictures_given(data, upload):
            outcome = queries.search_words(params=params)
        else:
            query = _query(request, data, upload)
            outcome = queries.search_run(query=query, user=request.user, params=params)
    except queries.QueryError as error:
        retry = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
        raise ApiError(error.status, error.code, error.message, retry) from None
    return JsonResponse({"results": [search_result(result) for result in outcome.results],
                         "took_ms": round((time.perf_counter() - started) * 1000, 1), "has_more": outcome.has_more})


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's answer to a request refused before any view (a Host header not in ALLOWED_HOSTS,
    say): JSON under the API, the site's page elsewhere."""
    if request.path.startswith("/api/"):
        return error_response(ApiError(400, "bad_request", "The request was refused before it reached the API "
                                                           "(for instance, its Host header is not this site's)."))
    return defaults.bad_request(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return error_response(ApiError(500, "internal_error", "Something went wrong on the server; it has been "
                                                              "logged."))
    return defaults.server_error(request)


@api_endpoint(methods=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"), anonymous=Anonymous.ALLOWED)
def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    raise ApiError(404, "not_found", f"The API has no {request.path}; see {reverse('api:docs')}.")
