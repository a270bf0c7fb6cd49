"""The worker's process pool: Celery's prefork pool, with pool processes that wait for a task
without holding the lock of the pipe they share.

On a broker without an event loop (the embedded broker, kombu's filesystem transport) Celery
runs billiard's blocking pool, whose processes take their tasks from one pipe. billiard's pool
process waits for its next task inside the pipe's read lock (``SimpleQueue.get_payload``), so
one killed while it waits (SIGKILL, the OOM killer) leaves the lock taken: the processes that
replace it wait for the lock forever, and the worker takes messages that it never runs again.
billiard pull request #457 tells of the same lock left taken by a process killed after a hard
time limit. Here a process waits until a task is in the pipe, outside the lock, and takes the
lock only to read it.

On Redis Celery runs its asynchronous pool, which gives each process a pipe of its own and is
left as it is.
"""
from __future__ import annotations

from billiard.pool import Pool as BlockingPool
from billiard.queues import SimpleQueue
from celery.concurrency.prefork import TaskPool as PreforkTaskPool


class TaskPipe(SimpleQueue):
    """The pipe that the pool processes take their tasks from."""

    def get_payload(self) -> bytes:
        while True:
            self._reader.poll(None)
            with self._rlock:
                # Another process may have read it first.
                if self._reader.poll(0):
                    return self._reader.recv_bytes()


class Pool(BlockingPool):
    _inqueue: SimpleQueue

    def _setup_queues(self) -> None:
        super()._setup_queues()
        # billiard's pipe for tasks, not used yet: replaced by one whose readers wait outside its lock.
        self._inqueue.close()
        self._inqueue = TaskPipe(ctx=self._ctx.get_context())
        self._quick_put = self._inqueue._writer.send


class TaskPool(PreforkTaskPool):
    BlockingPool = Pool
