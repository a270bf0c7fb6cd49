"""The worker's process pool: pool processes killed while they wait for a task leave the pool working."""
import os
import signal
import time

from config import pool


def test_pool_processes_killed_while_they_wait_for_a_task_leave_the_pool_working():
    # billiard's own blocking pool runs no task again after this: a waiting process held the lock
    # of the pipe the processes share, and the processes that replace them wait for it forever.
    workers = pool.Pool(processes=2)
    try:
        started = {workers.apply_async(os.getpid).get(timeout=60) for _ in range(4)}
        time.sleep(0.5)  # back to waiting for the next task
        for pid in started:
            os.kill(pid, signal.SIGKILL)
        ran_in = workers.apply_async(os.getpid).get(timeout=60)
        assert ran_in not in started
    finally:
        workers.terminate()
