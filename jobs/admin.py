"""Background jobs in the admin: progress bars that move while you watch, and cancelling. An app
whose jobs an operator starts from this page adds its buttons by registering a subclass (the
search app: ``search/admin.py``)."""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timeuntil

from jobs import services
from jobs.models import Job


def eta_text(job: Job) -> str:
    eta = job.eta
    return f"about {timeuntil(timezone.now() + eta)} left" if eta is not None else ""


def progress_json(job: Job) -> dict[str, object]:
    return {"id": job.pk, "state": job.state, "state_label": job.get_state_display(), "active": job.is_active,
            "percent": job.percent, "done": job.done, "total": job.total, "failed": job.failed, "phase": job.phase,
            "eta": eta_text(job), "last_error": job.last_error}


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("__str__", "state", "progress", "phase", "failed", "started_by", "started_at", "finished_at",
                    "eta", "outcome")
    list_filter = ("kind", "state")
    list_select_related = ("started_by",)
    actions = ("cancel",)
    readonly_fields = ("kind", "state", "progress", "phase", "total", "done", "failed", "eta", "started_by",
                       "created_at", "started_at", "finished_at", "summary", "last_error", "params", "checkpoint",
                       "cancel_requested", "heartbeat_at")
    fields = readonly_fields
    change_list_template = "admin/jobs/job/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    @admin.display(description="Progress")
    def progress(self, job: Job) -> str:
        return format_html(
            '<span class="job-progress" data-job="{}" data-active="{}"><progress max="100" value="{}" '
            'class="job-bar"></progress> <span class="job-count">{} / {}</span></span>',
            job.pk, "1" if job.is_active else "", job.percent, job.done, job.total)

    @admin.display(description="ETA")
    def eta(self, job: Job) -> str:
        return format_html('<span class="job-eta" data-job="{}">{}</span>', job.pk, eta_text(job))

    @admin.display(description="Outcome")
    def outcome(self, job: Job) -> str:
        return (job.last_error or job.summary)[:300]

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        # Cancelling is the one change a job admits ("change job"); its form stays read-only for all.
        return request.user.has_perm("jobs.change_job")

    @admin.action(description="Cancel the selected jobs", permissions=["cancel"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        count = sum(services.job_cancel(job=job) for job in queryset)
        self.message_user(request, f"Asked {count} jobs to stop; a running job stops after its current batch.",
                          messages.SUCCESS)

    def get_actions(self, request: HttpRequest) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("progress/", view(self.progress_view), name="jobs_job_progress"),
            *super().get_urls(),
        ]

    def _require(self, request: HttpRequest, permission: str) -> None:
        if not request.user.has_perm(permission):
            raise PermissionDenied

    def progress_view(self, request: HttpRequest) -> JsonResponse:
        """What the job list polls to move its progress bars."""
        self._require(request, "jobs.view_job")
        try:
            ids = [int(i) for i in request.GET.get("ids", "").split(",") if i]
        except ValueError:
            return JsonResponse({"error": "ids must be a comma-separated list of job numbers"}, status=400)
        return JsonResponse({"jobs": [progress_json(job) for job in Job.objects.filter(pk__in=ids[:200])]})
