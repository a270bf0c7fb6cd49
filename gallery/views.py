"""Gallery pages: browse (newest first, and by look), open, upload, delete, and the state feed that upload
pages poll."""
from __future__ import annotations

import logging
import mimetypes
from pathlib import PurePosixPath

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import TooManyFilesSent
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from config.object_store import STORE_ERRORS
from config.ratelimit import RateLimited, rate_limit_hit, too_many_requests_page
from config.request_body import max_body
from config.signed_in import SignedInRequest
from gallery import selectors, services
from gallery.access import viewer_required
from gallery.models import Cluster, Image
from gallery.resources import image_summary
from gallery.uploads import FileSizeLimit, upload_too_large_detail
from search import clusters, copy_notices, recommendations

log = logging.getLogger(__name__)

GALLERY_PAGE_SIZE = 48
CLUSTERS_PAGE_SIZE = 24
# The folders of the copies that are served, and the field of the image that names each copy.
_SERVED_MEDIA = {"display": "display", "thumbs": "thumbnail"}
# Names are random and never reused, so a copy never changes; what may change is who may see it.
# Shared caches keep a copy for minutes, so that hiding an image takes it back from them soon;
# the browser of someone who has already seen it may keep it longer.
_PUBLIC_CACHE = "public, max-age=86400, s-maxage=300"
_PRIVATE_CACHE = "private, max-age=3600"


def image_json(image: Image) -> dict[str, object]:
    return {**image_summary(image), "state_label": image.get_state_display()}


@require_GET
@viewer_required
def index(request: HttpRequest) -> HttpResponse:
    images = selectors.image_list_visible(user=request.user)
    page = Paginator(images, GALLERY_PAGE_SIZE).get_page(request.GET.get("page"))
    more_like_yours = recommendations.recommendations_for_user(user=request.user) if page.number == 1 else []
    return render(request, "gallery/index.html", {"page": page, "more_like_yours": more_like_yours})


@require_GET
@viewer_required
def detail(request: HttpRequest, image_id: int) -> HttpResponse:
    image = get_object_or_404(selectors.image_list_visible(user=request.user), pk=image_id)
    can_manage = selectors.image_can_manage(image=image, user=request.user)
    also_like = recommendations.recommendations_for_image(image=image, user=request.user)
    return render(request, "gallery/detail.html", {"image": image, "can_manage": can_manage, "also_like": also_like})


@require_GET
@viewer_required
def browse(request: HttpRequest) -> HttpResponse:
    """The gallery by look: a card for each cluster that holds images the viewer may see."""
    clustering = clusters.clustering_current()
    counts = clusters.cluster_counts_visible(user=request.user, clustering=clustering) if clustering else {}
    shown = Cluster.objects.filter(pk__in=list(counts)).select_related("clustering").order_by("number")
    page = Paginator(shown, CLUSTERS_PAGE_SIZE).get_page(request.GET.get("page"))
    cards = clusters.cluster_cards(user=request.user, clusters=list(page.object_list), counts=counts)
    return render(request, "gallery/browse.html", {"page": page, "cards": cards, "clustering": clustering})


@require_GET
@viewer_required
def browse_cluster(request: HttpRequest, cluster_id: int) -> HttpResponse:
    """One cluster's images that the viewer may see, the most typical first; 404 when there are none."""
    cluster = get_object_or_404(Cluster, pk=cluster_id, clustering=clusters.clustering_current())
    images = clusters.cluster_images_visible(user=request.user, cluster=cluster)
    page = Paginator(images, GALLERY_PAGE_SIZE).get_page(request.GET.get("page"))
    if not page.paginator.count:
        raise Http404
    return render(request, "gallery/cluster.html", {"cluster": cluster, "page": page})


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _upload_body_limit() -> int:
    return settings.LOOKALIKE_MAX_UPLOAD_FILES * (settings.LOOKALIKE_MAX_UPLOAD_BYTES + 4096)


def _refuse_too_large(request: HttpRequest, limit: int) -> HttpResponse:
    return _upload_error(request, "too_large", f"The upload is too large: {upload_too_large_detail()}", 413)


@max_body(_upload_body_limit, refuse=_refuse_too_large)
@csrf_exempt  # checked by _upload, once the body has been read under the size limit
@login_required
@require_http_methods(["GET", "POST"])
def upload(request: SignedInRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "gallery/upload.html")
    max_files, max_bytes = settings.LOOKALIKE_MAX_UPLOAD_FILES, settings.LOOKALIKE_MAX_UPLOAD_BYTES
    size_limit = FileSizeLimit(request, max_bytes)
    # A plain list until the body is read, which nothing has done yet.
    request.upload_handlers.insert(0, size_limit)  # type: ignore[union-attr]
    try:
        files = request.FILES.getlist("files")
    except TooManyFilesSent:
        return _upload_error(request, "too_many_files", f"Send at most {max_files} files at a time.", 400)
    if size_limit.too_large is not None:
        name = services.clean_original_name(size_limit.too_large)
        return _upload_error(request, "too_large", f"{name} is too large: {upload_too_large_detail()}", 413)
    if len(files) <= max_files:
        # Counted once the files are read, as the size limit must be in place before the body is.
        try:
            rate_limit_hit(request, scope="upload", cost=len(files))
        except RateLimited as limited:
            return too_many_requests_page(request, limited)
    return _upload(request, files)


@csrf_protect
def _upload(request: SignedInRequest, files: list[UploadedFile]) -> HttpResponse:
    limit = settings.LOOKALIKE_MAX_UPLOAD_FILES
    if len(files) > limit:
        return _upload_error(request, "too_many_files", f"Send at most {limit} files at a time.", 400)
    if not files:
        return _upload_error(request, "no_files", "Choose one or more images to upload.", 400)
    results = services.images_upload(uploads=[(f.name or "", f) for f in files], owner=request.user)
    # Nothing of an upload that the media store could not take was stored: all of it may be sent again.
    status = 503 if any(r.code == "store_unavailable" for r in results) else 200
    if _wants_json(request):
        return JsonResponse({"results": [
            {"name": r.original_name, "status": r.status, "code": r.code, "message": r.message,
             "image": image_json(r.image) if r.image else None}
            for r in results
        ]}, status=status)
    return render(request, "gallery/upload.html", {"results": results}, status=status)


def _upload_error(request: HttpRequest, code: str, message: str, status: int) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"code": code, "message": message}, status=status)
    return render(request, "gallery/upload.html", {"error": message}, status=status)


@require_GET
@viewer_required
def states(request: HttpRequest) -> JsonResponse:
    try:
        ids = [int(part) for part in request.GET.get("ids", "").split(",") if part.strip()][:500]
    except ValueError:
        return JsonResponse({"code": "bad_ids", "message": "ids must be a comma-separated list of numbers."},
                            status=400)
    images = list(selectors.image_list_visible(user=request.user).filter(pk__in=ids))
    # Noticed when each was embedded; named only when the viewer may see the image it copies.
    copies = copy_notices.copy_notices_shown(image_ids=[image.pk for image in images], user=request.user)
    return JsonResponse({"images": [
        {**image_json(image), "copy_of": {"id": copies[image.pk], "url": reverse("gallery:detail",
                                                                                 args=[copies[image.pk]])}
         if image.pk in copies else None}
        for image in images]})


@login_required
@require_POST
def delete(request: HttpRequest, image_id: int) -> HttpResponse:
    image = get_object_or_404(Image, pk=image_id)
    if not selectors.image_can_manage(image=image, user=request.user):
        return HttpResponse("Only the owner or staff may delete this image.", status=403)
    name = image.original_name
    services.image_delete(image=image)
    messages.success(request, f"Deleted {name}.")
    return redirect("gallery:index")


def _stored_file(name: str) -> FileResponse | HttpResponse:
    """A stored file, streamed from the media storage (the disk or the object store), typed by its name;
    404 if it is missing, 503 if the storage cannot be read just now."""
    try:
        file = default_storage.open(name, "rb")
    except FileNotFoundError:
        raise Http404 from None
    except STORE_ERRORS:
        log.warning("Could not read %s from the media storage", name, exc_info=True)
        return HttpResponse("The picture cannot be read from the media storage just now; try again in a moment.",
                            status=503, content_type="text/plain; charset=utf-8", headers={"Retry-After": "30"})
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(file, content_type=content_type)


@login_required
@require_GET
def original(request: HttpRequest, image_id: int) -> HttpResponseBase:
    image = get_object_or_404(Image, pk=image_id)
    if not selectors.image_can_manage(image=image, user=request.user) or not image.original:
        raise Http404  # a file found damaged is not kept
    response = _stored_file(image.original.name)
    if isinstance(response, FileResponse):
        # The type and the extension come from the stored name, which the decoded format chose, never from
        # the uploaded name: a JPEG uploaded as "x.html" downloads as "x.jpg".
        stored_extension = PurePosixPath(image.original.name).suffix
        filename = f"{PurePosixPath(image.original_name).stem}{stored_extension}"
        disposition = content_disposition_header(True, filename)
        assert disposition is not None, "an attachment always has the header"
        response["Content-Disposition"] = disposition
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_GET
@viewer_required
def media(request: HttpRequest, path: str) -> HttpResponseBase:
    """Serve the re-encoded copies (never the originals) with headers that stop content sniffing,
    and only to whoever may see their image: to anyone else they do not exist. They are streamed
    from the media storage through the site, in the object store as on disk (README, "Media in the
    object store")."""
    parts = PurePosixPath(path).parts
    if not parts or parts[0] not in _SERVED_MEDIA or ".." in parts:
        raise Http404
    image = selectors.image_list_visible(user=request.user).filter(**{_SERVED_MEDIA[parts[0]]: path}).first()
    if image is None:
        raise Http404
    response = _stored_file(path)
    if not isinstance(response, FileResponse):
        return response
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = "inline"
    response["Cache-Control"] = _PUBLIC_CACHE if selectors.image_visible_to_everyone(image=image) else _PRIVATE_CACHE
    return response
