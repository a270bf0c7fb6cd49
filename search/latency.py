"""Search latency of the last queries, shared by every process through a small file under VAR_DIR.

Each search appends one line (appends this short are atomic); the file is cut back to the last
``KEEP`` lines when it grows, so reading it stays cheap. Losing a line to a race only drops one
sample.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from django.conf import settings

KEEP = 1000
_TRIM_AT_BYTES = 64 * 1024


def _path() -> Path:
    return settings.VAR_DIR / "search-latency.log"


def record(seconds: float) -> None:
    path = _path()
    try:
        with path.open("a") as fh:
            fh.write(f"{seconds:.6f}\n")
            size = fh.tell()
        if size > _TRIM_AT_BYTES:
            lines = path.read_text().splitlines()[-KEEP:]
            staging = path.with_name(f".{path.name}.{os.getpid()}")
            staging.write_text("\n".join(lines) + "\n")
            os.replace(staging, path)
    except OSError:
        pass  # a measurement must never fail a search


def recent() -> list[float]:
    """Seconds taken by the last (up to ``KEEP``) searches, oldest first."""
    try:
        lines = _path().read_text().splitlines()[-KEEP:]
    except FileNotFoundError:
        return []
    values = []
    for line in lines:
        try:
            values.append(float(line))
        except ValueError:
            continue  # a line cut short by a concurrent trim
    return values


def percentiles(values: list[float], *points: float) -> list[float]:
    return [float(np.percentile(values, p)) for p in points] if values else [float("nan")] * len(points)
