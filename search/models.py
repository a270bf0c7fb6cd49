from __future__ import annotations

import numpy as np
from django.db import models
from django.db.models import Q

from core.identity import IndexIdentity
from gallery.models import Image


class EmbeddingQuerySet(models.QuerySet["Embedding"]):
    def of(self, identity: IndexIdentity) -> EmbeddingQuerySet:
        return self.filter(backbone=identity.backbone, backbone_version=identity.backbone_version)

    def other_than(self, identity: IndexIdentity) -> EmbeddingQuerySet:
        # Written as ranges rather than a negation so that the (backbone, backbone_version)
        # index answers it without reading every row.
        b, v = identity.backbone, identity.backbone_version
        return self.filter(Q(backbone__lt=b) | Q(backbone__gt=b) | Q(backbone=b, backbone_version__lt=v)
                           | Q(backbone=b, backbone_version__gt=v))


class Embedding(models.Model):
    """An image's descriptor: the truth from which every index is derived."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    backbone = models.CharField(max_length=64)
    backbone_version = models.CharField(max_length=128)
    dim = models.PositiveIntegerField()
    vector = models.BinaryField()
    # A feature map of the image (Backbone.local_depth says which), positions x channels in
    # float16, for re-ranking the best candidates of a search (core.rerank).
    local_features = models.BinaryField(default=b"")
    # The backbone's ImageNet classifier's best words for the image, [[word, score], ...] best first
    # (search.tag_suggestions.classifier_words); empty for a backbone without one.
    classifier_words = models.JSONField(default=list, db_default=[], blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = EmbeddingQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["backbone", "backbone_version"])]
        constraints = [
            models.UniqueConstraint(fields=["image", "backbone", "backbone_version"], name="one_vector_per_model"),
        ]

    def __str__(self) -> str:
        return f"{self.backbone} vector of image #{self.image_id}"

    def as_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.vector), dtype=np.float32)


def local_features_array(data: bytes | memoryview, *, channels: int) -> np.ndarray:
    """A stored feature map as positions x channels."""
    return np.frombuffer(bytes(data), dtype=np.float16).reshape(-1, channels)


class IndexChange(models.Model):
    """The change log that index writers and readers replay, in ``seq`` order.

    Rows are appended under a lock held until commit (see ``search.changelog``), so sequence
    order is commit order and a reader that has seen ``seq`` has seen everything before it.
    """

    class Kind(models.TextChoices):
        UPSERT = "upsert"
        REMOVE = "remove"

    seq = models.BigAutoField(primary_key=True)
    image_id = models.BigIntegerField()
    kind = models.CharField(max_length=8, choices=Kind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.seq}: {self.kind} {self.image_id}"


class ActiveGeneration(models.Model):
    """The index generation that serves searches (see ``search.generations``): at most one row."""

    ONLY_ID = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=ONLY_ID)
    name = models.CharField(max_length=128)
    backbone = models.CharField(max_length=64)
    m = models.PositiveIntegerField()
    ef_construction = models.PositiveIntegerField()
    # The identity the generation replaced, whose vectors a finished reindex may not have purged yet.
    replaced_backbone = models.CharField(max_length=64, blank=True)
    replaced_version = models.CharField(max_length=128, blank=True)
    activated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="one_active_generation")]

    def __str__(self) -> str:
        return f"index generation {self.name}"
