#!/usr/bin/env python3
"""The first search and the first upload on a freshly started site, as `make run` starts it.

Each run makes a site of its own in a temporary DATA_DIR (SQLite, the embedded broker), stores
``--gallery`` bench pictures and waits for them to be indexed, stops it, then starts it again
with ``manage.py serve`` and, ``--after`` seconds after the site first answers (a person opening
the page), times:
  - the first search by picture (POST /search/, as the page's script sends it), then the next
    few, which show what a warm search costs;
  - the first upload, from the request to the moment its image is indexed, that is searchable.

``--project`` runs another checkout's code (e.g. a `git archive` of older code, with this one's
.venv); given more than once, the checkouts take turns, run by run, so that a busy machine slows
them alike:

    .venv/bin/python bench/first_search.py --runs 3
    .venv/bin/python bench/first_search.py --runs 3 --project /tmp/lookalike-before --project .
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT.parent / "shared" / "bench" / "images"
_CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def form_token(page: str) -> str:
    found = _CSRF_INPUT.search(page)
    if found is None:
        raise SystemExit("the page has no form token: is the site up, and is this its login or search page?")
    return found[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Site:
    def __init__(self, project: Path, data_dir: Path) -> None:
        self.project = project
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        self.env.update(DATA_DIR=str(data_dir), DJANGO_SETTINGS_MODULE="config.settings.local", DEBUG="true",
                        PYTHONUNBUFFERED="1")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = (data_dir / "serve.log").open("ab")

    def manage(self, *args: str) -> str:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=self.project, env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def start(self) -> float:
        """Start the site as `make run` does; the seconds until it first answers."""
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "manage.py", "serve", "--bind", f"127.0.0.1:{self.port}"],
                                        cwd=self.project, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        while True:
            try:
                if requests.get(f"{self.url}/accounts/login/", timeout=30).status_code == 200:
                    return time.perf_counter() - started
            except requests.ConnectionError:
                pass  # not listening yet
            if self.process.poll() is not None:
                raise RuntimeError("the site exited while starting; see serve.log in its DATA_DIR")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def signed_in(site: Site) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{site.url}/accounts/login/", timeout=30).text
    session.post(f"{site.url}/accounts/login/", data={"username": "bench", "password": "bench-password",
                                                     "csrfmiddlewaretoken": form_token(page)}, timeout=30)
    return session


def post_picture(session: requests.Session, site: Site, path: str, field: str, picture: Path,
                 headers: dict[str, str]) -> tuple[float, requests.Response]:
    """POST a picture with a page's form token; when the request started, and the answer."""
    token = form_token(session.get(f"{site.url}{path}", timeout=30).text)
    started = time.perf_counter()
    answer = session.post(f"{site.url}{path}", data={"csrfmiddlewaretoken": token},
                          files={field: (picture.name, picture.read_bytes(), "image/jpeg")},
                          headers={**headers, "X-CSRFToken": token}, timeout=120)
    return started, answer


def search_seconds(session: requests.Session, site: Site, picture: Path) -> float:
    started, answer = post_picture(session, site, "/search/", "image", picture, {"X-Requested-With": "fetch"})
    seconds = time.perf_counter() - started
    if answer.status_code != 200 or "data-result-grid" not in answer.text:
        raise RuntimeError(f"the search was answered {answer.status_code}")
    return seconds


def upload_to_searchable_seconds(session: requests.Session, site: Site, picture: Path) -> float:
    started, answer = post_picture(session, site, "/upload/", "files", picture, {"Accept": "application/json"})
    [result] = answer.json()["results"]
    if result["status"] != "accepted":
        raise RuntimeError(f"the upload was {result['status']}: {result['message']}")
    image_id = result["image"]["id"]
    while True:
        [state] = session.get(f"{site.url}/images/states/?ids={image_id}", timeout=30).json()["images"]
        if state["state"] == "indexed":
            return time.perf_counter() - started
        if state["state"] == "failed":
            raise RuntimeError(f"the upload failed: {state['error']}")
        time.sleep(0.02)


def run_once(project: Path, pictures: list[Path], after: float, warm_searches: int,
             logs: Path | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lookalike-first-search-") as folder:
        site = Site(project, Path(folder))
        site.manage("migrate", "--noinput")
        site.manage("shell", "-c", "from django.contrib.auth import get_user_model; "
                                   "get_user_model().objects.create_user('bench', password='bench-password')")
        gallery, query, upload = pictures[:-2], pictures[-2], pictures[-1]
        try:
            site.start()
            site.manage("import_images", "--owner", "bench", "--wait", *map(str, gallery))
        finally:
            site.stop()
        try:
            ready = site.start()
            time.sleep(after)
            session = signed_in(site)
            first = search_seconds(session, site, query)
            warm = [search_seconds(session, site, query) for _ in range(warm_searches)]
            uploaded = upload_to_searchable_seconds(session, site, upload)
        finally:
            site.stop()
            if logs:
                logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(Path(folder) / "serve.log", logs / f"{project.name}-{time.strftime('%H%M%S')}.log")
        return {"ready_s": ready, "first_search_s": first, "warm_search_median_s": statistics.median(warm),
                "first_upload_to_searchable_s": uploaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, action="append",
                        help="a checkout whose code runs the site (default: this one); repeat to compare")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gallery", type=int, default=20, help="pictures in the gallery before the restart")
    parser.add_argument("--after", type=float, default=10.0,
                        help="seconds from the site's first answer to the first search")
    parser.add_argument("--warm-searches", type=int, default=4)
    parser.add_argument("--logs", type=Path, help="keep each run's site log in this folder")
    args = parser.parse_args()
    pictures = sorted((GALLERY / "cat").glob("*.jpg"))[:args.gallery + 2]
    projects = [project.resolve() for project in args.project or [ROOT]]
    runs: dict[Path, list[dict[str, float]]] = {project: [] for project in projects}
    for number in range(args.runs):
        for project in projects:
            result = run_once(project, pictures, args.after, args.warm_searches, args.logs)
            print(json.dumps({"project": str(project), "run": number + 1,
                              **{k: round(v, 3) for k, v in result.items()}}), flush=True)
            runs[project].append(result)
    for project, results in runs.items():
        print(json.dumps({"project": str(project), "runs": len(results), "after_s": args.after, "median": {
            key: round(statistics.median(result[key] for result in results), 3) for key in results[0]}}))

if __name__ == "__main__":
    main()
