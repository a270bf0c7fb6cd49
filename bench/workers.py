"""Stopping the Celery workers a benchmark started (each in a process group of its own)."""
from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def stop_workers(processes: Sequence[subprocess.Popen], timeout: float) -> None:
    """Stop each worker gracefully, or kill its whole process group after ``timeout`` seconds."""
    # SIGTERM to each main process alone: a pool process stopped by a signal of its own may
    # hold the pool's queue lock, and the main process then waits for it forever.
    for process in processes:
        os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
