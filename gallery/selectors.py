"""Reads of the gallery: which images a visitor may see."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Q, QuerySet

from gallery.models import Image


def image_list_visible(*, user: User | AnonymousUser) -> QuerySet[Image]:
    """Indexed, unhidden images for everyone; a signed-in user also sees their own uploads in progress,
    failed or hidden, and staff see every image."""
    images = Image.objects.select_related("owner")
    if user.is_authenticated and user.is_staff:
        return images
    if user.is_authenticated:
        return images.filter(Q(state=Image.State.INDEXED, hidden=False) | Q(owner=user))
    return images.filter(state=Image.State.INDEXED, hidden=False)


def images_tagged_with_word(*, word: str) -> QuerySet[Image]:
    """Images with a tag that is this word or has it as one of its words ("cat" finds "cat" and
    "big cat"); a plural finds the singular too ("cats" finds "cat"). ``word`` is lower-case."""
    forms = {word, word[:-1]} if len(word) > 3 and word.endswith("s") else {word}
    condition = Q()
    for form in forms:
        condition |= (Q(tags__name=form) | Q(tags__name__startswith=f"{form} ") | Q(tags__name__endswith=f" {form}")
                      | Q(tags__name__contains=f" {form} "))
    return Image.objects.filter(condition)


def image_can_manage(*, image: Image, user: User | AnonymousUser) -> bool:
    return user.is_authenticated and (user.is_staff or image.owner_id == user.pk)


def image_visible_to_everyone(*, image: Image) -> bool:
    """Whether anyone at all may see the image, signed in or not: what a shared cache may keep."""
    return (settings.LOOKALIKE_PUBLIC_GALLERY
            and image_list_visible(user=AnonymousUser()).filter(pk=image.pk).exists())
