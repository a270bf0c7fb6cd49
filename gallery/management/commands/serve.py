"""python manage.py serve: the site, a Celery worker that embeds images and runs the background
tasks, and one that keeps the index, each in its own processes (used by `make run`). On several
hosts each kind of worker runs on its own: docs/scaling.md."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve the site with gunicorn and run the Celery workers beside it, until interrupted."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default="127.0.0.1:8000", help="address for the web server")
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
        parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                            help="processes of the Celery worker that embeds images")

    def handle(self, *args: object, **options: Any) -> None:
        env = dict(os.environ)
        commands = {
            # One machine: the embedding worker takes the background queue too; --beat: it also sends
            # the periodic upkeep task.
            "worker": [sys.executable, "-m", "celery", "-A", "config", "worker", "--beat", "--loglevel=INFO",
                       f"--concurrency={options['concurrency']}", "--hostname=embed@%h",
                       f"--queues={settings.LOOKALIKE_EMBED_QUEUE},{settings.LOOKALIKE_BACKGROUND_QUEUE}"],
            # The only process that loads the index to change it: one task at a time, in the worker itself.
            "index writer": [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
                             "--pool=solo", "--hostname=index@%h", f"--queues={settings.LOOKALIKE_INDEX_QUEUE}"],
            "web": [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", str(options["bind"]),
                    "--workers", str(options["web_workers"]), "--threads", "4", "--timeout", "120",
                    "--access-logfile", "-"],
        }
        # The web process keeps this process's settings module (gunicorn would default to production).
        env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
        processes = {name: subprocess.Popen(cmd, env=env, start_new_session=True) for name, cmd in commands.items()}
        self.stdout.write(f"Lookalike is at http://{options['bind']}/ (Ctrl-C to stop).")
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        self.stderr.write(f"The {name} process exited with status {process.returncode}; stopping.")
                        stopping = True
                time.sleep(0.5)
        finally:
            # SIGTERM to each main process only: gunicorn and Celery then stop their own workers
            # gracefully, letting running tasks finish.
            for process in processes.values():
                if process.poll() is None:
                    process.terminate()
            for process in processes.values():
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
