"""Recommendations: "You may also like" on an image page and "More like your uploads" for a signed-in user.

Candidates are the nearest neighbours in the index among the images the viewer may see (indexed
and not hidden; ``gallery.selectors.image_list_visible``). Copies are left out, as the verdicts of
search call them: the same file (same SHA-256), or a similarity at or above the edited-copy
threshold (``search.verdicts``). The rest are picked by maximal marginal relevance
(``core.mmr``), so that the list is varied rather than one picture many times.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from django.contrib.auth.models import AnonymousUser, User

from core.mmr import CANDIDATES, RECOMMENDED, mmr
from gallery import selectors as gallery_selectors
from gallery.models import Image
from search import changelog, runtime, verdicts

# Recent uploads that "More like your uploads" starts from.
SOURCE_UPLOADS = 8


@dataclass(frozen=True)
class Recommendation:
    image: Image
    score: float  # cosine similarity to the closest source image


def _shown_to(user: User | AnonymousUser):
    return gallery_selectors.image_list_visible(user=user).filter(state=Image.State.INDEXED, hidden=False)


def _recommend(sources: list[Image], *, user: User | AnonymousUser, k: int,
               not_own: bool = False) -> list[Recommendation]:
    reader = runtime.index_reader()
    stored = changelog.vectors_for(reader.identity, [source.pk for source in sources])
    sources = [source for source in sources if source.pk in stored]
    if not sources:
        return []
    source_ids = {source.pk for source in sources}
    hashes = {source.sha256 for source in sources}
    threshold = verdicts.edited_copy_threshold(reader.identity)

    def visible(ids: set[int]) -> set[int]:
        shown = _shown_to(user).filter(id__in=ids).exclude(sha256__in=hashes)
        if not_own:
            shown = shown.exclude(owner=user)
        return set(shown.values_list("id", flat=True))

    queries = np.stack([stored[source.pk] for source in sources])
    best: dict[int, float] = {}
    for row in reader.search(queries, CANDIDATES, visible=visible, exclude=[list(source_ids)] * len(sources)):
        for hit in row:
            best[hit.image_id] = max(hit.score, best.get(hit.image_id, -1.0))
    # An image as alike as an edited copy of one source is a copy of it, not a recommendation.
    best = {i: score for i, score in best.items() if threshold is None or score < threshold}
    vectors = changelog.vectors_for(reader.identity, list(best))
    ids = [i for i in best if i in vectors]
    if not ids:
        return []
    picked = mmr(np.array([best[i] for i in ids], dtype=np.float32), np.stack([vectors[i] for i in ids]), k)
    images = Image.objects.select_related("owner").in_bulk([ids[p] for p in picked])
    return [Recommendation(images[ids[p]], best[ids[p]]) for p in picked if ids[p] in images]


def recommendations_for_image(*, image: Image, user: User | AnonymousUser,
                              k: int = RECOMMENDED) -> list[Recommendation]:
    """Images like this one that are not copies of it, varied, and that ``user`` may see."""
    if image.state != Image.State.INDEXED:
        return []
    return _recommend([image], user=user, k=k)


def recommendations_for_user(*, user: User | AnonymousUser, k: int = RECOMMENDED) -> list[Recommendation]:
    """Images like the user's latest uploads, never their own and never copies of those uploads."""
    if not user.is_authenticated:
        return []
    uploads = list(Image.objects.filter(owner=user, state=Image.State.INDEXED).order_by("-created_at", "-id")
                   [:SOURCE_UPLOADS])
    return _recommend(uploads, user=user, k=k, not_own=True)
