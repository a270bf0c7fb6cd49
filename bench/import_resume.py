#!/usr/bin/env python3
"""A large import killed halfway and run again: total time, the time to skip what is stored,
each process's peak memory, and that every file ends stored exactly once.

It makes ``--count`` distinct files from the gallery (each a gallery image with light random
edits: a small crop, brightness, a JPEG quality; kept in ``--files`` for the next run), then, in a
fresh site on PostgreSQL and Redis:

  first     ``import_images FOLDER --recursive --jobs N``, SIGKILLed (the command and its store
            processes at once) when ``--kill-at`` of the files are stored;
  resume    the same command again, to the end: how long it takes to skip what the first run
            stored (until the first new row) and in all;
  again     the same command once more over the finished folder: a run that only skips;
  bare      a loop that reads each file, hashes it with SHA-256 and writes it to the same disk,
            before the first run and after the last: what any store step must do at least;
  sweep     upkeep's removal of the originals that the killed run wrote before its rows
            (``gallery.unfinished``), with no grace period since no import runs any more.

Memory is sampled twice a second from ``/proc`` for every process of each run: the peak
(``VmHWM``) of each, and the resident size at each quarter of the progress, which stays flat
when the command holds no per-file state. With ``--index`` the workers run throughout (as
``bench/ingest.py`` starts them) and the run ends once every image is indexed, then checks one
vector per image in the database and, once the published snapshot has caught up, as many in the
index; the embedding model bounds that at this box's 30 to 40 images/s (about 45 minutes for
100,000).

    .venv/bin/python bench/import_resume.py --count 100000 --jobs 2 \\
        --database-url postgres://postgres@127.0.0.1:5432/resume_bench --broker-url redis://127.0.0.1:6379/12
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ingest import bare_timed, fresh_site  # noqa: E402
from workers import stop_workers  # noqa: E402

PYTHON = sys.executable
_FILES_PER_FOLDER = 1000
_SWEEP = ("from datetime import timedelta; from gallery.unfinished import sweep_unfinished; "
          "print(sweep_unfinished(older_than=timedelta(0)))")


def _edited(job: tuple[int, Path, Path]) -> None:
    number, source, target = job
    rng = random.Random(number)
    with Image.open(source) as image:
        picture = image.convert("RGB")
    width, height = picture.size
    left, top = rng.randint(0, width // 25), rng.randint(0, height // 25)
    right, bottom = width - rng.randint(0, width // 25), height - rng.randint(0, height // 25)
    picture = ImageEnhance.Brightness(picture.crop((left, top, right, bottom))).enhance(rng.uniform(0.92, 1.08))
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.save(target, "JPEG", quality=rng.randint(80, 95))


def make_files(gallery: Path, folder: Path, count: int) -> None:
    """``count`` edited copies of the gallery's images, a thousand to a folder; kept between runs."""
    if folder.is_dir() and sum(len(files) for _, _, files in os.walk(folder)) == count:
        return
    sources = sorted(p for p in gallery.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    jobs = [(i, sources[i % len(sources)], folder / f"{i // _FILES_PER_FOLDER:04d}" / f"{i:06d}.jpg")
            for i in range(count)]
    with multiprocessing.Pool() as pool:
        for _ in pool.imap_unordered(_edited, jobs, chunksize=64):
            pass


@dataclass
class Memory:
    """Peak and sampled resident memory, in MiB, of each process of one run, by process id."""
    peak: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    by_quarter: dict[int, dict[int, float]] = field(default_factory=dict)

    def sample(self, group: int, quarter: int | None) -> None:
        for pid, name, rss, hwm in _group_processes(group):
            self.names[pid] = name
            self.peak[pid] = max(self.peak.get(pid, 0.0), hwm)
            if quarter is not None:
                self.by_quarter.setdefault(quarter, {})[pid] = rss

    def lines(self) -> list[str]:
        lines = []
        for pid in sorted(self.peak):
            quarters = " ".join(f"{self.by_quarter[q].get(pid, float('nan')):6.0f}" for q in sorted(self.by_quarter))
            lines.append(f"    pid {pid} ({self.names[pid]}): peak {self.peak[pid]:6.0f} MiB;"
                         f" resident at each quarter: {quarters}")
        return lines


def _group_processes(group: int) -> list[tuple[int, str, float, float]]:
    """(pid, role, resident MiB, peak MiB) of the live processes in a process group."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != group:
                continue
            status = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                          if ":" in line)
        except (OSError, ValueError, IndexError):
            continue
        if "VmRSS" not in status:  # exiting: its memory is already gone
            continue
        role = "command" if int(entry) == group else "store process"
        found.append((int(entry), role, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024))
    return found


def _stored(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM gallery_image").fetchone()
        return int(row[0]) if row else 0


def run_import(folder: Path, env: dict[str, str], jobs: int, count: int,
               kill_when: Callable[[int], bool] | None = None) -> tuple[float, float | None, int, Memory]:
    """Seconds until the command ended (or was killed), seconds until the first row it added,
    the rows then, and the memory of its processes."""
    database_url = env["DATABASE_URL"]
    before = _stored(database_url)
    memory = Memory()
    started = time.perf_counter()
    first_new: float | None = None
    command = subprocess.Popen([PYTHON, "manage.py", "import_images", str(folder), "--recursive", f"--jobs={jobs}",
                                "--verbosity=0"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    quarters_seen: set[int] = set()
    while command.poll() is None:
        stored = _stored(database_url)
        if first_new is None and stored > before:
            first_new = time.perf_counter() - started
        quarter = min(4, stored * 4 // count)
        memory.sample(command.pid, quarter if quarter not in quarters_seen else None)
        quarters_seen.add(quarter)
        if kill_when is not None and kill_when(stored):
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()
            break
        time.sleep(0.5)
    elapsed = time.perf_counter() - started
    _, errors = command.communicate()
    if kill_when is None and command.returncode != 0:
        raise RuntimeError(f"import_images exited with {command.returncode}: {errors.decode()[-2000:]}")
    return elapsed, first_new, _stored(database_url), memory


def _start_workers(work: Path, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    # --beat, as on one machine: upkeep sends again the images whose message the kill lost (a
    # batch killed between its commit and its message), once LOOKALIKE_STUCK_AFTER_SECONDS have
    # passed and no message is left on the embedding queue.
    workers = {"embed": ["--queues=embed,background", "--beat", "--hostname=embed@%h"],
               "index": ["--queues=index", "--pool=solo", "--hostname=index@%h"]}
    processes = []
    for name, options in workers.items():
        with (work / f"{name}-worker.log").open("w") as log:
            processes.append(subprocess.Popen([PYTHON, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
                                               *options], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
    return processes


def check(env: dict[str, str], count: int, indexed: bool) -> list[str]:
    """What the database and the data directory hold once it is over."""
    lines = []
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as connection:
        def one(sql: str) -> int:
            row = connection.execute(sql).fetchone()
            return int(row[0]) if row else 0

        rows = one("SELECT count(*) FROM gallery_image")
        names = one("SELECT count(DISTINCT original_name) FROM gallery_image")
        lines.append(f"  rows {rows} of {count} files; distinct file names {names}; "
                     f"distinct hashes {one('SELECT count(DISTINCT sha256) FROM gallery_image')}")
        originals = sum(len(files) for _, _, files in os.walk(Path(env["DATA_DIR"]) / "media" / "originals"))
        with_original = one("SELECT count(*) FROM gallery_image WHERE original <> ''")
        lines.append(f"  originals on disk {originals} (rows with one: {with_original})")
        if indexed:
            done = one("SELECT count(*) FROM gallery_image WHERE state = 'indexed'")
            vectors = one("SELECT count(*) FROM search_embedding")
            twice = one("SELECT count(*) FROM (SELECT image_id FROM search_embedding GROUP BY image_id"
                        " HAVING count(*) > 1) AS twice")
            lines.append(f"  indexed {done}; vectors {vectors}, images with more than one: {twice}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "bench" / "images")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--files", type=Path, default=Path("/tmp/lookalike-resume-files"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/lookalike-resume-site"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=0.5,
                        help="the fraction of the files stored when the first run is killed")
    parser.add_argument("--index", action="store_true",
                        help="run the workers too, and wait until every image is indexed")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--broker-url", required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    make_files(args.images, args.files, args.count)
    print(f"{args.count} files in {args.files} ({time.perf_counter() - started:.0f} s to make or find)", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    env = fresh_site(args.work, {**os.environ, "DATABASE_URL": args.database_url,
                                 "CELERY_BROKER_URL": args.broker_url})
    files = sorted(path for path in args.files.rglob("*") if path.is_file())
    bare_before, _ = bare_timed(files, args.work)
    workers = _start_workers(args.work, env) if args.index else []
    try:
        first, _, at_kill, first_memory = run_import(args.files, env, args.jobs, args.count,
                                                     kill_when=lambda stored: stored >= args.kill_at * args.count)
        print(f"first: killed after {first:.1f} s with {at_kill} stored", flush=True)
        resume, skipped_in, resumed_to, resume_memory = run_import(args.files, env, args.jobs, args.count)
        print(f"resume: {resume:.1f} s to the end ({resumed_to} stored); the first new row after "
              f"{skipped_in if skipped_in is not None else float('nan'):.1f} s", flush=True)
        again, _, _, again_memory = run_import(args.files, env, args.jobs, args.count)
        print(f"again, all stored: {again:.1f} s", flush=True)
        bare_after, _ = bare_timed(files, args.work)
        bare = (args.count / bare_before + args.count / bare_after) / 2
        store = args.count / (first + resume)
        print(f"total, first + resume: {first + resume:.1f} s ({store:.0f} files/s); the bare loop (read, SHA-256, "
              f"write) {args.count / bare_before:.0f} and {args.count / bare_after:.0f} files/s before and after: "
              f"store / bare {store / bare:.2f}")
        for name, memory in (("first", first_memory), ("resume", resume_memory), ("again", again_memory)):
            print(f"  memory, {name}:")
            print("\n".join(memory.lines()))
        if args.index:
            while _stored_indexed(env) < resumed_to:
                time.sleep(2)
            print(f"every image indexed {time.perf_counter() - started:.0f} s after the start")
            print(f"  the index in service, once its snapshot has caught up: {_index_caught_up(env)}")
        print("\n".join(check(env, args.count, args.index)))
        swept = subprocess.run([PYTHON, "manage.py", "shell", "-c", _SWEEP], env=env, cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()[-1]
        print(f"upkeep's sweep of unfinished uploads (none is running now): {swept} originals removed")
        print("\n".join(check(env, args.count, args.index)))
    finally:
        stop_workers(workers, timeout=30)


def _index_caught_up(env: dict[str, str]) -> str:
    """What ``index_status`` says once the published snapshot has applied every change: the
    vectors it holds against those in the database (one per image when each is indexed once)."""
    deadline = time.monotonic() + 900
    while (status := _index_status(env, sample=0))["changes_behind"] and time.monotonic() < deadline:
        time.sleep(10)
    caught_up = status["changes_behind"] == 0
    recall = _index_status(env, sample=100)["recall"]
    return (f"{'caught up' if caught_up else 'NOT caught up after 15 minutes'}: vectors in the database "
            f"{status['vectors_in_database']}, in the index {status['vectors_in_index']}, deleted not "
            f"purged {status['deleted_not_purged']}, changes behind {status['changes_behind']}; recall "
            f"self-check over 100 images {recall}")


def _index_status(env: dict[str, str], *, sample: int) -> dict:
    return json.loads(subprocess.run([PYTHON, "manage.py", "index_status", "--json", "--sample", str(sample)],
                                     env=env, cwd=ROOT, check=True, capture_output=True, text=True).stdout)


def _stored_indexed(env: dict[str, str]) -> int:
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM gallery_image WHERE state IN ('indexed', 'failed')").fetchone()
        return int(row[0]) if row else 0


if __name__ == "__main__":
    main()
