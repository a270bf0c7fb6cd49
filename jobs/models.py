from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class Job(models.Model):
    """Long work done in the background (a reindex, an upkeep run...), with its progress.

    The worker running a job holds it under ``claim_token`` and touches ``heartbeat_at`` after
    each batch; a job whose heartbeat stops was lost with its worker and may be resumed from
    ``checkpoint``.
    """

    class Kind(models.TextChoices):
        REINDEX = "reindex", "Reindex"
        UPKEEP = "upkeep", "Upkeep"
        DUPLICATE_SCAN = "duplicate_scan", "Duplicate scan"
        TAG_SUGGESTIONS = "tag_suggestions", "Tag suggestions"
        OUTLIER_SCORES = "outlier_scores", "Outlier scores"
        CLUSTERS = "clusters", "Clusters"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)

    kind = models.CharField(max_length=32, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="jobs")
    params = models.JSONField(default=dict, blank=True)
    phase = models.CharField(max_length=64, blank=True)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # What a resumed run needs to go on where the last one stopped.
    checkpoint = models.JSONField(default=dict, blank=True)
    summary = models.TextField(blank=True)
    last_error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    claim_token = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["kind", "state"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def percent(self) -> int:
        if self.state == self.State.SUCCEEDED:
            return 100
        return min(100, int(100 * self.done / self.total)) if self.total else 0

    @property
    def eta(self) -> timedelta | None:
        """Time left at the pace so far; None before there is a pace to go by."""
        if self.state != self.State.RUNNING or not self.started_at or not self.done or self.done >= self.total:
            return None
        elapsed = timezone.now() - self.started_at
        return elapsed * ((self.total - self.done) / self.done)
