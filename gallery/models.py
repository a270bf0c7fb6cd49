from __future__ import annotations

from django.conf import settings
from django.db import models
from django.templatetags.static import static

PENDING_PICTURE = "img/pending.svg"

TAG_NAME_MAX_LENGTH = 64


class Tag(models.Model):
    # Stored lower-case, so that "Cat" and "cat" are one tag.
    name = models.CharField(max_length=TAG_NAME_MAX_LENGTH, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Image(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        EMBEDDING = "embedding", "Embedding"
        INDEXED = "indexed", "Indexed"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="images")
    # The file name as uploaded: data to show (escaped), never a path on disk.
    original_name = models.CharField(max_length=255)
    # One copy of a file per owner: a second uploader who may not see the first copy gets their own.
    sha256 = models.CharField(max_length=64, db_index=True)
    format = models.CharField(max_length=8)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    byte_size = models.PositiveBigIntegerField()
    # Stored under generated names. The original is kept for its owner; the display copy and the
    # thumbnail are re-encoded without metadata and are what the site serves. The embedding
    # worker makes the thumbnail; the display copy is made after it (blank until then).
    original = models.FileField(max_length=255)
    # Indexed: a request for a served copy finds its image by the copy's name.
    display = models.FileField(max_length=255, db_index=True, blank=True)
    thumbnail = models.FileField(max_length=255, db_index=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    # Hidden images stay indexed but never appear in search or the public gallery.
    hidden = models.BooleanField(default=False)
    # With moderation on, an upload stays hidden until a staff member approves it.
    awaiting_approval = models.BooleanField(default=False)
    tags = models.ManyToManyField(Tag, blank=True, related_name="images")
    error = models.TextField(blank=True)
    # For a file found damaged only when the worker decoded it: the code an upload refusal gives.
    error_code = models.CharField(max_length=32, blank=True)
    # Which embedding run holds the image while it is in EMBEDDING, and since when.
    claim_token = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Embedding attempts so far; a failed attempt is retried after ``retry_after``, up to a limit.
    attempts = models.PositiveSmallIntegerField(default=0)
    retry_after = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # For a file stored by ``import_images``: its modification time, so that a second run over
    # the same folder knows it by name, size and time without reading it again.
    source_mtime_ns = models.BigIntegerField(null=True, blank=True)
    indexed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "id"]),
            models.Index(fields=["-created_at", "-id"]),
            models.Index(fields=["awaiting_approval", "-created_at"]),
            models.Index(fields=["original_name", "byte_size"]),
            # A run looks up what it holds by its token several times a batch: without this, each
            # look reads every image.
            models.Index(fields=["claim_token"], name="gallery_image_claim_token"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["owner", "sha256"], name="gallery_image_one_copy_per_owner"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.original_name}"

    @property
    def thumbnail_url(self) -> str:
        """The thumbnail, or a placeholder until the worker has made it."""
        return self.thumbnail.url if self.thumbnail else static(PENDING_PICTURE)

    @property
    def display_url(self) -> str:
        """The display copy, or the thumbnail until it is made."""
        return self.display.url if self.display else self.thumbnail_url


class ImageAwaitingApproval(Image):
    """The moderation queue in the admin: uploads that stay hidden until a staff member approves them."""

    class Meta:
        proxy = True
        verbose_name = "upload awaiting approval"
        verbose_name_plural = "moderation queue"


class DuplicateGroup(models.Model):
    """Images that a duplicate scan found alike above its threshold, for a curator to review; or, without
    a scan, an upload and the image it was found to be an edited copy of when it was embedded."""

    scan = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.CASCADE,
                             related_name="duplicate_groups")
    # Every pair in the group is the same picture (similarity 1 to within rounding).
    exact = models.BooleanField()
    lowest_similarity = models.FloatField()
    # In the order shown; the first is the proposed copy to keep (largest, then earliest).
    image_ids = models.JSONField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-exact", "-lowest_similarity", "id"]

    def __str__(self) -> str:
        return f"{'Exact copies' if self.exact else 'Near-duplicates'}: images {', '.join(map(str, self.image_ids))}"


class TagSuggestion(models.Model):
    """A tag proposed for an image, by the vote of its most similar tagged images or, while nothing it
    could learn from is tagged, by the backbone's ImageNet classifier. Accepting one makes it an
    ordinary tag (and removes the suggestion); a rejected one is kept so that it is never proposed again."""

    class Source(models.TextChoices):
        NEIGHBOURS = "neighbours", "similar tagged images"
        CLASSIFIER = "classifier", "image classifier"

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="tag_suggestions")
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE, related_name="suggestions")
    confidence = models.FloatField()
    source = models.CharField(max_length=16, choices=Source.choices)
    rejected = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["image", "-confidence", "tag__name"]
        constraints = [models.UniqueConstraint(fields=["image", "tag"], name="one_suggestion_per_image_tag")]
        indexes = [models.Index(fields=["rejected", "image"])]

    def __str__(self) -> str:
        return f"{self.tag.name} for image #{self.image_id} ({self.confidence:.0%})"


class CopyNotice(models.Model):
    """An upload that its embedding found as alike as an edited copy (search's verdict) of an image
    already in the gallery. The uploader is told only if they may see that image."""

    image = models.OneToOneField(Image, on_delete=models.CASCADE, related_name="copy_notice")
    original = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="noticed_copies")
    similarity = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"#{self.image_id} looks like an edited copy of #{self.original_id}"


class OutlierScore(models.Model):
    """How unusual an image is among the gallery's vectors (``core.knn_outliers``), for staff only:
    the distance to its K-th nearest other image, and that distance's percentile in the gallery."""

    image = models.OneToOneField(Image, on_delete=models.CASCADE, primary_key=True, related_name="outlier_score")
    distance = models.FloatField()
    # 0 to 100; null from when the job has measured the distance until it has ranked the gallery.
    score = models.FloatField(null=True, blank=True)
    computed_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["distance"]), models.Index(fields=["score"])]

    def __str__(self) -> str:
        return f"#{self.image_id} is more unusual than {self.score or 0:.1f} % of the gallery"


class Clustering(models.Model):
    """One run of the clustering job (``search.clusters``): the gallery grouped by look, for the
    "Browse" page. The latest completed one is shown; a new one replaces it whole once complete."""

    job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="clusterings")
    # The vectors' backbone and version: new uploads join its clusters only while the index uses them.
    backbone = models.CharField(max_length=64)
    backbone_version = models.CharField(max_length=128)
    # The mean of the vectors clustered (float32), which every vector is centred on (core.kmeans).
    mean = models.BinaryField(default=b"")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when it was put in service.
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["-completed_at"])]

    def __str__(self) -> str:
        return f"clustering #{self.pk}"


class Cluster(models.Model):
    """A group of alike images: its centroid (the mean direction of its members' centred vectors, float32) and
    how many images the job put in it (counts shown to people are of what each may see)."""

    clustering = models.ForeignKey(Clustering, on_delete=models.CASCADE, related_name="clusters")
    # Shown as "Group N"; 1 is the largest.
    number = models.PositiveIntegerField()
    centroid = models.BinaryField()
    size = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["clustering", "number"]
        constraints = [models.UniqueConstraint(fields=["clustering", "number"], name="one_cluster_per_number")]

    def __str__(self) -> str:
        return f"group {self.number} of {self.clustering}"


class ClusterMember(models.Model):
    """An image in a cluster, with its similarity to the centroid (the most typical first)."""

    clustering = models.ForeignKey(Clustering, on_delete=models.CASCADE, related_name="members")
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="members")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="cluster_memberships")
    similarity = models.FloatField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["clustering", "image"], name="one_cluster_per_image")]
        indexes = [models.Index(fields=["cluster", "-similarity"])]

    def __str__(self) -> str:
        return f"#{self.image_id} in {self.cluster}"
