"""The admin made for curating the gallery: find images, act on many at once, review uploads."""
from __future__ import annotations

from collections.abc import Callable

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import F, Prefetch, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from core.knn_outliers import K
from gallery import services
from gallery.models import DuplicateGroup, Image, ImageAwaitingApproval, OutlierScore, Tag, TagSuggestion
from jobs.models import Job
from search import clusters, duplicates, outliers, tag_suggestions
from search import selectors as search_selectors
from search import services as search_services
from search.models import Embedding

DUPLICATE_GROUPS_PER_PAGE = 20
_PAST = {"hide": "hid", "delete": "deleted"}


class TagActionForm(ActionForm):
    tags = forms.CharField(required=False, label="Tags", help_text="for the tag actions, comma-separated",
                           widget=forms.TextInput(attrs={"placeholder": "cats, holiday", "size": 24}))


class StateFilter(admin.SimpleListFilter):
    """The embedding states, and "hidden" as a state of its own, as curators think of it."""

    title = "state"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [*Image.State.choices, ("hidden", "Hidden"), ("awaiting", "Awaiting approval")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        value = self.value()
        if value == "hidden":
            return queryset.filter(hidden=True)
        if value == "awaiting":
            return queryset.filter(awaiting_approval=True)
        if value in Image.State.values:
            return queryset.filter(state=value)
        return queryset


class SuggestionsFilter(admin.SimpleListFilter):
    title = "tag suggestions"
    parameter_name = "suggestions"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Has suggestions"), ("no", "Has none")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        having = tag_suggestions.tag_suggestions_open().values("image_id")
        if self.value() == "yes":
            return queryset.filter(pk__in=having)
        if self.value() == "no":
            return queryset.exclude(pk__in=having)
        return queryset


class RangeFilter(admin.SimpleListFilter):
    ranges: list[tuple[str, str, Q]] = []

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(key, label) for key, label, _ in self.ranges]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        for key, _, condition in self.ranges:
            if self.value() == key:
                return queryset.filter(condition)
        return queryset


class OutlierFilter(RangeFilter):
    title = "outlier score"
    parameter_name = "unusual"
    ranges = [
        ("99", "99 and above: the most unusual 1 %", Q(outlier_score__score__gte=99)),
        ("95", "95 to 99", Q(outlier_score__score__gte=95, outlier_score__score__lt=99)),
        ("80", "80 to 95", Q(outlier_score__score__gte=80, outlier_score__score__lt=95)),
        ("0", "below 80", Q(outlier_score__score__lt=80)),
        ("none", "not scored", Q(outlier_score__score__isnull=True)),
    ]


class SizeFilter(RangeFilter):
    title = "file size"
    parameter_name = "size"
    ranges = [
        ("small", "under 200 KB", Q(byte_size__lt=200_000)),
        ("medium", "200 KB to 2 MB", Q(byte_size__gte=200_000, byte_size__lt=2_000_000)),
        ("large", "2 MB and more", Q(byte_size__gte=2_000_000)),
    ]


class DimensionsFilter(RangeFilter):
    title = "dimensions"
    parameter_name = "pixels"
    ranges = [
        ("tiny", "longest side under 512 px", Q(width__lt=512, height__lt=512)),
        ("normal", "512 to 2047 px", (Q(width__gte=512) | Q(height__gte=512)) & Q(width__lt=2048, height__lt=2048)),
        ("big", "2048 px and more", Q(width__gte=2048) | Q(height__gte=2048)),
    ]


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("thumbnail_tag", "original_name", "status", "owner", "size", "dimensions", "created_at",
                    "tag_list", "suggested_tags", "outlier")
    list_display_links = ("thumbnail_tag", "original_name")
    list_filter = (StateFilter, SuggestionsFilter, OutlierFilter, ("owner", admin.RelatedOnlyFieldListFilter),
                   SizeFilter, DimensionsFilter, "created_at", "tags", "format")
    search_fields = ("original_name", "=tags__name", "owner__username", "=sha256")
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    list_per_page = 100
    action_form = TagActionForm
    readonly_fields = ("preview", "embedding_state", "suggestions_link", "neighbours", "outlier", "sha256", "format",
                       "width", "height", "byte_size", "original", "display", "thumbnail", "state", "hidden",
                       "awaiting_approval", "error", "attempts", "claimed_at", "created_at", "indexed_at")
    fields = ("preview", "original_name", "owner", "tags", *readonly_fields[1:])
    filter_horizontal = ("tags",)
    change_list_template = "admin/gallery/image/change_list.html"
    actions = ("hide", "unhide", "approve", "add_tags", "remove_tags", "accept_suggestions", "reject_suggestions",
               "reembed", "retry_failed", "delete_with_index")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Image]:
        pending = TagSuggestion.objects.filter(rejected=False).select_related("tag")
        # Unscored images sort as the least unusual, on every database (PostgreSQL puts nulls first
        # when descending).
        # The change list applies list_select_related only to a queryset that selects nothing yet.
        return super().get_queryset(request).select_related(*self.list_select_related, "outlier_score").annotate(
            unusualness=Coalesce(F("outlier_score__score"), Value(-1.0))).prefetch_related(
            "tags", Prefetch("tag_suggestions", queryset=pending, to_attr="pending_suggestions"))

    def get_urls(self) -> list[URLPattern]:
        urls = super().get_urls()
        if self.model is not Image:
            return urls
        view = self.admin_site.admin_view
        return [path("duplicates/", view(self.duplicates_view), name="gallery_image_duplicates"),
                path("suggest-tags/", view(self.suggest_tags_view), name="gallery_image_suggest_tags"),
                path("score-outliers/", view(self.score_outliers_view), name="gallery_image_score_outliers"),
                path("group-by-look/", view(self.group_by_look_view), name="gallery_image_group_by_look"),
                path("<int:image_id>/suggestions/", view(self.suggestions_view), name="gallery_image_suggestions"),
                *urls]

    def _start_job(self, request: HttpRequest, start: Callable[..., Job], outcome: str) -> HttpResponse:
        """Start a job over the gallery from a button of the image list, and say where its results appear."""
        if request.method != "POST" or not request.user.has_perm("jobs.add_job"):
            raise PermissionDenied
        job = start(started_by=request.user)
        self.message_user(request, f"Started {job}; {outcome}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:gallery_image_changelist"))

    def suggest_tags_view(self, request: HttpRequest) -> HttpResponse:
        """Start a job that suggests tags for every untagged image."""
        return self._start_job(request, tag_suggestions.tag_suggestions_start,
                               'the filter "has suggestions" lists what it suggests')

    def score_outliers_view(self, request: HttpRequest) -> HttpResponse:
        """Start a job that scores every indexed image as an outlier again."""
        return self._start_job(request, outliers.outlier_scores_start,
                               '"most unusual first" lists its results once it is done')

    def group_by_look_view(self, request: HttpRequest) -> HttpResponse:
        """Start a job that groups the gallery into clusters for the Browse page (or say which one runs)."""
        return self._start_job(request, clusters.clusters_start, "the Browse page shows its groups once it is done")

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):  # type: ignore[override]
        column = list(self.get_list_display(request)).index("outlier") + 1
        return super().changelist_view(request, {**(extra_context or {}), "most_unusual_order": f"-{column}"})

    def suggestions_view(self, request: HttpRequest, image_id: int) -> HttpResponse:
        """One image's suggestions: accept or reject each, and the ones rejected before."""
        image = Image.objects.filter(pk=image_id).first()
        if image is None or not self.has_view_permission(request, image):
            raise PermissionDenied
        suggestions = TagSuggestion.objects.filter(image=image).select_related("tag")
        if request.method == "POST":
            if not self.has_change_permission(request, image):
                raise PermissionDenied
            chosen = suggestions.filter(pk=request.POST.get("suggestion") or 0)
            if request.POST.get("decision") == "accept":
                count = tag_suggestions.tag_suggestions_accept(suggestions=chosen)
                self.message_user(request, f"Added {count} tag.", messages.SUCCESS)
            elif request.POST.get("decision") == "reject":
                count = tag_suggestions.tag_suggestions_reject(suggestions=chosen)
                self.message_user(request, f"Rejected {count} suggestion; it will not be suggested again.",
                                  messages.SUCCESS)
            return HttpResponseRedirect(request.get_full_path())
        open_ids = set(tag_suggestions.tag_suggestions_open().filter(image=image).values_list("pk", flat=True))
        context = {
            **self.admin_site.each_context(request), "opts": self.model._meta, "image": image,
            "title": f"Tag suggestions for #{image.pk} {image.original_name}",
            "open": [s for s in suggestions if s.pk in open_ids], "rejected": [s for s in suggestions if s.rejected],
            "tags": list(image.tags.all()), "can_change": self.has_change_permission(request, image),
        }
        return TemplateResponse(request, "admin/gallery/image/suggestions.html", context)

    def duplicates_view(self, request: HttpRequest) -> HttpResponse:
        """Review the groups of alike images that the last duplicate scan found."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            self._duplicates_post(request)
            return HttpResponseRedirect(request.get_full_path())
        scan, groups = duplicates.duplicate_groups_latest()
        page = Paginator(groups, DUPLICATE_GROUPS_PER_PAGE).get_page(request.GET.get("page"))
        images = Image.objects.in_bulk([i for group in page for i in group.image_ids])
        shown = [(group, [images[i] for i in group.image_ids if i in images]) for group in page]
        context = {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": "Near-duplicates",
            "scan": scan, "page": page, "groups": [(g, members) for g, members in shown if len(members) > 1],
            "running": Job.objects.filter(kind=Job.Kind.DUPLICATE_SCAN, state__in=Job.ACTIVE_STATES).first(),
            "threshold": request.GET.get("threshold", "0.95"),
        }
        return TemplateResponse(request, "admin/gallery/image/duplicates.html", context)

    def _duplicates_post(self, request: HttpRequest) -> None:
        try:
            if "scan" in request.POST:
                if not request.user.has_perm("jobs.add_job"):
                    raise PermissionDenied
                job = duplicates.duplicate_scan_start(threshold=float(request.POST.get("threshold", "")),
                                                      started_by=request.user)
                self.message_user(request, f"Started {job}; this page lists its groups once it is done.")
                return
            action = request.POST.get("action", "")
            if action not in _PAST:
                raise ValueError(f"unknown action {action!r}")
            if action == "delete" and not self.has_delete_permission(request):
                raise PermissionDenied
            if "all" in request.POST:
                _, latest = duplicates.duplicate_groups_latest()
                groups = list(latest)
                changed = sum(services.duplicate_group_resolve(group=g, keep_id=g.image_ids[0], action=action)
                              for g in groups)
                self.message_user(request, f"Kept the proposed copy of {len(groups)} groups; "
                                           f"{_PAST[action]} {changed} others.", messages.SUCCESS)
                return
            group = DuplicateGroup.objects.get(pk=int(request.POST.get("group", "")))
            changed = services.duplicate_group_resolve(group=group, keep_id=int(request.POST.get("keep", "")),
                                                         action=action)
            self.message_user(request, f"Kept image #{request.POST['keep']}; {_PAST[action]} {changed} others.",
                              messages.SUCCESS)
        except (ValueError, DuplicateGroup.DoesNotExist, duplicates.ScanRefused) as exc:
            self.message_user(request, f"Nothing was changed: {exc or 'choose a group and an image'}",
                              messages.ERROR)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # images come in through the upload page or `import_images`

    @admin.display(description="")
    def thumbnail_tag(self, image: Image) -> str:
        return format_html('<img src="{}" alt="" class="admin-thumb">', image.thumbnail_url)

    @admin.display(description="State", ordering="state")
    def status(self, image: Image) -> str:
        extra = [label for flag, label in ((image.hidden, "hidden"), (image.awaiting_approval, "awaiting approval"))
                 if flag]
        return ", ".join([image.get_state_display(), *extra])

    @admin.display(description="Size", ordering="byte_size")
    def size(self, image: Image) -> str:
        return filesizeformat(image.byte_size)

    @admin.display(description="Dimensions", ordering="width")
    def dimensions(self, image: Image) -> str:
        return f"{image.width} × {image.height}"

    @admin.display(description="Tags")
    def tag_list(self, image: Image) -> str:
        return ", ".join(tag.name for tag in image.tags.all())

    def _open_suggestions(self, image: Image) -> list[TagSuggestion]:
        tags = {tag.pk for tag in image.tags.all()}
        return [s for s in getattr(image, "pending_suggestions", []) if s.tag_id not in tags]

    @admin.display(description="Suggested tags")
    def suggested_tags(self, image: Image) -> str:
        return ", ".join(f"{s.tag.name} ({s.confidence:.0%})" for s in self._open_suggestions(image))

    @admin.display(description="Outlier score", ordering="unusualness")
    def outlier(self, image: Image) -> str:
        try:
            scored = image.outlier_score
        except OutlierScore.DoesNotExist:
            return ""
        if scored.score is None:
            return ""
        return format_html('<span title="distance to its {}th nearest image: {}">{}</span>', K,
                           f"{scored.distance:.3f}", f"{scored.score:.1f}")

    @admin.display(description="Tag suggestions")
    def suggestions_link(self, image: Image) -> str:
        count = tag_suggestions.tag_suggestions_open().filter(image=image).count()
        return format_html('<a href="{}">{} open suggestions: accept or reject them</a>',
                           reverse("admin:gallery_image_suggestions", args=[image.pk]), count)

    @admin.display(description="Image")
    def preview(self, image: Image) -> str:
        return format_html('<img src="{}" alt="" class="admin-preview">', image.display_url)

    @admin.display(description="Embedding")
    def embedding_state(self, image: Image) -> str:
        vectors = ", ".join(f"{b} ({v}, {d} dimensions)" for b, v, d in
                            Embedding.objects.filter(image=image).values_list("backbone", "backbone_version", "dim"))
        attempts = f"; {image.attempts} attempts" if image.attempts else ""
        return f"{image.get_state_display()}{attempts}; vectors: {vectors or 'none'}"

    @admin.display(description="Nearest neighbours")
    def neighbours(self, image: Image) -> str:
        try:
            similar = search_selectors.similar_to_image(image, k=12)
        except search_selectors.SearchUnavailable as exc:
            return str(exc)
        if not similar:
            return "No other image to compare with."
        return format_html_join(
            " ", '<a href="{}" title="{}" class="admin-neighbour"><img src="{}" alt=""><br>#{} · {}</a>',
            ((reverse("admin:gallery_image_change", args=[s.image.pk]), s.image.original_name, s.image.thumbnail_url,
              s.image.pk, f"{s.score:.3f}") for s in similar))

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        # The stock bulk delete skips the service, which would leave vectors in the index.
        actions.pop("delete_selected", None)
        return actions

    def delete_model(self, request: HttpRequest, obj: Image) -> None:
        services.image_delete(image=obj)

    def _ids(self, queryset: QuerySet[Image]) -> list[int]:
        return list(queryset.values_list("id", flat=True))

    @admin.action(description="Hide from search and the gallery", permissions=["change"])
    def hide(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        count = services.images_set_hidden(image_ids=self._ids(queryset), hidden=True)
        self.message_user(request, f"Hid {count} images.", messages.SUCCESS)

    @admin.action(description="Show again in search and the gallery", permissions=["change"])
    def unhide(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        count = services.images_set_hidden(image_ids=self._ids(queryset), hidden=False)
        self.message_user(request, f"Unhid {count} images.", messages.SUCCESS)

    @admin.action(description="Approve (moderation)", permissions=["change"])
    def approve(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        count = services.images_approve(image_ids=self._ids(queryset))
        self.message_user(request, f"Approved {count} images.", messages.SUCCESS)

    def _tag_names(self, request: HttpRequest) -> list[str] | None:
        try:
            return services.parse_tag_names(request.POST.get("tags", ""))
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None

    @admin.action(description="Add the tags typed on the left", permissions=["change"])
    def add_tags(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        if (names := self._tag_names(request)) is not None:
            services.images_add_tags(image_ids=self._ids(queryset), names=names)
            self.message_user(request, f"Tagged {queryset.count()} images with {', '.join(names)}.", messages.SUCCESS)

    @admin.action(description="Remove the tags typed on the left", permissions=["change"])
    def remove_tags(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        if (names := self._tag_names(request)) is not None:
            count = services.images_remove_tags(image_ids=self._ids(queryset), names=names)
            self.message_user(request, f"Removed {count} tags.", messages.SUCCESS)

    @admin.action(description="Accept their suggested tags", permissions=["change"])
    def accept_suggestions(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        open_ones = tag_suggestions.tag_suggestions_open().filter(image_id__in=self._ids(queryset))
        count = tag_suggestions.tag_suggestions_accept(suggestions=open_ones)
        self.message_user(request, f"Added {count} suggested tags.", messages.SUCCESS)

    @admin.action(description="Reject their suggested tags", permissions=["change"])
    def reject_suggestions(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        open_ones = tag_suggestions.tag_suggestions_open().filter(image_id__in=self._ids(queryset))
        count = tag_suggestions.tag_suggestions_reject(suggestions=open_ones)
        self.message_user(request, f"Rejected {count} suggested tags; they will not be suggested again.",
                          messages.SUCCESS)

    @admin.action(description="Embed again", permissions=["change"])
    def reembed(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        count = services.images_reembed(image_ids=self._ids(queryset))
        self.message_user(request, f"Queued {count} images to be embedded again.", messages.SUCCESS)

    @admin.action(description="Retry failed images", permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        count = search_services.images_retry_failed(image_ids=self._ids(queryset))
        self.message_user(request, f"Queued {count} failed images again.", messages.SUCCESS)

    @admin.action(description="Delete (and remove from search at once)", permissions=["delete"])
    def delete_with_index(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        count = services.images_delete(image_ids=self._ids(queryset))
        self.message_user(request, f"Deleted {count} images.", messages.SUCCESS)


@admin.register(ImageAwaitingApproval)
class ModerationQueueAdmin(ImageAdmin):
    """The uploads that wait for a staff member, oldest first (LOOKALIKE_MODERATION)."""

    ordering = ("created_at", "id")
    # django-stubs types these by ImageAdmin's values; the queue's are fewer.
    list_filter = (("owner", admin.RelatedOnlyFieldListFilter), "created_at")  # type: ignore[assignment]
    date_hierarchy = None  # type: ignore[assignment]
    actions = ("approve", "hide", "add_tags", "delete_with_index")  # type: ignore[assignment]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Image]:
        return super().get_queryset(request).filter(awaiting_approval=True)

    def group_by_look_view(self, request: HttpRequest) -> HttpResponse:
        """Start a job that groups the gallery into clusters for the Browse page (or say which one runs)."""
        return self._start_job(request, clusters.clusters_start, "the Browse page shows its groups once it is done")

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):  # type: ignore[override]
        state = "on" if settings.LOOKALIKE_MODERATION else "off (LOOKALIKE_MODERATION=false)"
        held = settings.LOOKALIKE_MODERATION_OUTLIER_SCORE
        unusual = f"; uploads scored {held:g} or more as outliers are held" if held is not None else ""
        title = f"Uploads awaiting approval — moderation is {state}{unusual}"
        return super().changelist_view(request, {**(extra_context or {}), "title": title})


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ("name",)
