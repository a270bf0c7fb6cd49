"""The embedded broker: kombu's filesystem transport, with every message whole before a worker
can see it.

kombu's own transport creates a message's file under its final name and then writes it, so a
worker that lists the folder in between takes an empty message and stops with a JSON error
(kombu issue #1551). This one writes under a name no queue matches, then renames.
"""
from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's own base classes name the second argument differently (message, payload).
    def _put(self, queue: str, payload: dict[str, object], **kwargs: object) -> None:  # type: ignore[override]
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
