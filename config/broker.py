"""The embedded broker: kombu's filesystem transport, with every message whole before a worker
can see it, and the queues of a worker taken in the order it was given them.

kombu's own transport creates a message's file under its final name and then writes it, so a
worker that lists the folder in between takes an empty message and stops with a JSON error
(kombu issue #1551). This one writes under a name no queue matches, then renames.

kombu takes a worker's queues in turn. This one takes from the first queue that holds a message,
as the Redis transport does with ``queue_order_strategy="priority"`` (config.settings): a worker
on ``--queues=embed,background`` embeds every image waiting before it makes a display copy.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps
from kombu.utils.scheduling import FairCycle


class QueuesInOrder(FairCycle):
    """Each time, the first of the queues (in the worker's order) that holds a message."""

    def get(self, callback: Callable[..., object], **kwargs: object) -> object:
        self.pos = 0
        return super().get(callback, **kwargs)


class Channel(filesystem.Channel):
    def _reset_cycle(self) -> None:
        self._cycle = QueuesInOrder(self._get_and_deliver, self._active_queues, Empty)

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        # kombu's naming: the time first, so that a queue is read in order, and the queue last.
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as fh:
                fh.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
