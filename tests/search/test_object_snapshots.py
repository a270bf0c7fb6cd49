"""Index snapshots in the object store, as readers on other hosts see them: on the Ceph S3 gateway."""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import pytest
from botocore.config import Config

from config.object_store import snapshot_store_client
from core.index import ObjectSnapshotStore, SnapshotUnavailable
from core.reader import IndexReader
from tests.conftest import wait_for
from tests.core.test_index import IDENTITY, PARAMS, unit_vectors
from tests.core.test_reader import MemorySource, everything, top_ids
from tests.snapshot_stores import cached_ids, damage, published_ids


@pytest.fixture
def bucket(s3_bucket) -> str:
    return s3_bucket


def store_on(bucket: str, cache, *, client=None, poll_seconds: float = 0.0) -> ObjectSnapshotStore:
    return ObjectSnapshotStore(client or snapshot_store_client(), bucket, "index/g1/", cache, poll_seconds=poll_seconds)


def closed_port_client():
    """A client of an endpoint where nothing listens: as if the object store were down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="default",
                        aws_access_key_id="unused", aws_secret_access_key="unused",
                        config=Config(connect_timeout=1, retries={"total_max_attempts": 1},
                                      s3={"addressing_style": "path"})), snapshot_store_client()


@pytest.fixture
def world(bucket, tmp_path):
    """The change source, the writer's store on host a, and a reader on host b with its own cache."""
    source = MemorySource()
    reports: list[str] = []
    reader_store = store_on(bucket, tmp_path / "cache-b")
    reader = IndexReader(reader_store, IDENTITY, PARAMS, source, on_unusable_snapshot=reports.append)
    return source, store_on(bucket, tmp_path / "cache-a"), reader, reports


def serve_one_then_publish_another(source, writer, reader):
    """Images 1-10 in a snapshot the reader serves, then image 11 in a newer one; the vectors of 1-12."""
    vectors = unit_vectors(12)
    source.add_all(vectors[:10])
    source.publish(writer)
    reader.refresh()
    served = reader.meta
    source.add(11, vectors[10])
    source.publish(writer)
    return vectors, served


@contextmanager
def held_download(reader, writer) -> Iterator[threading.Event]:
    """Hold the reader's download of any snapshot file until the block ends; the event is set once
    a download has started."""
    downloading, finish = threading.Event(), threading.Event()

    def hold(params, **_kwargs):
        if params.get("Key", "").startswith(writer.prefix) and params["Key"] != writer.pointer_key:
            downloading.set()
            assert finish.wait(30)

    client = reader.store.client
    client.meta.events.register("before-parameter-build.s3", hold)
    try:
        yield downloading
    finally:
        finish.set()
        client.meta.events.unregister("before-parameter-build.s3", hold)


def test_a_reader_on_another_host_downloads_verifies_and_serves_the_newest_snapshot(world):
    source, writer, reader, _ = world
    vectors = unit_vectors(10)
    source.add_all(vectors)
    source.publish(writer)
    assert top_ids(reader, vectors[3]) == [4]
    assert reader.meta.snapshot_id == writer.read_meta().snapshot_id
    assert reader.tail_size == 0
    assert cached_ids(reader.store.root) == [reader.meta.snapshot_id]


def test_a_corrupt_object_is_logged_and_the_reader_keeps_serving_its_snapshot(world, caplog):
    source, writer, reader, reports = world
    vectors, served = serve_one_then_publish_another(source, writer, reader)
    damage(writer, writer.read_meta().snapshot_id)
    assert top_ids(reader, vectors[10]) == [11], "the tail from the change log covers what the snapshot lacks"
    assert top_ids(reader, vectors[2]) == [3]
    assert reader.meta == served
    assert len(reports) == 1
    assert "does not match its checksum" in reports[0]
    assert f"Keeping index snapshot {served.snapshot_id}" in caplog.text
    assert cached_ids(reader.store.root) == [served.snapshot_id], "nothing damaged is left in the cache"


def test_an_unreachable_store_is_logged_and_the_reader_keeps_serving_then_catches_up(world, caplog):
    source, writer, reader, _ = world
    vectors, served = serve_one_then_publish_another(source, writer, reader)
    dead, alive = closed_port_client()
    reader.store.client = dead
    with caplog.at_level(logging.WARNING):
        assert top_ids(reader, vectors[10]) == [11]
        source.add(12, vectors[11])
        assert top_ids(reader, vectors[11]) == [12]
    assert reader.meta == served
    assert "Keeping the index snapshot in use: could not read s3://" in caplog.text
    with pytest.raises(SnapshotUnavailable):
        reader.store.read_meta()
    reader.store.client = alive
    reader.refresh()
    assert reader.meta.snapshot_id == writer.read_meta().snapshot_id
    assert reader.tail_size == 1


def test_a_download_that_fails_midway_keeps_the_snapshot_in_use_and_is_tried_again(world, caplog):
    source, writer, reader, reports = world
    _, served = serve_one_then_publish_another(source, writer, reader)
    dead, alive = closed_port_client()

    def go_away_during_the_download(params, **_kwargs):
        # The first file is on its way; the store goes away before the second.
        if params.get("Key", "").startswith(writer.prefix) and params["Key"] != writer.pointer_key:
            reader.store.client = dead

    alive.meta.events.register("before-parameter-build.s3", go_away_during_the_download)
    try:
        reader.refresh()
    finally:
        alive.meta.events.unregister("before-parameter-build.s3", go_away_during_the_download)
    assert reader.meta == served
    assert reports == [], "an unreachable store says nothing about the snapshot"
    assert "could not download" in caplog.text
    assert not [p for p in reader.store.root.iterdir() if p.name.endswith(".tmp")]
    reader.store.client = alive
    reader.refresh()
    assert reader.meta.snapshot_id == writer.read_meta().snapshot_id


def test_older_cached_snapshots_are_removed(world):
    source, writer, reader, _ = world
    vectors = unit_vectors(14)
    source.add_all(vectors[:10])
    seen = []
    for image_id in range(11, 15):
        source.publish(writer)
        reader.refresh()
        seen.append(reader.meta.snapshot_id)
        time.sleep(0.01)  # distinct modification times order the cached folders
        source.add(image_id, vectors[image_id - 1])
    assert cached_ids(reader.store.root) == sorted(seen[-2:])
    assert published_ids(writer) == sorted(seen[-2:])


def test_a_publish_interrupted_before_the_pointer_leaves_every_reader_on_the_previous_snapshot(world, bucket,
                                                                                               tmp_path):
    source, writer, reader, _ = world
    vectors = unit_vectors(11)
    source.add_all(vectors[:10])
    source.publish(writer)
    before = writer.read_meta()

    def stop_at_the_pointer(params, **_kwargs):
        if params["Key"] == writer.pointer_key:
            raise ConnectionError("the writer's host went away")

    client = snapshot_store_client()
    client.meta.events.register("before-parameter-build.s3.PutObject", stop_at_the_pointer)
    try:
        source.add(11, vectors[10])
        with pytest.raises(ConnectionError):
            source.publish(writer)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.PutObject", stop_at_the_pointer)
    assert len(published_ids(writer)) == 2, "the files of the interrupted publish were uploaded"
    assert top_ids(reader, vectors[10]) == [11]
    assert reader.meta == before
    assert store_on(bucket, tmp_path / "cache-c").read_meta() == before
    source.publish(writer)
    assert published_ids(writer) == sorted([before.snapshot_id, writer.read_meta().snapshot_id]), (
        "the next publish removes what the interrupted one left")


def test_a_reader_polls_the_store_at_most_once_per_interval_and_asks_with_the_etag(bucket, s3_gateway, tmp_path):
    source = MemorySource()
    vectors = unit_vectors(11)
    source.add_all(vectors[:10])
    writer = store_on(bucket, tmp_path / "cache-a")
    source.publish(writer)
    # A client of the reader's own, to count what it asks.
    client = boto3.client("s3", endpoint_url=s3_gateway["LOOKALIKE_S3_ENDPOINT_URL"], region_name="default",
                          aws_access_key_id=s3_gateway["LOOKALIKE_S3_ACCESS_KEY_ID"],
                          aws_secret_access_key=s3_gateway["LOOKALIKE_S3_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}))
    pointer_reads: list[bool] = []
    answers: list[int] = []

    def count_pointer_reads(params, **_kwargs):
        if params["Key"] == writer.pointer_key:
            pointer_reads.append("IfNoneMatch" in params)

    client.meta.events.register("before-parameter-build.s3.GetObject", count_pointer_reads)
    client.meta.events.register("after-call.s3.GetObject", lambda http_response, **_: answers.append(
        http_response.status_code))
    reader = IndexReader(store_on(bucket, tmp_path / "cache-b", client=client, poll_seconds=3), IDENTITY, PARAMS,
                         source)
    for _ in range(20):
        reader.search(vectors[:1], 1, visible=everything)
    # The poll, and the read of the metadata it found new (a conditional GET on the ETag just seen).
    assert pointer_reads == [False, True], "the pointer is not read on every query"
    first = reader.meta
    source.add(11, vectors[10])
    source.publish(writer)
    reader.refresh()
    assert reader.meta == first, "a publish is seen at the next poll, not before"
    time.sleep(3.1)
    reader.refresh()
    assert reader.meta.applied_seq == 11
    answers.clear()
    time.sleep(3.1)
    reader.refresh()
    assert answers == [304], "an unchanged pointer costs a conditional GET and no body"


def test_other_threads_search_the_snapshot_in_use_while_one_downloads_the_next(world):
    source, writer, reader, _ = world
    vectors, served = serve_one_then_publish_another(source, writer, reader)
    loader = threading.Thread(target=reader.refresh)
    with held_download(reader, writer) as downloading:
        loader.start()
        assert downloading.wait(30)
        started = time.monotonic()
        assert top_ids(reader, vectors[10]) == [11]
        assert time.monotonic() - started < 5, "the search did not wait for the download"
        assert reader.meta == served
    loader.join(30)
    assert reader.meta.snapshot_id == writer.read_meta().snapshot_id


def test_a_web_reader_downloads_the_next_snapshot_in_a_thread_and_no_search_waits_for_it(world):
    source, writer, reader, _ = world
    reader.load_in_background = True
    vectors, served = serve_one_then_publish_another(source, writer, reader)
    with held_download(reader, writer) as downloading:
        started = time.monotonic()
        assert top_ids(reader, vectors[10]) == [11], "the tail covers the image the newer snapshot holds"
        assert downloading.wait(30), "the search started the download"
        assert top_ids(reader, vectors[3]) == [4]
        assert time.monotonic() - started < 5, "a search waited for the download"
        assert reader.meta == served
    wait_for(lambda: reader.meta.snapshot_id == writer.read_meta().snapshot_id, timeout=30,
             message="the loading thread to swap the newer snapshot in")
    assert reader.tail_size == 0
    assert top_ids(reader, vectors[10]) == [11]
