"""The index in the jobs admin: starting a reindex or an upkeep run, and the index health page,
as buttons and pages of the background jobs' list."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from core.backbones import BACKBONES
from jobs.admin import JobAdmin
from jobs.models import Job
from search import generations
from search.health import index_health
from search.reindex import ReindexRefused, reindex_start
from search.upkeep import upkeep_now


class ReindexForm(forms.Form):
    backbone = forms.ChoiceField(choices=[(name, name) for name in sorted(BACKBONES)])
    m = forms.IntegerField(min_value=2, label="M", help_text="HNSW graph degree")
    ef_construction = forms.IntegerField(min_value=1, label="ef_construction", help_text="HNSW build-time width")


class IndexJobAdmin(JobAdmin):
    change_list_template = "admin/search/job_change_list.html"

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("reindex/", view(self.reindex_view), name="jobs_job_reindex"),
            path("upkeep/", view(require_POST(self.upkeep_view)), name="jobs_job_upkeep"),
            path("index-health/", view(self.health_view), name="jobs_job_health"),
            *super().get_urls(),
        ]

    def reindex_view(self, request: HttpRequest) -> HttpResponse:
        self._require(request, "jobs.add_job")
        current = generations.active()
        form = ReindexForm(request.POST or None, initial={"backbone": current.backbone, "m": current.m,
                                                          "ef_construction": current.ef_construction})
        if request.method == "POST" and form.is_valid():
            try:
                job = reindex_start(started_by=request.user, **form.cleaned_data)
            except ReindexRefused as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, f"Started {job}; the current index answers searches until it is done.",
                                  messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:jobs_job_changelist"))
        context = {**self.admin_site.each_context(request), "title": "Reindex", "form": form, "current": current,
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/search/reindex.html", context)

    def upkeep_view(self, request: HttpRequest) -> HttpResponse:
        self._require(request, "jobs.add_job")
        job = upkeep_now()
        level = messages.SUCCESS if job.state == Job.State.SUCCEEDED else messages.ERROR
        self.message_user(request, f"{job}: {job.summary or job.last_error}", level)
        return HttpResponseRedirect(reverse("admin:jobs_job_changelist"))

    def health_view(self, request: HttpRequest) -> HttpResponse:
        self._require(request, "jobs.view_job")
        try:
            sample = max(0, min(int(request.GET.get("sample", 100)), 10_000))
        except ValueError:
            sample = 100
        context = {**self.admin_site.each_context(request), "title": "Index health", "opts": self.model._meta,
                   "health": index_health(sample=sample), "sample": sample}
        return render(request, "admin/search/index_health.html", context)


admin.site.unregister(Job)
admin.site.register(Job, IndexJobAdmin)
