from __future__ import annotations

import pytest

from api.services import api_token_create
from gallery.models import Image
from tests.conftest import make_copies, store


@pytest.fixture
def secret(user) -> str:
    return api_token_create(user=user, name="script")[1]


@pytest.fixture
def other_secret(other_user) -> str:
    return api_token_create(user=other_user, name="bob's script")[1]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def indexed(data: bytes, name: str = "p.jpg", owner=None, **fields) -> Image:
    """A stored image marked indexed (no vector: for tests that do not search)."""
    image = make_copies(store(data, name, owner))
    Image.objects.filter(pk=image.pk).update(state=Image.State.INDEXED, **fields)
    image.refresh_from_db()
    return image
