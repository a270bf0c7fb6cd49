"""The JSON API, version 1: upload, look up and delete images, search, and the API's description."""
from __future__ import annotations

import json

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from api.endpoint import (
    Anonymous,
    ApiError,
    api_endpoint,
    not_authenticated,
    rate_limited_response,
    too_many_files_error,
)
from api.openapi import openapi_description, operations
from api.ratelimit import files_in, rate_limit
from gallery import selectors as gallery_selectors
from gallery import services as gallery_services
from gallery.models import Image
from gallery.services import UploadResult

# Room for the multipart framing and form fields around the files themselves.
BODY_OVERHEAD_BYTES = 1024 * 1024
# What the API answers when every file of an upload is refused, by the first refusal's code.
REFUSAL_STATUS = {"too_large": 413, "unsupported_format": 415, "not_an_image": 415}


def upload_body_limit() -> int:
    return settings.LOOKALIKE_MAX_UPLOAD_FILES * settings.LOOKALIKE_MAX_UPLOAD_BYTES + BODY_OVERHEAD_BYTES


def image_resource(image: Image) -> dict[str, object]:
    return {
        "id": image.pk,
        "original_name": image.original_name,
        "state": image.state,
        "error": image.error,
        "width": image.width,
        "height": image.height,
        "byte_size": image.byte_size,
        "created_at": image.created_at.isoformat(),
        "tags": [tag.name for tag in image.tags.all()],
        "url": reverse("gallery:detail", args=[image.pk]),
        "thumbnail_url": image.thumbnail.url,
        "owner": image.owner.get_username() if image.owner else None,
    }


def _upload_result(result: UploadResult, user: AbstractBaseUser | AnonymousUser) -> dict[str, object]:
    image, message = result.image, result.message
    if result.status == "duplicate" and image is not None and not gallery_selectors.image_list_visible(
            user=user).filter(pk=image.pk).exists():
        # Someone else's private or unfinished image: saying which it is would reveal it.
        image, message = None, "An identical file is already stored."
    return {
        "original_name": result.original_name,
        "status": result.status,
        "code": result.code or result.status,
        "message": message or "Stored; it is queued to be indexed.",
        "id": image.pk if image else None,
        "status_url": reverse("api:image", args=[image.pk]) if image else None,
    }


@api_endpoint(methods=("POST",), anonymous=Anonymous.REFUSED, max_body_bytes=upload_body_limit)
@rate_limit("upload", cost=files_in("image"), respond=rate_limited_response)
def images(request: HttpRequest) -> JsonResponse:
    files = request.FILES.getlist("image")
    if len(files) > settings.LOOKALIKE_MAX_UPLOAD_FILES:
        raise too_many_files_error()
    if not files:
        raise ApiError(400, "missing_image", 'Send one or more files in the multipart form field "image".')
    results = [gallery_services.image_upload(source=f, original_name=f.name, owner=request.user) for f in files]
    stored = any(result.status != "refused" for result in results)
    status = 202 if stored else REFUSAL_STATUS.get(results[0].code, 400)
    return JsonResponse({"results": [_upload_result(result, request.user) for result in results]}, status=status)


@api_endpoint(methods=("GET", "DELETE"), anonymous=Anonymous.VIEWER)
def image(request: HttpRequest, image_id: str) -> HttpResponse:
    found = (gallery_selectors.image_list_visible(user=request.user).prefetch_related("tags")
             .filter(pk=int(image_id)).first() if image_id.isdigit() and len(image_id) < 19 else None)
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


@api_endpoint(methods=("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"), anonymous=Anonymous.ALLOWED)
def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    raise ApiError(404, "not_found", f"The API has no {request.path}; see {reverse('api:docs')}.")
