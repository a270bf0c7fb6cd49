from django.apps import AppConfig


class SearchConfig(AppConfig):
    name = "search"
    verbose_name = "Search"

    def ready(self) -> None:
        from jobs.models import Job
        from jobs.services import job_runner_register
        from search import (
            clusters,
            duplicates,
            outliers,
            reindex,
            tag_suggestions,
            upkeep,
            worker,  # noqa: F401  (connects what a worker that embeds does as it starts)
        )

        for kind, runner in ((Job.Kind.REINDEX, reindex.reindex_run), (Job.Kind.UPKEEP, upkeep.upkeep_run),
                             (Job.Kind.DUPLICATE_SCAN, duplicates.duplicate_scan_run),
                             (Job.Kind.TAG_SUGGESTIONS, tag_suggestions.tag_suggestions_run),
                             (Job.Kind.OUTLIER_SCORES, outliers.outlier_scores_run),
                             (Job.Kind.CLUSTERS, clusters.clusters_run)):
            job_runner_register(kind=kind, runner=runner)
