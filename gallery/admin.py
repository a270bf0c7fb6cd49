from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from gallery import services
from gallery.models import Image


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("thumbnail_tag", "original_name", "state", "owner", "width", "height", "byte_size", "created_at")
    list_display_links = ("thumbnail_tag", "original_name")
    list_filter = ("state", "format", "created_at")
    search_fields = ("original_name", "sha256", "owner__username")
    list_select_related = ("owner",)
    list_per_page = 100
    readonly_fields = ("preview", "sha256", "format", "width", "height", "byte_size", "original", "display",
                       "thumbnail", "state", "error", "claim_token", "claimed_at", "created_at", "indexed_at")
    fields = ("preview", "original_name", "owner", *readonly_fields[1:])
    actions = ("delete_with_index",)

    @admin.display(description="")
    def thumbnail_tag(self, image: Image) -> str:
        return format_html('<img src="{}" alt="" style="width:64px;height:64px;object-fit:cover;border-radius:4px">',
                           image.thumbnail.url)

    @admin.display(description="Image")
    def preview(self, image: Image) -> str:
        return format_html('<img src="{}" alt="" style="max-width:480px;max-height:480px">', image.display.url)

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        # The stock bulk delete skips the service, which would leave vectors in the index.
        actions.pop("delete_selected", None)
        return actions

    def delete_model(self, request: HttpRequest, obj: Image) -> None:
        services.image_delete(image=obj)

    @admin.action(description="Delete selected images (and remove them from search)", permissions=["delete"])
    def delete_with_index(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        count = 0
        for image in queryset:
            services.image_delete(image=image)
            count += 1
        self.message_user(request, f"Deleted {count} images.", messages.SUCCESS)
