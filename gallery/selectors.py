"""Reads of the gallery: which images a visitor may see."""
from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from gallery.models import Image


def image_list_visible(*, user: AbstractBaseUser | AnonymousUser) -> QuerySet[Image]:
    """Indexed, unhidden images for everyone; a signed-in user also sees their own uploads in progress,
    failed or hidden, and staff see every image."""
    images = Image.objects.select_related("owner")
    if user.is_authenticated and user.is_staff:
        return images
    if user.is_authenticated:
        return images.filter(Q(state=Image.State.INDEXED, hidden=False) | Q(owner=user))
    return images.filter(state=Image.State.INDEXED, hidden=False)


def image_can_manage(*, image: Image, user: AbstractBaseUser | AnonymousUser) -> bool:
    return user.is_authenticated and (user.is_staff or image.owner_id == user.pk)
