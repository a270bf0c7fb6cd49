"""What a search result most likely is: the same file, an edited copy of the query, or only similar.

"Same file" is certain: the content hashes match. "Edited copy" means the similarity is above a
threshold calibrated for each descriptor with ``bench/calibrate_verdicts.py`` on the benchmark
gallery: the gallery's images are edited the way copies are edited in the wild (crops, rotations,
colour changes, text, re-compression), and the threshold is the similarity that only 1% of the
best unrelated matches reach. The script prints the share of true originals above it.
"""
from __future__ import annotations

from django.conf import settings

from core.identity import IndexIdentity

SAME_FILE = "same_file"
EDITED_COPY = "edited_copy"
SIMILAR = "similar"

# descriptor (backbone, version) -> similarity threshold, from bench/calibrate_verdicts.py
CALIBRATED_THRESHOLDS: dict[tuple[str, str], float] = {
    # 1,800 queries (seeds 1-3), each searched with its views (core.query_views): 13.5% of
    # true originals reach it, 1.0% of best unrelated matches do. Over the hard edits as well
    # (3,600 queries, bench/calibrate_verdicts.py): 18.6% and 1.0%, with the pictures inside a
    # query found by colour edges (15.8% and 0.9% before).
    ("efficientnet_lite0", "lukemelas-57934424:last-block+square224-gem3-small96x0.5+local@12"): 0.940,
}


def edited_copy_threshold(identity: IndexIdentity) -> float | None:
    """The setting when it is set, else the calibration of this descriptor; None when neither exists."""
    if settings.LOOKALIKE_EDITED_COPY_THRESHOLD is not None:
        return settings.LOOKALIKE_EDITED_COPY_THRESHOLD
    return CALIBRATED_THRESHOLDS.get((identity.backbone, identity.backbone_version))


def verdict(*, score: float, same_file: bool, threshold: float | None) -> str:
    if same_file:
        return SAME_FILE
    if threshold is not None and score >= threshold:
        return EDITED_COPY
    return SIMILAR
