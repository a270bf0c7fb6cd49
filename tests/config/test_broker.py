"""The embedded broker: every message a worker takes is whole, however busy the queue."""
import multiprocessing
import queue

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError
from kombu.transport import filesystem

from config import broker

TRANSPORT = "config.broker:Transport"


def _options(folder: str, **extra: object) -> dict[str, object]:
    # The control folder too: kombu's default is a "control" folder in the working directory.
    return {"data_folder_in": folder, "data_folder_out": folder, "control_folder": f"{folder}/control", **extra}


def _put(folder: str, count: int) -> None:
    options = _options(folder)
    with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as connection:
        sending = connection.SimpleQueue("busy")
        for n in range(count):
            sending.put({"n": n, "padding": "x" * 20_000})


def test_the_site_writes_through_it_when_it_has_no_other_broker(settings):
    from config.celery import app

    with app.connection_for_write() as connection:
        transport = connection.transport
    if settings.EMBEDDED_BROKER:
        assert isinstance(transport, broker.Transport)
    else:
        assert not isinstance(transport, filesystem.Transport)


def test_a_worker_takes_only_whole_messages_while_others_write(tmp_path):
    # kombu's own transport fails this within the first few messages (JSONDecodeError).
    folder, producers, each = str(tmp_path), 3, 700
    writers = [multiprocessing.get_context("spawn").Process(target=_put, args=(folder, each)) for _ in range(producers)]
    for writer in writers:
        writer.start()
    taken = []
    options = _options(folder, polling_interval=0)
    try:
        with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as connection:
            receiving = connection.SimpleQueue("busy")
            while len(taken) < producers * each:
                try:
                    message = receiving.get(timeout=30)
                except queue.Empty:
                    break
                taken.append(message.payload["n"])
                message.ack()
    finally:
        for writer in writers:
            writer.join(timeout=60)
    assert len(taken) == producers * each
    assert sorted(taken) == sorted(list(range(each)) * producers)
    assert not list(tmp_path.glob(".*.partial")), "no half-written file is left behind"


def test_a_message_that_cannot_be_written_is_refused_clearly_and_leaves_nothing_behind(tmp_path):
    missing = tmp_path / "no-such-folder"
    options = _options(str(missing))
    with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as connection:
        with pytest.raises(ChannelError, match="Cannot add file"):
            connection.default_channel._put("busy", {"n": 1})
    assert not missing.exists()
