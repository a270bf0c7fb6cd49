from django.contrib import admin

from api.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at", "created_at")
    search_fields = ("name", "prefix", "user__username")
    list_select_related = ("user",)
    # Staff may see and revoke tokens but never make one: a secret must reach its user only.
    readonly_fields = ("user", "name", "prefix", "secret_sha256", "created_at", "last_used_at")

    def has_add_permission(self, request) -> bool:
        return False
