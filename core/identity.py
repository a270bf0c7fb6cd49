"""What a vector means. Free of Django and of the index library, so the embedder can name its output."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexIdentity:
    """What the vectors in an index mean; vectors of two identities are never mixed."""

    backbone: str
    backbone_version: str
    dim: int

    def describe(self) -> str:
        return f"{self.backbone} ({self.backbone_version}, {self.dim} dimensions)"
