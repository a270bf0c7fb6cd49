"""The index in the jobs admin: a reindex and an upkeep run started there, and the index health page."""
from django.urls import reverse

from jobs.models import Job
from search import index_writer
from tests import images
from tests.conftest import store_indexed


class TestIndexJobAdmin:
    def test_a_reindex_is_started_from_the_admin(self, admin_client, clean_index):
        page = admin_client.get(reverse("admin:jobs_job_reindex"))
        assert page.status_code == 200 and "efficientnet_lite0" in page.content.decode()
        reply = admin_client.post(reverse("admin:jobs_job_reindex"),
                                  {"backbone": "efficientnet_lite0", "m": 12, "ef_construction": 80})
        assert reply.status_code == 302
        job = Job.objects.get(kind=Job.Kind.REINDEX)
        assert job.params["m"] == 12 and job.started_by.username == "admin"
        again = admin_client.post(reverse("admin:jobs_job_reindex"),
                                  {"backbone": "efficientnet_lite0", "m": 12, "ef_construction": 80})
        assert "already queued; cancel it first" in again.content.decode()

    def test_upkeep_runs_from_the_admin_and_is_recorded(self, admin_client, clean_index):
        store_indexed(images.jpeg(1))
        reply = admin_client.post(reverse("admin:jobs_job_upkeep"), follow=True)
        assert "stuck images queued again" in reply.content.decode()
        assert Job.objects.get(kind=Job.Kind.UPKEEP).state == Job.State.SUCCEEDED

    def test_the_health_page_is_for_staff_only(self, client, db, clean_index):
        assert client.get(reverse("admin:jobs_job_health")).status_code == 302

    def test_staff_without_the_job_permissions_can_neither_look_nor_start(self, client, staff_user, clean_index):
        client.force_login(staff_user)
        for name in ("admin:jobs_job_health", "admin:jobs_job_reindex"):
            assert client.get(reverse(name)).status_code == 403, name
        assert client.post(reverse("admin:jobs_job_upkeep")).status_code == 403
        assert not Job.objects.exists()

    def test_the_health_page_shows_the_index(self, admin_client, clean_index):
        for i in range(3):
            store_indexed(images.jpeg(i), f"{i}.jpg")
        index_writer.index_sync()
        page = admin_client.get(reverse("admin:jobs_job_health")).content.decode()
        for text in ("Vectors in the index", "efficientnet_lite0", "M=16, ef_construction=200, ef_search=256",
                     "top-1 is itself for 100.0%, recall@10 1.000 against exact search (3 sampled)"):
            assert text in page
