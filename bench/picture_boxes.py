#!/usr/bin/env python3
"""How often search's second look finds the photo inside a screenshot or a paste, as a box.

The hard edits of ../shared/bench/attacks.py are made as copy_detection.py makes them (the same
seeds, the same 600 picks), and for each screenshot and paste the place where the photo was put
is noted. ``core.query_views.picture_boxes`` then looks for it: a box found counts when it
overlaps the photo by at least 0.7 (intersection over union), or 0.4. It prints those counts by
edit and seed, and the median time the function took per query. No Django, no model.

    .venv/bin/python bench/picture_boxes.py [--seeds 1 2 3] [--queries 600]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.query_views import box_overlap, picture_boxes  # noqa: E402

PLACED = ("screenshot", "paste")

Box = tuple[int, int, int, int]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default=str(ROOT.parent / "shared" / "bench"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--queries", type=int, default=600)
    args = parser.parse_args()
    bench = Path(args.bench)
    sys.path.insert(0, str(bench))
    from attacks import hard_attack

    files = sorted(p for p in (bench / "images").resolve().rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    # The photo is the last picture an edit pastes onto its page: note where it went.
    placed: list[Box] = []
    paste = Image.Image.paste

    def noting_paste(page: Image.Image, picture: object, box: object = None, mask: object = None) -> None:
        if isinstance(picture, Image.Image) and isinstance(box, tuple) and len(box) == 2:
            placed.append((box[0], box[1], box[0] + picture.width, box[1] + picture.height))
        paste(page, picture, box, mask)  # type: ignore[arg-type]

    Image.Image.paste = noting_paste  # type: ignore[assignment]
    timings: list[float] = []
    for seed in args.seeds:
        rng = random.Random(seed)
        found: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for source in rng.sample(files, min(args.queries, len(files))):
            placed.clear()
            query, edits = hard_attack(Image.open(source), rng)
            edit = next((name for name in edits if name in PLACED), None)
            if edit is None:
                continue
            left, top, right, bottom = placed[-1]
            photo = (left, top, min(right, query.width), min(bottom, query.height))
            started = time.perf_counter()
            boxes = picture_boxes(query)
            timings.append(time.perf_counter() - started)
            best = max((box_overlap(photo, box) for box in boxes), default=0.0)
            counts = found[edit]
            counts[0] += 1
            counts[1] += best >= 0.7
            counts[2] += best >= 0.4
        for edit, (total, close, rough) in sorted(found.items()):
            print(f"seed {seed} {edit:10} {total:3d} queries: the photo's box found {close:3d} "
                  f"({close / total:.2f}) at IoU >= 0.7, {rough:3d} ({rough / total:.2f}) at IoU >= 0.4")
    print(f"picture_boxes: median {statistics.median(timings) * 1000:.1f} ms a query "
          f"(max {max(timings) * 1000:.1f} ms, {len(timings)} queries)")


if __name__ == "__main__":
    main()
