"""Tag suggestions: each image's most similar tagged images vote for their tags (``core.knn_vote``).

Only images the image's owner may see vote (``gallery.selectors.image_list_visible``), so a hidden
or another user's private image never lends its tags, and staff who review suggestions see where
each came from. While nothing such an image could learn from is tagged, the default backbone's
ImageNet classifier offers broad words instead (``core.imagenet_words``): the embedding's forward
pass classifies each image and stores its words with the vector (``classifier_words``); for an image
embedded before that was so, the classifier runs from the stored feature map (``core.imagenet_head``).

Suggestions are made for new images as soon as they are embedded (the ``search.suggest_tags``
task) and for the whole gallery by a background job (admin, or ``manage.py suggest_tags``), which
is worth running after curators have tagged more images. Rejected suggestions are kept and never
made again; a suggestion at or above ``LOOKALIKE_TAG_SUGGESTION_AUTO_APPLY`` becomes a tag at once.
"""
from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Collection
from typing import NamedTuple

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import F, QuerySet

from core.backbones import get_backbone
from core.identity import IndexIdentity
from core.index import exact_search, stacked
from core.knn_vote import VOTERS, tag_vote
from core.reader import IndexReader
from gallery import selectors as gallery_selectors
from gallery.models import Image, Tag, TagSuggestion
from jobs import services as job_services
from jobs.models import Job
from jobs.services import JobRun
from search import changelog, runtime
from search.models import Embedding, local_features_array

log = logging.getLogger(__name__)

# Suggestions kept per image.
MOST_SUGGESTIONS = 3
# Below this many voters the vote is exact over their stored vectors; above, the index finds them.
EXACT_VOTERS_MAX = 5000
_BATCH = 256


class _Voters:
    """Tagged images and their tags, per viewer: what may vote for an image of that owner."""

    def __init__(self, reader: IndexReader) -> None:
        self.reader = reader
        rows = Image.tags.through.objects.filter(image__state=Image.State.INDEXED).values_list("image_id", "tag__name")
        self.tags: dict[int, set[str]] = defaultdict(set)
        for image_id, name in rows.iterator(chunk_size=5000):
            self.tags[image_id].add(name)
        self._visible: dict[int | None, frozenset[int]] = {}
        self._matrices: dict[int | None, tuple[np.ndarray, np.ndarray]] = {}

    def visible_to(self, owner: User | None) -> frozenset[int]:
        key = owner.pk if owner is not None else None
        if not self.tags:
            return frozenset()
        if key not in self._visible:
            viewer = owner if owner is not None else AnonymousUser()
            visible = gallery_selectors.image_list_visible(user=viewer).filter(
                state=Image.State.INDEXED, id__in=list(self.tags)).values_list("id", flat=True)
            self._visible[key] = frozenset(visible)
        return self._visible[key]

    def neighbours(self, image_id: int, vector: np.ndarray, owner: User | None
                   ) -> list[tuple[float, set[str]]]:
        """(similarity, tags) of the image's nearest voters, closest first; never the image itself."""
        voters = self.visible_to(owner) - {image_id}
        if not voters:
            return []
        if len(voters) <= EXACT_VOTERS_MAX:
            ids, matrix = self._matrix(owner, voters)
            labels, scores = exact_search(vector[None, :], ids, matrix, VOTERS + 1)
            hits = [(i, s) for i, s in zip(labels[0].tolist(), scores[0].tolist(), strict=True) if i != image_id]
        else:
            [row] = self.reader.search(vector[None, :], VOTERS, visible=lambda ids: ids & voters,
                                       exclude=[[image_id]])
            hits = [(hit.image_id, hit.score) for hit in row]
        return [(score, self.tags[i]) for i, score in hits[:VOTERS]]

    def _matrix(self, owner: User | None, voters: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
        key = owner.pk if owner is not None else None
        if key not in self._matrices:
            stored = changelog.vectors_for(self.reader.identity, self.visible_to(owner))
            self._matrices[key] = stacked(stored, self.reader.identity.dim)
        return self._matrices[key]


def classifier_words(probabilities: np.ndarray) -> list[list[tuple[str, float]]]:
    """The words stored with each image's vector from its class probabilities: the best
    ``MOST_SUGGESTIONS`` whatever their score, so that the confidence setting, applied when
    suggesting, finds what the classifier would give then."""
    from core.imagenet_words import words_for

    return words_for(probabilities, min_score=0.0, most=MOST_SUGGESTIONS)


@functools.cache
def _classifier() -> Callable[[np.ndarray], np.ndarray] | None:
    """The backbone's ImageNet classifier over stored feature maps, or None when it has none."""
    from core.imagenet_head import HeadUnavailable, ImagenetHead

    try:
        head = ImagenetHead(get_backbone(runtime.index_identity().backbone))
    except HeadUnavailable as exc:
        log.info("No cold-start tag suggestions: %s", exc)
        return None
    return head.probabilities


def _cold_start(images: list[Image]) -> dict[int, list[tuple[str, float]]]:
    """Broad words from the classifier for images that nothing tagged can vote for."""
    if not images:
        return {}
    identity = runtime.index_identity()
    minimum = settings.LOOKALIKE_TAG_SUGGESTION_MIN_CONFIDENCE
    stored = dict(Embedding.objects.of(identity).filter(image_id__in=[i.pk for i in images])
                  .values_list("image_id", "classifier_words"))
    words = {image_id: [(word, score) for word, score in found if score >= minimum]
             for image_id, found in stored.items() if found}
    return words | _cold_start_from_maps([image_id for image_id in stored if image_id not in words], identity)


def _cold_start_from_maps(image_ids: list[int], identity: IndexIdentity) -> dict[int, list[tuple[str, float]]]:
    """The classifier's words for images embedded before their words were stored with the vector."""
    classify = _classifier()
    if classify is None or not image_ids:
        return {}
    from core.imagenet_words import words_for

    width = get_backbone(identity.backbone).local_width
    maps = dict(Embedding.objects.of(identity).filter(image_id__in=image_ids)
                .exclude(local_features=b"").values_list("image_id", "local_features"))
    arrays = {image_id: local_features_array(data, channels=width) for image_id, data in maps.items()}
    shapes = {array.shape for array in arrays.values()}
    if len(shapes) != 1:
        return {}
    ids = list(arrays)
    words = words_for(classify(np.stack([arrays[i] for i in ids])),
                      min_score=settings.LOOKALIKE_TAG_SUGGESTION_MIN_CONFIDENCE, most=MOST_SUGGESTIONS)
    return dict(zip(ids, words, strict=True))


class _Made(NamedTuple):
    image: Image
    suggested: list[tuple[str, float]]
    source: str


def _store(made: list[_Made], existing: dict[int, set[str]], rejected: dict[int, set[str]]) -> tuple[int, int]:
    """Replace the images' open suggestions, in a few statements for them all; returns (suggested,
    applied as tags)."""
    minimum, auto = settings.LOOKALIKE_TAG_SUGGESTION_MIN_CONFIDENCE, settings.LOOKALIKE_TAG_SUGGESTION_AUTO_APPLY
    offer: list[tuple[_Made, str, float]] = []
    apply: list[tuple[Image, str]] = []
    for one in made:
        known = existing.get(one.image.pk, set()) | rejected.get(one.image.pk, set())
        fresh = [(name, confidence) for name, confidence in one.suggested
                 if name not in known and confidence >= minimum][:MOST_SUGGESTIONS]
        for name, confidence in fresh:
            if auto is not None and confidence >= auto:
                apply.append((one.image, name))
            else:
                offer.append((one, name, confidence))
    TagSuggestion.objects.filter(image__in=[one.image for one in made], rejected=False).delete()
    tags = _tags({name for _, name in apply} | {name for _, name, _ in offer})
    Image.tags.through.objects.bulk_create([Image.tags.through(image_id=image.pk, tag_id=tags[name].pk)
                                            for image, name in apply], ignore_conflicts=True)
    TagSuggestion.objects.bulk_create([TagSuggestion(image=one.image, tag=tags[name], confidence=confidence,
                                                     source=one.source) for one, name, confidence in offer])
    return len(offer), len(apply)


def _tags(names: set[str]) -> dict[str, Tag]:
    Tag.objects.bulk_create([Tag(name=name) for name in sorted(names)], ignore_conflicts=True)
    return Tag.objects.in_bulk(list(names), field_name="name")


def tag_suggestions_make(*, image_ids: Collection[int], voters: _Voters | None = None) -> tuple[int, int]:
    """Suggest tags for these images (indexed ones; others are skipped). Returns (suggested, applied).

    Running it again replaces the open suggestions with fresh ones and keeps the rejected ones.
    """
    reader = runtime.index_reader()
    voters = voters or _Voters(reader)
    images = list(Image.objects.filter(pk__in=list(image_ids), state=Image.State.INDEXED).select_related("owner"))
    vectors = changelog.vectors_for(reader.identity, [image.pk for image in images])
    images = [image for image in images if image.pk in vectors]
    voted: dict[int, list[tuple[str, float]]] = {}
    unvoted = []
    for image in images:
        neighbours = voters.neighbours(image.pk, vectors[image.pk], image.owner)
        if neighbours:
            voted[image.pk] = tag_vote(neighbours)
        else:
            unvoted.append(image)
    cold = _cold_start(unvoted)
    with transaction.atomic():
        # One run at a time per image (the embed's own and a job's may overlap): each replaces the
        # open suggestions the one before it committed, and sees the tags and rejections as they are now.
        list(Image.objects.select_for_update().filter(pk__in=[i.pk for i in images]).order_by("pk")
             .values_list("pk", flat=True))
        existing = _names_by_image(Image.tags.through.objects.filter(image_id__in=[i.pk for i in images])
                                   .values_list("image_id", "tag__name"))
        rejected = _names_by_image(TagSuggestion.objects.filter(image__in=images, rejected=True)
                                   .values_list("image_id", "tag__name"))
        return _store([_Made(image, voted[image.pk], TagSuggestion.Source.NEIGHBOURS) if image.pk in voted
                       else _Made(image, cold.get(image.pk, []), TagSuggestion.Source.CLASSIFIER) for image in images],
                      existing, rejected)


def _names_by_image(rows: QuerySet) -> dict[int, set[str]]:
    names: dict[int, set[str]] = defaultdict(set)
    for image_id, name in rows:
        names[image_id].add(name)
    return names


# The background job over the whole gallery --------------------------------------------------


def tag_suggestions_start(*, started_by: User | AnonymousUser | None = None) -> Job:
    return job_services.job_start(kind=Job.Kind.TAG_SUGGESTIONS, started_by=started_by)


def tag_suggestions_run(run: JobRun) -> str:
    """The runner of tag suggestion jobs: every indexed image without tags, in batches; returns the summary."""
    untagged = list(Image.objects.filter(state=Image.State.INDEXED, tags__isnull=True).order_by("id")
                    .values_list("id", flat=True))
    after = int(run.job.checkpoint.get("after", 0))
    todo = [i for i in untagged if i > after]
    run.step(total=len(untagged), done=len(untagged) - len(todo), phase="voting")
    voters = _Voters(runtime.index_reader())
    suggested = applied = 0
    for start in range(0, len(todo), _BATCH):
        batch = todo[start:start + _BATCH]
        made, put = tag_suggestions_make(image_ids=batch, voters=voters)
        suggested, applied = suggested + made, applied + put
        run.step(done=len(untagged) - len(todo) + start + len(batch), checkpoint={"after": batch[-1]})
    return (f"Suggested {suggested} tags for {len(todo)} untagged images"
            + (f"; applied {applied} at once." if applied else "."))


# Curators' decisions ----------------------------------------------------------------------------


def tag_suggestions_open() -> QuerySet[TagSuggestion]:
    """Suggestions still to decide on: not rejected, and not already a tag of their image."""
    return TagSuggestion.objects.filter(rejected=False).exclude(image__tags=F("tag"))


def tag_suggestions_accept(*, suggestions: QuerySet[TagSuggestion]) -> int:
    """Make these suggestions ordinary tags of their images; returns how many."""
    with transaction.atomic():
        chosen = list(suggestions.filter(rejected=False).select_for_update().values_list("pk", "image_id", "tag_id"))
        Image.tags.through.objects.bulk_create([Image.tags.through(image_id=image_id, tag_id=tag_id)
                                                for _, image_id, tag_id in chosen], ignore_conflicts=True)
        TagSuggestion.objects.filter(pk__in=[pk for pk, _, _ in chosen]).delete()
    return len(chosen)


def tag_suggestions_reject(*, suggestions: QuerySet[TagSuggestion]) -> int:
    """Never suggest these again for their images; returns how many."""
    return suggestions.filter(rejected=False).update(rejected=True)
