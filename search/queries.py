"""A search from start to finish, for the pages and the API alike: where the query picture comes
from (an upload, a URL, a gallery image), which region of it to search, which images may answer,
and what each answer most likely is.

Every refusal is a ``QueryError`` with a stable code, a sentence for the person who asked, and
the HTTP status that fits it. Query pictures are never stored.
"""
from __future__ import annotations

import hashlib
import io
import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from PIL.Image import Image as PILImage

from config.request_body import FORM_OVERHEAD_BYTES
from core.backbones import WeightsMissing
from core.fetch import FetchLimits, FetchRefused, fetch_slot, fetch_url
from core.imaging import ImageRejected, decode_image
from core.refusal import Refusal
from gallery import selectors as gallery_selectors
from gallery.copies import image_picture
from gallery.models import Image
from gallery.uploads import Readable, read_limited
from search import runtime, selectors, verdicts
from search.selectors import SearchFilters

__all__ = ["Box", "Query", "QueryError", "Result", "SearchFilters", "SearchOutcome", "SearchParams",
           "query_from_image", "query_from_upload", "query_from_url", "search_body_limit", "search_params_from",
           "search_run", "search_words"]

# A search by words takes at most this many, each at most as long as a tag.
MAX_WORDS = 10
MAX_WORD_LENGTH = 64
# The verdict of a result found by its tags alone, with no picture to compare.
TAGGED = "tagged"

# A region narrower than this, in pixels, carries too little to search with.
MIN_REGION_SIDE = 8

_STATUS_BY_IMAGE_CODE = {"too_large": 413, "not_an_image": 415, "unsupported_format": 415}
_STATUS_BY_FETCH_CODE = {"too_large": 413, "url_busy": 503}


class QueryError(Refusal):
    """A search that cannot be made as asked, with the HTTP status that says why."""

    def __init__(self, code: str, message: str, status: int = 400, retry_after: int | None = None) -> None:
        super().__init__(code, message, retry_after=retry_after)
        self.status = status


@dataclass(frozen=True)
class Box:
    """A region in pixels of the upright query image (its own size, not a preview's)."""

    x: int
    y: int
    width: int
    height: int

    def as_text(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"


@dataclass(frozen=True)
class SearchParams:
    k: int
    offset: int = 0
    min_score: float = 0.0
    filters: SearchFilters = field(default_factory=SearchFilters)
    box: Box | None = None

    @property
    def min_score_percent(self) -> int:
        return round(self.min_score * 100)

    def form_fields(self) -> list[tuple[str, str]]:
        """These parameters as form fields, to ask for the next page the same way."""
        fields = [("k", str(self.k)), ("min_score", f"{self.min_score:g}"), ("q", " ".join(self.filters.words)),
                  ("tags", ",".join(self.filters.tags)),
                  ("uploader", self.filters.uploader),
                  ("uploaded_from", self.filters.uploaded_from.isoformat() if self.filters.uploaded_from else ""),
                  ("uploaded_to", self.filters.uploaded_to.isoformat() if self.filters.uploaded_to else ""),
                  ("box", self.box.as_text() if self.box else "")]
        return [(key, value) for key, value in fields if value]


@dataclass(frozen=True)
class Result:
    image: Image
    score: float  # cosine similarity; 1.0 for the same file
    match: float  # what is shown and filtered by, falling down the list (``selectors.SimilarImage``)
    verdict: str  # "same_file", "edited_copy" or "similar"

    @property
    def percent(self) -> int:
        return round(max(0.0, self.match) * 100)


@dataclass(frozen=True)
class SearchOutcome:
    results: list[Result]
    has_more: bool
    embed_ms: float
    index_ms: float

    @property
    def took_ms(self) -> float:
        return self.embed_ms + self.index_ms

    @property
    def best_percent(self) -> int:
        return max((result.percent for result in self.results), default=0)


@dataclass
class Query:
    """A picture to search with: decoded pixels, or a gallery image and its stored vector."""

    width: int  # the upright picture's own size, which boxes refer to
    height: int
    picture: PILImage | None = None
    sha256: str = ""
    source: Image | None = None


# Reading the parameters -----------------------------------------------------------------------


def search_params_from(data: Mapping[str, object]) -> SearchParams:
    """Validated parameters from a form (QueryDict) or a JSON object; every key is optional."""
    k = _integer(data, "k", settings.LOOKALIKE_SEARCH_DEFAULT_K, 1, settings.LOOKALIKE_SEARCH_MAX_K,
                 "the number of results")
    offset = _integer(data, "offset", 0, 0, settings.LOOKALIKE_SEARCH_MAX_K, "the offset")
    if offset + k > settings.LOOKALIKE_SEARCH_MAX_K:
        raise QueryError("invalid_parameter",
                         f"Results stop at the first {settings.LOOKALIKE_SEARCH_MAX_K}: offset + k is too large.")
    return SearchParams(k=k, offset=offset, min_score=_min_score(data), filters=_filters(data), box=_box(data))


def _value(data: Mapping[str, object], key: str) -> object:
    value = data.get(key)
    return value.strip() if isinstance(value, str) else value


def _integer(data: Mapping[str, object], key: str, default: int, low: int, high: int, label: str) -> int:
    value = _value(data, key)
    if value in (None, ""):
        return default
    number = None
    if isinstance(value, int | str) and not isinstance(value, bool):
        try:
            number = int(value)
        except ValueError:
            pass
    if number is None or not low <= number <= high:
        raise QueryError("invalid_parameter", f"{key} ({label}) must be a whole number from {low} to {high}.")
    return number


def _min_score(data: Mapping[str, object]) -> float:
    value = _value(data, "min_score")
    if value in (None, ""):
        return 0.0
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        score = float("nan")
    if not 0.0 <= score <= 1.0:
        raise QueryError("invalid_parameter", "min_score must be a match from 0 to 1 (0.8 means 80%).")
    return score


def _filters(data: Mapping[str, object]) -> SearchFilters:
    tags = _list(data, "tags")
    uploader = _value(data, "uploader") or ""
    if not isinstance(uploader, str):
        raise QueryError("invalid_parameter", "uploader must be a user name.")
    uploaded_from, uploaded_to = _date(data, "uploaded_from"), _date(data, "uploaded_to")
    if uploaded_from and uploaded_to and uploaded_from > uploaded_to:
        raise QueryError("invalid_parameter", "uploaded_from is after uploaded_to.")
    return SearchFilters(tuple(tags), uploader, uploaded_from, uploaded_to, _words(data))


def _words(data: Mapping[str, object]) -> tuple[str, ...]:
    value = _value(data, "q")
    if value in (None, ""):
        return ()
    if not isinstance(value, str):
        raise QueryError("invalid_parameter", "q must be words separated by spaces.")
    words = list(dict.fromkeys(word for word in value.lower().replace(",", " ").split()))
    if len(words) > MAX_WORDS or any(len(word) > MAX_WORD_LENGTH for word in words):
        raise QueryError("invalid_parameter", f"q may hold at most {MAX_WORDS} words of at most "
                                              f"{MAX_WORD_LENGTH} letters each.")
    return tuple(words)


def _list(data: Mapping[str, object], key: str) -> list[str]:
    getlist = getattr(data, "getlist", None)
    raw = getlist(key) if getlist else data.get(key)
    values = [raw] if isinstance(raw, str) else (raw or [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise QueryError("invalid_parameter", f"{key} must be a list of names, or names separated by commas.")
    return [part.strip().lower() for value in values for part in value.split(",") if part.strip()]


def _date(data: Mapping[str, object], key: str) -> date | None:
    value = _value(data, key)
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise QueryError("invalid_parameter", f"{key} must be a date written as YYYY-MM-DD.") from None


def _box(data: Mapping[str, object]) -> Box | None:
    value = _value(data, "box")
    if value in (None, ""):
        return None
    try:
        if isinstance(value, str):
            x, y, width, height = (round(float(part)) for part in value.split(","))
        elif isinstance(value, Mapping):
            x, y, width, height = (int(value[key]) for key in ("x", "y", "width", "height"))
        else:
            raise TypeError
    except (TypeError, ValueError, KeyError):
        raise QueryError("invalid_box", 'box must be "x,y,width,height" or {"x", "y", "width", "height"} '
                                        "in pixels.") from None
    if width <= 0 or height <= 0:
        raise QueryError("invalid_box", "The region has no area: its width and height must be above 0.")
    return Box(x, y, width, height)


# Where the picture comes from ---------------------------------------------------------------


def search_body_limit() -> int:
    """The largest request body a search takes: one query picture and the form's fields."""
    return settings.LOOKALIKE_MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES


def query_from_upload(*, source: Readable) -> Query:
    """A query picture sent by the person searching; read and validated like an upload, never stored."""
    try:
        data = read_limited(source, settings.LOOKALIKE_MAX_UPLOAD_BYTES)
        decoded = decode_image(data, max_pixels=settings.LOOKALIKE_MAX_IMAGE_PIXELS)
    except ImageRejected as rejection:
        raise QueryError(rejection.code, rejection.message,
                         _STATUS_BY_IMAGE_CODE.get(rejection.code, 400)) from None
    return Query(decoded.width, decoded.height, picture=decoded.image, sha256=hashlib.sha256(data).hexdigest())


def query_from_url(*, url: str) -> Query:
    """A query picture the server fetches (see ``core.fetch`` for what it refuses)."""
    if not isinstance(url, str) or not url.strip():
        raise QueryError("invalid_url", "Give the address of a picture, starting with http:// or https://.")
    allowed = [ipaddress.ip_network(network, strict=False) for network in settings.LOOKALIKE_URL_FETCH_ALLOWED_NETWORKS]
    limits = FetchLimits(max_bytes=settings.LOOKALIKE_MAX_UPLOAD_BYTES, timeout=settings.LOOKALIKE_URL_FETCH_TIMEOUT,
                         allowed_networks=allowed)
    try:
        # However many clients ask, fetches never take more than this many web threads.
        with fetch_slot(settings.URL_FETCH_SLOTS_DIR, settings.LOOKALIKE_URL_FETCH_MAX_IN_FLIGHT,
                        retry_after=limits.timeout):
            data = fetch_url(url, limits)
    except FetchRefused as refusal:
        raise QueryError(refusal.code, refusal.message, _STATUS_BY_FETCH_CODE.get(refusal.code, 400),
                         refusal.retry_after) from None
    try:
        return query_from_upload(source=io.BytesIO(data))
    except QueryError as error:
        raise QueryError(error.code, f"The URL did not give a usable picture: {error.message}", error.status) from None


def query_from_image(*, image_id: int, user: User | AnonymousUser) -> Query:
    """A gallery image the user may see; searched by its stored vector, nothing is embedded."""
    image = gallery_selectors.image_list_visible(user=user).filter(pk=image_id).first()
    if image is None:
        raise QueryError("not_found", f"There is no image #{image_id}, or it is not yours to see.", 404)
    if image.state != Image.State.INDEXED:
        raise QueryError("not_indexed", f"Image #{image.pk} is not indexed yet "
                                        f"({image.get_state_display().lower()}).", 409)
    return Query(image.width, image.height, sha256=image.sha256, source=image)


# Searching ------------------------------------------------------------------------------------


def search_run(*, query: Query, user: User | AnonymousUser, params: SearchParams) -> SearchOutcome:
    """The page of results ``params`` asks for, best first, each with its verdict."""
    # One reader for the whole search: a reindex may switch the site to another index meanwhile.
    reader = runtime.index_reader()
    timings = selectors.SearchTimings()
    wanted = params.offset + params.k + 1
    try:
        if query.source is not None and params.box is None:
            similar = selectors.similar_to_image(query.source, k=wanted, filters=params.filters, reader=reader,
                                                 timings=timings)
        else:
            picture = query.picture if query.picture is not None else _source_picture(query)
            if params.box is not None:
                picture = _crop(picture, params.box, query)
            [similar] = selectors.similar_to_pictures([picture], k=wanted, filters=params.filters, reader=reader,
                                                      timings=timings)
    except (selectors.SearchUnavailable, WeightsMissing) as exc:
        raise QueryError("search_unavailable", str(exc), 503) from None
    threshold = verdicts.edited_copy_threshold(reader.identity)
    same_file = query.sha256 if params.box is None else ""
    # The same file is the same picture: similarity 1 and first, whatever its vector scored
    # (a gallery vector also carries its small view, so even the picture itself scores below 1).
    ranked = sorted((_result(found, same_file=found.image.sha256 == same_file, threshold=threshold)
                     for found in similar), key=lambda result: result.verdict != verdicts.SAME_FILE)
    # On the match, as shown: the numbers fall down the list, so the minimum cuts it at one place.
    passing = [result for result in ranked if result.match >= params.min_score]
    page = passing[params.offset:params.offset + params.k]
    return SearchOutcome(page, len(passing) > params.offset + params.k, timings.embed * 1000, timings.index * 1000)


def _result(found: selectors.SimilarImage, *, same_file: bool, threshold: float | None) -> Result:
    if same_file:
        return Result(found.image, 1.0, 1.0, verdicts.verdict(score=1.0, same_file=True, threshold=threshold))
    return Result(found.image, found.score, found.match,
                  verdicts.verdict(score=found.score, same_file=False, threshold=threshold))


def search_words(*, params: SearchParams) -> SearchOutcome:
    """A search by words alone: the images whose tags hold every word of ``q`` (and pass the other
    filters), newest first. Each result scores 1 with the verdict "tagged": there is no picture to compare."""
    if not params.filters.words:
        raise QueryError("no_query", "Give words to search for, or a picture to search with.")
    started = time.perf_counter()
    images = list(selectors.searchable_images(filters=params.filters).select_related("owner")
                  .order_by("-created_at", "-id")[params.offset:params.offset + params.k + 1])
    results = [Result(image, 1.0, 1.0, TAGGED) for image in images[:params.k]]
    return SearchOutcome(results, len(images) > params.k, 0.0, (time.perf_counter() - started) * 1000)


def _source_picture(query: Query) -> PILImage:
    assert query.source is not None
    return image_picture(query.source)


def _crop(picture: PILImage, box: Box, query: Query) -> PILImage:
    if box.x < 0 or box.y < 0 or box.x + box.width > query.width or box.y + box.height > query.height:
        raise QueryError("invalid_box", f"The region {box.as_text()} is not inside the picture, which is "
                                        f"{query.width} × {query.height} pixels.")
    if min(box.width, box.height) < MIN_REGION_SIDE:
        raise QueryError("invalid_box", f"The region is too small to search with: draw one at least "
                                        f"{MIN_REGION_SIDE} pixels wide and high.")
    # The picture may be decoded at a reduced scale; the box is in the image's own pixels.
    sx, sy = picture.width / query.width, picture.height / query.height
    left, top = int(box.x * sx), int(box.y * sy)
    right = max(left + 1, round((box.x + box.width) * sx))
    bottom = max(top + 1, round((box.y + box.height) * sy))
    return picture.crop((left, top, right, bottom))
