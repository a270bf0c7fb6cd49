#!/usr/bin/env python3
"""Does warming the model in another thread (as a web process does, `config/wsgi.py`) make the
searches of the thread that serves them slower than warming it in that thread?

Times one search's embedding (a bench picture's views, as a search by picture embeds them) 6
times in a fresh thread, after ``embedder_warm`` ran in a thread of its own (``elsewhere``) or in
that same thread (``here``). Run each mode in its own process, in turns:

    for mode in elsewhere here elsewhere here; do .venv/bin/python bench/warm_in_thread.py $mode; done
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(mode: str) -> None:
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="lookalike-warm-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from PIL import Image

    from core.query_views import query_framings
    from search import runtime

    picture = Image.open(ROOT.parent / "shared" / "bench" / "images" / "cat" / "cat-0001.jpg").convert("RGB")
    views = [view for pair in query_framings(picture) for view in pair]

    def serve() -> None:
        if mode == "here":
            runtime.embedder_warm()
        seconds = []
        for _ in range(6):
            started = time.perf_counter()
            runtime.embedder().describe(views)
            seconds.append(time.perf_counter() - started)
        print(f"{mode}: median {statistics.median(seconds):.3f} s, each {[round(s, 2) for s in seconds]}")

    if mode == "elsewhere":
        runtime.embedder_warm_in_background().join()
    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "elsewhere")
