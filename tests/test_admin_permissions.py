"""Every admin action and custom admin view checks the permission that matches what it does.

Each case is tried by a staff user who holds every permission but that one: it is refused and
nothing changes. The same request then succeeds once the user is given the permission, which
shows that the request was right and the permission is what stood in the way."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Permission
from django.http import HttpResponseBase
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gallery.models import DuplicateGroup, Image, Tag
from jobs.models import Job
from tests import images
from tests.conftest import store

IMAGES = reverse("admin:gallery_image_changelist")
QUEUE = reverse("admin:gallery_imageawaitingapproval_changelist")
JOBS = reverse("admin:jobs_job_changelist")
DUPLICATES = reverse("admin:gallery_image_duplicates")


@dataclass
class World:
    image: Image
    other: Image
    group: DuplicateGroup
    job: Job

    def fresh(self) -> Image:
        return Image.objects.get(pk=self.image.pk)

    def gone(self) -> bool:
        return not Image.objects.filter(pk=self.image.pk).exists()


Request = Callable[[Client, World], HttpResponseBase]


@dataclass
class Case:
    permission: str
    request: Request
    done: Callable[[World, HttpResponseBase], bool]
    prepare: Callable[[World], object] = lambda world: None


def action(changelist: str, name: str, **extra: str) -> Request:
    return lambda client, world: client.post(changelist, {"action": name, "_selected_action": [world.image.pk],
                                                          **extra})


def post(url: str, data: dict[str, object]) -> Request:
    return lambda client, world: client.post(url, data)


def page(url: str) -> Request:
    return lambda client, world: client.get(url)


def shown(world: World, response: HttpResponseBase) -> bool:
    return response.status_code == 200


def image_where(**state: object) -> Callable[[World], object]:
    return lambda world: Image.objects.filter(pk=world.image.pk).update(**state)


def tagged(name: str) -> Callable[[World], object]:
    return lambda world: world.image.tags.add(Tag.objects.create(name=name))


def has_tag(world: World, name: str) -> bool:
    return world.image.tags.filter(name=name).exists()


def resolve(action_name: str) -> Request:
    return lambda client, world: client.post(DUPLICATES, {"group": world.group.pk, "keep": world.image.pk,
                                                          "action": action_name})


def other_gone(world: World, response: HttpResponseBase) -> bool:
    return not Image.objects.filter(pk=world.other.pk).exists()


def no_reindex_running(world: World) -> object:
    return Job.objects.filter(pk=world.job.pk).update(state=Job.State.SUCCEEDED, finished_at=timezone.now())


CASES = {
    "hide": Case("gallery.change_image", action(IMAGES, "hide"), lambda w, r: w.fresh().hidden),
    "unhide": Case("gallery.change_image", action(IMAGES, "unhide"), lambda w, r: not w.fresh().hidden,
                   image_where(hidden=True)),
    "approve": Case("gallery.change_image", action(IMAGES, "approve"), lambda w, r: not w.fresh().awaiting_approval,
                    image_where(awaiting_approval=True)),
    "add tags": Case("gallery.change_image", action(IMAGES, "add_tags", tags="cats"), lambda w, r: has_tag(w, "cats")),
    "remove tags": Case("gallery.change_image", action(IMAGES, "remove_tags", tags="dogs"),
                        lambda w, r: not has_tag(w, "dogs"), tagged("dogs")),
    "embed again": Case("gallery.change_image", action(IMAGES, "reembed"),
                        lambda w, r: w.fresh().state == Image.State.QUEUED, image_where(state=Image.State.INDEXED)),
    "retry failed": Case("gallery.change_image", action(IMAGES, "retry_failed"),
                         lambda w, r: w.fresh().state == Image.State.QUEUED, image_where(state=Image.State.FAILED)),
    "delete": Case("gallery.delete_image", action(IMAGES, "delete_with_index"), lambda w, r: w.gone()),
    "delete one image from its page": Case(
        "gallery.delete_image",
        lambda client, world: client.post(reverse("admin:gallery_image_delete", args=[world.image.pk]),
                                          {"post": "yes"}),
        lambda w, r: w.gone()),
    "edit an image": Case(
        "gallery.change_image",
        lambda client, world: client.post(reverse("admin:gallery_image_change", args=[world.image.pk]),
                                          {"original_name": "renamed.jpg", "owner": "", "tags": []}),
        lambda w, r: w.fresh().original_name == "renamed.jpg"),
    "moderation: approve": Case("gallery.change_imageawaitingapproval", action(QUEUE, "approve"),
                                lambda w, r: not w.fresh().awaiting_approval, image_where(awaiting_approval=True)),
    "moderation: hide": Case("gallery.change_imageawaitingapproval", action(QUEUE, "hide"),
                             lambda w, r: w.fresh().hidden, image_where(awaiting_approval=True)),
    "moderation: add tags": Case("gallery.change_imageawaitingapproval", action(QUEUE, "add_tags", tags="cats"),
                                 lambda w, r: has_tag(w, "cats"), image_where(awaiting_approval=True)),
    "moderation: delete": Case("gallery.delete_imageawaitingapproval", action(QUEUE, "delete_with_index"),
                               lambda w, r: w.gone(), image_where(awaiting_approval=True)),
    "near-duplicates: the page": Case("gallery.change_image", page(DUPLICATES), shown),
    "near-duplicates: hide the others": Case("gallery.change_image", resolve("hide"),
                                             lambda w, r: Image.objects.get(pk=w.other.pk).hidden),
    "near-duplicates: delete the others": Case("gallery.delete_image", resolve("delete"), other_gone),
    "near-duplicates: delete the rest of every group": Case(
        "gallery.delete_image", post(DUPLICATES, {"all": "1", "action": "delete"}), other_gone),
    "near-duplicates: scan": Case("jobs.add_job", post(DUPLICATES, {"scan": "1", "threshold": "0.9"}),
                                  lambda w, r: Job.objects.filter(kind=Job.Kind.DUPLICATE_SCAN).count() == 2),
    "jobs: cancel": Case("jobs.change_job", lambda client, world: client.post(
        JOBS, {"action": "cancel", "_selected_action": [world.job.pk]}),
        lambda w, r: Job.objects.get(pk=w.job.pk).cancel_requested),
    "jobs: the reindex page": Case("jobs.add_job", page(reverse("admin:jobs_job_reindex")), shown),
    "jobs: start a reindex": Case(
        "jobs.add_job", post(reverse("admin:jobs_job_reindex"),
                             {"backbone": "efficientnet_lite0", "m": 12, "ef_construction": 80}),
        lambda w, r: Job.objects.filter(kind=Job.Kind.REINDEX).exclude(pk=w.job.pk).exists(), no_reindex_running),
    "jobs: run upkeep": Case("jobs.add_job", post(reverse("admin:jobs_job_upkeep"), {}),
                             lambda w, r: Job.objects.filter(kind=Job.Kind.UPKEEP).exists()),
    "jobs: progress": Case("jobs.view_job", page(reverse("admin:jobs_job_progress") + "?ids=1"), shown),
    "jobs: index health": Case("jobs.view_job", page(reverse("admin:jobs_job_health")), shown),
}


@pytest.fixture
def world(db, clean_index) -> World:
    image = store(images.jpeg(1), "kept.jpg")
    other = store(images.jpeg(2), "copy.jpg")
    scan = Job.objects.create(kind=Job.Kind.DUPLICATE_SCAN, state=Job.State.SUCCEEDED, finished_at=timezone.now())
    group = DuplicateGroup.objects.create(scan=scan, exact=True, lowest_similarity=1.0,
                                          image_ids=[image.pk, other.pk])
    job = Job.objects.create(kind=Job.Kind.REINDEX, state=Job.State.RUNNING, started_at=timezone.now())
    return World(image=image, other=other, group=group, job=job)


def permission_named(permission: str) -> Permission:
    app_label, name = permission.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=name)


@pytest.mark.parametrize("name", CASES)
def test_a_staff_user_without_the_matching_permission_is_refused_and_nothing_changes(client, staff_user, world,
                                                                                   name):
    case = CASES[name]
    needed = permission_named(case.permission)
    staff_user.user_permissions.set(Permission.objects.exclude(pk=needed.pk))
    case.prepare(world)
    client.force_login(staff_user)

    refused = case.request(client, world)
    assert not case.done(world, refused), f"{name} went through without {case.permission}"

    staff_user.user_permissions.add(needed)
    allowed = case.request(client, world)
    assert case.done(world, allowed), f"{name} did not go through with {case.permission}"


def test_the_pages_offer_only_the_buttons_the_user_may_use(client, staff_user, world):
    staff_user.user_permissions.set([permission_named("gallery.change_image"), permission_named("jobs.view_job")])
    client.force_login(staff_user)
    buttons = ("delete the others", "delete the rest", "Scan the gallery", "Reindex…", "Run upkeep now")

    def offered() -> set[str]:
        pages = client.get(DUPLICATES).content.decode() + client.get(JOBS).content.decode()
        return {button for button in buttons if button in pages}

    assert offered() == set()
    staff_user.user_permissions.add(permission_named("gallery.delete_image"), permission_named("jobs.add_job"))
    assert offered() == set(buttons)
