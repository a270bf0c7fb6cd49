"""The API's OpenAPI 3.1 description, written by hand. ``/api/v1/openapi.json`` serves it, the docs
page is rendered from it, and the conformance tests hold the real API to it."""
from __future__ import annotations

import copy
import functools
from typing import Any

from django.conf import settings

ERROR_CODES_NOTE = (
    "Every error is JSON `{\"code\", \"message\"}`: `code` is stable and meant for programs, `message` is a "
    "sentence meant for people."
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_RATE_LIMITED = {
    **_error("Too many requests from this user (or, when anonymous, this address); try again after "
             "`Retry-After` seconds."),
    "headers": {"Retry-After": {"description": "Seconds until the limit's window ends.",
                                "schema": {"type": "integer", "minimum": 1}}},
}
_UNAUTHENTICATED = {
    **_error("Not signed in (`not_authenticated`), or the token is malformed (`invalid_authorization`), "
             "unknown or revoked (`invalid_token`). A bad token is refused even where anonymous access is allowed."),
    "headers": {"WWW-Authenticate": {"description": "`Bearer realm=\"api\"`", "schema": {"type": "string"}}},
}
_CSRF = _error("`csrf_failed`: a request signed in by the browser session sent no valid CSRF token.")
_NULLABLE_STRING = {"type": ["string", "null"]}


def _results_of(properties: dict[str, Any]) -> dict[str, Any]:
    """A response ``{"results": [...]}`` of objects with exactly these properties, all required."""
    item = {"type": "object", "additionalProperties": False, "required": list(properties), "properties": properties}
    return {"type": "object", "additionalProperties": False, "required": ["results"],
            "properties": {"results": {"type": "array", "items": item}}}


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "examples": ["image_not_found"]},
            "message": {"type": "string", "minLength": 1},
        },
    },
    "Image": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "original_name", "state", "error", "error_code", "width", "height", "byte_size",
                     "created_at", "tags", "url", "thumbnail_url", "owner"],
        "properties": {
            "id": {"type": "integer"},
            "original_name": {"type": "string", "description": "The file name as uploaded."},
            "state": {"type": "string", "enum": ["queued", "embedding", "indexed", "failed"],
                      "description": "Search finds the image once it is `indexed`."},
            "error": {"type": "string", "description": "Why the image failed; empty otherwise."},
            "error_code": {"type": "string",
                           "description": "For a file that the worker found damaged, the code an upload refusal "
                                          "gives (`damaged`, ...); empty otherwise."},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
            "byte_size": {"type": "integer", "minimum": 1},
            "created_at": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "url": {"type": "string", "description": "The image's page on the site."},
            "thumbnail_url": {"type": "string",
                              "description": "A placeholder until the image is embedded and its thumbnail made."},
            "owner": {**_NULLABLE_STRING, "description": "The uploader's user name."},
        },
    },
    "UploadResult": {
        "type": "object",
        "additionalProperties": False,
        "required": ["original_name", "status", "code", "message", "id", "status_url"],
        "properties": {
            "original_name": {"type": "string"},
            "status": {"type": "string", "enum": ["accepted", "duplicate", "refused"]},
            "code": {"type": "string", "description": "`accepted`, `duplicate`, or why the file was refused: "
                     "`empty`, `not_an_image`, `unsupported_format`, `damaged`, `too_many_pixels`, `too_large`, "
                     "`store_unavailable` (the media store could not take the upload: nothing of it was stored)."},
            "message": {"type": "string"},
            "id": {"type": ["integer", "null"], "description": "The new image, or the one this file duplicates: "
                   "always one you may see, since a file identical only to images you may not see is stored as "
                   "yours."},
            "status_url": {**_NULLABLE_STRING, "description": "Where to follow the image's state "
                           "(`GET /api/v1/images/{id}`)."},
        },
    },
    "UploadResults": {
        "type": "object",
        "additionalProperties": False,
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ref("UploadResult"), "minItems": 1}},
    },
    "SearchResult": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "original_name", "score", "match", "verdict", "url", "thumbnail_url"],
        "properties": {
            "id": {"type": "integer"},
            "original_name": {"type": "string"},
            "score": {"type": "number", "description": "Cosine similarity of the two pictures' descriptors: "
                      "1 for the same picture. A search with a picture ranks its best candidates by this "
                      "score and by how many parts of the two pictures match, so a result may have a lower "
                      "score than the next one."},
            "match": {"type": "number", "description": "The number the search page shows, which falls as the "
                      "results go on: the score, or, for a result that shares more details with the picture "
                      "than a more alike one ranked after it, that one's score. `min_score` applies to it."},
            "verdict": {"type": "string", "enum": ["same_file", "edited_copy", "similar", "tagged"],
                        "description": "`same_file`: identical content; `edited_copy`: a score above the threshold "
                        "calibrated for copies; `similar`: anything else; `tagged`: a search by words alone "
                        "found it by its tags (its score is then 1)."},
            "url": {"type": "string"},
            "thumbnail_url": {"type": "string"},
        },
    },
    "Recommendations": _results_of({
        "id": {"type": "integer"},
        "original_name": {"type": "string"},
        "score": {"type": "number", "description": "Cosine similarity to the image (or to the closest of "
                                                   "your uploads)."},
        "url": {"type": "string"},
        "thumbnail_url": {"type": "string"},
    }),
    "Clusters": _results_of({
        "id": {"type": "integer"},
        "number": {"type": "integer", "minimum": 1, "description": "As the Browse page names it "
                   "(\"Group 2\"); 1 is the largest."},
        "count": {"type": "integer", "minimum": 1, "description": "Its images that you may see."},
        "url": {"type": "string", "description": "Its page on the site."},
        "images_url": {"type": "string", "description": "Its images (`GET /api/v1/clusters/{id}/images`)."},
        "representatives": {"type": "array", "maxItems": 4, "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "original_name", "url", "thumbnail_url"],
            "properties": {"id": {"type": "integer"}, "original_name": {"type": "string"},
                           "url": {"type": "string"}, "thumbnail_url": {"type": "string"}},
        }, "description": "Its most typical images that you may see."},
    }),
    "ClusterImages": {
        "type": "object",
        "additionalProperties": False,
        "required": ["count", "page", "pages", "results"],
        "properties": {
            "count": {"type": "integer", "minimum": 1, "description": "The cluster's images that you may see."},
            "page": {"type": "integer", "minimum": 1},
            "pages": {"type": "integer", "minimum": 1},
            "results": {"type": "array", "items": _ref("Image")},
        },
    },
    "SearchResults": {
        "type": "object",
        "additionalProperties": False,
        "required": ["results", "took_ms", "has_more"],
        "properties": {
            "results": {"type": "array", "items": _ref("SearchResult")},
            "took_ms": {"type": "number", "minimum": 0, "description": "Server time for the whole search."},
            "has_more": {"type": "boolean", "description": "Whether asking again with `offset` + `k` gives more."},
        },
    },
    "Box": {
        "type": "object",
        "additionalProperties": False,
        "required": ["x", "y", "width", "height"],
        "description": "A region of the query picture, in pixels of the picture turned upright.",
        "properties": {"x": {"type": "integer", "minimum": 0}, "y": {"type": "integer", "minimum": 0},
                       "width": {"type": "integer", "minimum": 1}, "height": {"type": "integer", "minimum": 1}},
    },
}


def _search_options(max_k: int) -> dict[str, Any]:
    return {
        "k": {"type": "integer", "minimum": 1, "maximum": max_k, "description": "How many results (a page)."},
        "offset": {"type": "integer", "minimum": 0, "description": "How many results to skip: the next page."},
        "min_score": {"type": "number", "minimum": 0, "maximum": 1,
                      "description": "Leave out results whose `match` is below this."},
        "q": {"type": "string", "description": "Words, separated by spaces: only images with a tag that is (or "
                                                "holds) each word; a plural finds the singular. Without a picture, "
                                                "a search by words alone, newest first."},
        "uploader": {"type": "string", "description": "Only images uploaded by this user name."},
        "uploaded_from": {"type": "string", "format": "date", "description": "Only images uploaded on or after."},
        "uploaded_to": {"type": "string", "format": "date", "description": "Only images uploaded on or before."},
    }


def _search_body(max_k: int) -> dict[str, Any]:
    options = _search_options(max_k)
    form: dict[str, Any] = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "A picture to search with (not stored)."},
            "url": {"type": "string", "description": "An http(s) address of a picture for the server to fetch."},
            "image_id": {"type": "integer", "description": "Search with a gallery image you can see."},
            **options,
            "box": {"type": "string", "pattern": r"^\d+,\d+,\d+,\d+$", "description": "`x,y,width,height`."},
            "tags": {"type": "string", "description": "Comma-separated: only images with all of these tags."},
        },
    }
    as_json = {
        "type": "object",
        "properties": {
            "url": form["properties"]["url"],
            "image_id": form["properties"]["image_id"],
            **options,
            "box": _ref("Box"),
            "tags": {"type": "array", "items": {"type": "string"}, "description": "Only images with all of these."},
        },
    }
    return {
        "required": True,
        "description": "Exactly one of `image`, `url` or `image_id`, or words in `q` alone, and any of the options.",
        "content": {"multipart/form-data": {"schema": form}, "application/json": {"schema": as_json}},
    }


def _paths(max_k: int, max_files: int, max_bytes: int) -> dict[str, Any]:
    return {
        "/api/v1/images": {
            "post": {
                "operationId": "images_upload",
                "summary": "Upload images",
                "description": (
                    f"Upload up to {max_files} files (each at most {max_bytes} bytes) in the repeated field `image`. "
                    "Each is validated, de-duplicated and queued to be indexed; follow its `status_url`. Counts each "
                    "file against the upload rate limit."),
                "tags": ["images"],
                "security": [{"bearerAuth": []}, {"sessionCookie": []}],
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["image"],
                    "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                             "minItems": 1, "maxItems": max_files}},
                }}}},
                "responses": {
                    "202": _json(_ref("UploadResults"), "At least one file was stored or was already stored."),
                    "400": _json({"oneOf": [_ref("UploadResults"), _ref("Error")]},
                                 "Every file was refused, the first one not for its size or type (results), or the "
                                 "request itself is wrong: `missing_image`, `too_many_files`, `malformed_request`."),
                    "401": _UNAUTHENTICATED,
                    "403": _CSRF,
                    "413": _json({"oneOf": [_ref("UploadResults"), _ref("Error")]},
                                 "Every file was refused, the first for being too large (results), or the body is "
                                 "larger than the request limit, judged by Content-Length (`request_too_large`)."),
                    "415": _json(_ref("UploadResults"), "Every file was refused, the first for not being an "
                                 "image of an accepted type."),
                    "429": _RATE_LIMITED,
                    "503": _json(_ref("UploadResults"), "The media store could not take the upload "
                                 "(`store_unavailable`): nothing of it was stored; send it again later."),
                },
            },
        },
        "/api/v1/images/{image_id}/recommendations": {
            "parameters": [{"name": "image_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "get": {
                "operationId": "images_recommendations",
                "summary": "You may also like",
                "description": ("Up to 12 images like this one that you may see, never copies of it (the same file "
                                "or an edited copy, as search's verdicts say), chosen to differ from each other."),
                "tags": ["images"],
                "responses": {
                    "200": _json(_ref("Recommendations"), "Closest first, each unlike those before it."),
                    "401": _UNAUTHENTICATED,
                    "404": _error("No such image that you may see (`image_not_found`)."),
                },
            },
        },
        "/api/v1/recommendations": {
            "get": {
                "operationId": "recommendations",
                "summary": "More like your uploads",
                "description": ("Up to 12 images like your latest uploads, never your own and never copies of "
                                "them, chosen to differ from each other."),
                "tags": ["images"],
                "security": [{"bearerAuth": []}, {"sessionCookie": []}],
                "responses": {
                    "200": _json(_ref("Recommendations"), "Closest first, each unlike those before it."),
                    "401": _UNAUTHENTICATED,
                },
            },
        },
        "/api/v1/clusters": {
            "get": {
                "operationId": "clusters",
                "summary": "Browse by look",
                "description": ("The groups of alike images that the last grouping job made (see the README, "
                                "\"Browse by look\"), largest first: each that holds images you may see, with "
                                "how many and its most typical ones. Empty before the first grouping."),
                "tags": ["browse"],
                "responses": {
                    "200": _json(_ref("Clusters"), "The groups."),
                    "401": _UNAUTHENTICATED,
                },
            },
        },
        "/api/v1/clusters/{cluster_id}/images": {
            "parameters": [
                {"name": "cluster_id", "in": "path", "required": True, "schema": {"type": "integer"}},
                {"name": "page", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "default": 1},
                 "description": "48 images a page; past the last, the last."},
            ],
            "get": {
                "operationId": "clusters_images",
                "summary": "A group's images",
                "description": "A page of the group's images that you may see, the most typical first.",
                "tags": ["browse"],
                "responses": {
                    "200": _json(_ref("ClusterImages"), "The page."),
                    "401": _UNAUTHENTICATED,
                    "404": _error("No such group in the grouping in service, or none of its images is one you "
                                  "may see (`cluster_not_found`)."),
                },
            },
        },
        "/api/v1/images/{image_id}": {
            "parameters": [{"name": "image_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "get": {
                "operationId": "images_get",
                "summary": "An image and its state",
                "tags": ["images"],
                "responses": {
                    "200": _json(_ref("Image"), "The image."),
                    "401": _UNAUTHENTICATED,
                    "404": _error("No such image that you may see (`image_not_found`): another user's private "
                                  "images are never revealed."),
                },
            },
            "delete": {
                "operationId": "images_delete",
                "summary": "Delete an image",
                "description": "Its owner or staff only. It leaves search at once.",
                "tags": ["images"],
                "security": [{"bearerAuth": []}, {"sessionCookie": []}],
                "responses": {
                    "204": {"description": "Deleted."},
                    "401": _UNAUTHENTICATED,
                    "403": _error("You may see the image but it is not yours (`not_owner`), or `csrf_failed`."),
                    "404": _error("No such image that you may see (`image_not_found`)."),
                },
            },
        },
        "/api/v1/search": {
            "post": {
                "operationId": "search",
                "summary": "Search with a picture, or by words",
                "description": (
                    "Search the gallery with an uploaded picture, a picture at a URL, or a gallery image, optionally "
                    "only a region of it (`box`) and only among images matching the filters. The query picture is "
                    "never stored. With words in `q` and no picture, the images tagged with those words, newest "
                    "first. Counts against the search rate limit, and a URL also against the URL-fetch limit."),
                "tags": ["search"],
                "requestBody": _search_body(max_k),
                "responses": {
                    "200": _json(_ref("SearchResults"), "The most similar images, best first."),
                    "400": _error("A parameter is wrong (`invalid_parameter`, `invalid_box`, `missing_query`, "
                                  "`ambiguous_query`, `invalid_json`, ...) or the picture cannot be used."),
                    "401": _UNAUTHENTICATED,
                    "403": _CSRF,
                    "404": _error("`image_id` names no image you may see."),
                    "409": _error("`image_id` names an image that is not indexed yet."),
                    "413": _error("The picture (or the request) is too large."),
                    "415": _error("The picture, or the request's content type, is not of an accepted type."),
                    "429": _RATE_LIMITED,
                    "503": _error("Search is unavailable until an operator acts; the message says how "
                                  "(`search_unavailable`). Or the server is already fetching as many pictures by "
                                  "URL as it may at once (`url_busy`): try again after the seconds that the "
                                  "`Retry-After` header then gives."),
                },
            },
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "tags": ["about"],
                "security": [{}],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI description.")},
            },
        },
        "/api/v1/docs/": {
            "get": {
                "operationId": "docs",
                "summary": "This description, as a page to read",
                "tags": ["about"],
                "security": [{}],
                "responses": {"200": {"description": "HTML.",
                                       "content": {"text/html": {"schema": {"type": "string"}}}}},
            },
        },
    }


def _description(max_k: int, max_files: int, max_bytes: int, public: bool) -> dict[str, Any]:
    anonymous = ("Anonymous requests may search and read images" if public
                 else "This site is private: every request must be authenticated")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lookalike API",
            "version": "1",
            "description": (
                "Reverse image search over this site's gallery. Authenticate with an API token made on your account "
                f"page (`Authorization: Bearer <token>`) or, from the browser, the session. {anonymous}. "
                f"{ERROR_CODES_NOTE} URLs in answers are relative to this site."),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"sessionCookie": []}, {}],
        "paths": _paths(max_k, max_files, max_bytes),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An API token from your account page."},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "sessionid",
                                  "description": "The browser session; unsafe methods also need the CSRF token "
                                                 "in `X-CSRFToken`."},
            },
        },
    }


@functools.lru_cache(maxsize=8)
def _cached(max_k: int, max_files: int, max_bytes: int, public: bool) -> dict[str, Any]:
    return _description(max_k, max_files, max_bytes, public)


def openapi_description() -> dict[str, Any]:
    """The description for the current settings (limits are settings, and the description states them)."""
    return copy.deepcopy(_cached(settings.LOOKALIKE_SEARCH_MAX_K, settings.LOOKALIKE_MAX_UPLOAD_FILES,
                                 settings.LOOKALIKE_MAX_UPLOAD_BYTES, settings.LOOKALIKE_PUBLIC_GALLERY))


def _response_schema(response: dict[str, Any]) -> dict[str, Any]:
    """The schema of a response's first media type; none for a response without a body."""
    media_types: dict[str, dict[str, Any]] = response.get("content", {})
    first: dict[str, Any] = next(iter(media_types.values()), {})
    return first.get("schema", {})


def operations(description: dict[str, Any]) -> list[dict[str, Any]]:
    """The operations of a description, flattened for the docs page."""
    found = []
    for path, item in description["paths"].items():
        shared = item.get("parameters", [])
        for method in ("get", "post", "put", "patch", "delete"):
            if method not in item:
                continue
            operation = item[method]
            bodies = []
            for content_type, media in operation.get("requestBody", {}).get("content", {}).items():
                properties = media["schema"].get("properties", {})
                required = set(media["schema"].get("required", []))
                bodies.append({"content_type": content_type, "fields": [
                    {"name": name, "type": _type_label(schema), "required": name in required,
                     "description": schema.get("description", "")}
                    for name, schema in properties.items()
                ]})
            found.append({
                "method": method.upper(), "path": path, "id": operation["operationId"],
                "summary": operation["summary"], "description": operation.get("description", ""),
                "parameters": [{"name": p["name"], "in": p["in"], "type": _type_label(p["schema"])}
                               for p in shared + operation.get("parameters", [])],
                "bodies": bodies,
                "anonymous": {} in operation.get("security", description["security"]),
                "responses": [{"status": status, "description": response["description"],
                               "schema": _type_label(_response_schema(response))}
                              for status, response in operation["responses"].items()],
            })
    return found


def _type_label(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "oneOf" in schema:
        return " or ".join(_type_label(option) for option in schema["oneOf"])
    kind = schema.get("type", "")
    if kind == "array":
        return f"list of {_type_label(schema.get('items', {}))}"
    if isinstance(kind, list):
        kind = " or ".join(kind)
    return f"{kind} ({schema['format']})" if "format" in schema else kind
