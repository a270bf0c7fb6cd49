"""The index snapshot stores as tests see them: each test that publishes or reads snapshots runs on a
local folder and on the Ceph S3 gateway (bin/ceph-gateway). Free of Django, so that processes a test
spawns can import it."""
from __future__ import annotations

import shutil
from pathlib import Path

from core.index import ObjectSnapshotStore, Snapshots, SnapshotStore

STORE_KINDS = ["local", "gateway"]


def damage(store: Snapshots, snapshot_id: str, name: str = "index.hnsw", data: bytes | None = b"\0" * 64) -> None:
    """Overwrite one file of a published snapshot (delete it, with ``data`` None) where readers get it,
    and drop the copy cached on this machine, so that the next load reads the damaged one."""
    if isinstance(store, SnapshotStore):
        path = store.root / snapshot_id / name
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        return
    assert isinstance(store, ObjectSnapshotStore)
    key = f"{store.prefix}{snapshot_id}/{name}"
    if data is None:
        store.client.delete_object(Bucket=store.bucket, Key=key)
    else:
        store.client.put_object(Bucket=store.bucket, Key=key, Body=data)
    shutil.rmtree(store.root / snapshot_id, ignore_errors=True)


def write_pointer(store: Snapshots, content: str) -> None:
    if isinstance(store, SnapshotStore):
        store.root.mkdir(parents=True, exist_ok=True)
        store.pointer.write_text(content)
    else:
        assert isinstance(store, ObjectSnapshotStore)
        store.client.put_object(Bucket=store.bucket, Key=store.pointer_key, Body=content.encode())


def published_ids(store: Snapshots) -> list[str]:
    """The snapshots whose files the store holds (for the gateway: in the bucket), sorted."""
    if isinstance(store, SnapshotStore):
        return sorted(p.name for p in store.root.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert isinstance(store, ObjectSnapshotStore)
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.prefix)
    keys = [item["Key"][len(store.prefix):] for page in pages for item in page.get("Contents", [])]
    return sorted({key.split("/", 1)[0] for key in keys if "/" in key})


def cached_ids(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.exists() else []
