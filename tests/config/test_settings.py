import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured

from config import env
from tests import images
from tests.conftest import PROJECT_ROOT

# Long and varied enough for Django's deployment check (security.W009).
PRODUCTION_KEY = "x" * 20 + "-a-long-and-random-production-secret-key-" + "y" * 20


class TestEnvironmentHelpers:
    def test_a_malformed_boolean_names_the_variable(self, monkeypatch):
        monkeypatch.setenv("SOME_FLAG", "perhaps")
        with pytest.raises(ImproperlyConfigured, match="SOME_FLAG='perhaps' is not a boolean"):
            env.env_bool("SOME_FLAG", False)

    @pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), ("YES", True), ("", False)])
    def test_booleans_read_the_usual_spellings(self, monkeypatch, raw, expected):
        monkeypatch.setenv("SOME_FLAG", raw)
        assert env.env_bool("SOME_FLAG", False) is expected

    def test_a_number_below_its_minimum_is_refused(self, monkeypatch):
        monkeypatch.setenv("SOME_COUNT", "0")
        with pytest.raises(ImproperlyConfigured, match="SOME_COUNT=0 is below its minimum of 1"):
            env.env_int("SOME_COUNT", 5, minimum=1)

    @pytest.mark.parametrize("raw", ["nan", "inf", "-Infinity"])
    def test_a_number_that_is_not_finite_is_refused(self, monkeypatch, raw):
        monkeypatch.setenv("SOME_SHARE", raw)
        with pytest.raises(ImproperlyConfigured, match=f"SOME_SHARE='{raw}' is not a finite number"):
            env.env_optional_float("SOME_SHARE", minimum=0.0, maximum=100.0)

    def test_a_required_value_that_is_missing_is_named(self, monkeypatch):
        monkeypatch.delenv("SOME_SECRET", raising=False)
        with pytest.raises(ImproperlyConfigured, match="Set the environment variable SOME_SECRET"):
            env.env_str("SOME_SECRET")

    @pytest.mark.parametrize(("raw", "expected"), [
        ("60/minute", (60, 60)), ("300 / hours", (300, 3600)), ("5/SECOND", (5, 1)), ("1/day", (1, 86400)),
        ("0", None), ("", None), ("0/minute", None),
    ])
    def test_rates_are_a_count_per_period(self, raw, expected):
        assert env.parse_rate("SOME_RATE", raw) == expected

    @pytest.mark.parametrize("raw", ["lots", "60", "60/fortnight", "-1/minute", "1.5/hour", "/minute", "60/"])
    def test_a_malformed_rate_names_the_variable(self, monkeypatch, raw):
        monkeypatch.setenv("SOME_RATE", raw)
        with pytest.raises(ImproperlyConfigured, match=r"SOME_RATE=.* is not a rate; write it as COUNT/PERIOD"):
            env.env_rate("SOME_RATE", "1/minute")

    @pytest.mark.parametrize(("key", "reason"), [
        ("k" * 60, "has 1 different characters, not the 5 or more it needs"),
        ("a-random-but-short-key", "has 22 characters, not the 50 or more it needs"),
        ("django-insecure-" + PRODUCTION_KEY, "starts with 'django-insecure-'"),
    ], ids=["repetitive", "short", "made-for-development"])
    def test_a_weak_secret_key_is_refused_with_the_reason(self, monkeypatch, key, reason):
        monkeypatch.setenv("SOME_KEY", key)
        with pytest.raises(ImproperlyConfigured, match=f"SOME_KEY is weak: it {reason}"):
            env.env_secret_key("SOME_KEY")

    def test_a_strong_secret_key_is_kept(self, monkeypatch):
        monkeypatch.setenv("SOME_KEY", PRODUCTION_KEY)
        assert env.env_secret_key("SOME_KEY") == PRODUCTION_KEY

    @pytest.mark.parametrize("raw", ["embed,gpu", "embed gpu", "-embed", "embed/gpu"])
    def test_a_queue_name_a_worker_could_not_be_given_is_refused(self, monkeypatch, raw):
        monkeypatch.setenv("SOME_QUEUE", raw)
        with pytest.raises(ImproperlyConfigured, match=f"SOME_QUEUE={raw!r} is not a queue name"):
            env.env_queue("SOME_QUEUE", "embed")

    def test_a_queue_name_is_kept(self, monkeypatch):
        monkeypatch.setenv("SOME_QUEUE", "embed.gpu-2")
        assert env.env_queue("SOME_QUEUE", "embed") == "embed.gpu-2"
        monkeypatch.delenv("SOME_QUEUE")
        assert env.env_queue("SOME_QUEUE", "embed") == "embed"

    def test_lists_are_comma_separated(self, monkeypatch):
        monkeypatch.setenv("SOME_HOSTS", "a.example, b.example,")
        assert env.env_list("SOME_HOSTS", []) == ["a.example", "b.example"]


def bare_env(**extra: str) -> dict[str, str]:
    """An environment with no services configured, as on a fresh machine."""
    environ = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE",
                            "LOOKALIKE_TEST_QUEUE", "LOOKALIKE_EMBED_QUEUE", "LOOKALIKE_INDEX_QUEUE",
                            "LOOKALIKE_BACKGROUND_QUEUE"}}
    environ.update(extra)
    return environ


def manage(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_two_data_directories_never_see_each_other(tmp_path):
    picture = tmp_path / "picture.jpg"
    picture.write_bytes(images.jpeg(1))
    for name in ("one", "two"):
        environ = bare_env(DATA_DIR=str(tmp_path / name))
        assert manage(environ, "migrate", "--noinput").returncode == 0
        proc = manage(environ, "import_images", str(picture))
        # A second data directory has never seen the file, so it is stored again, not a duplicate.
        assert proc.stdout.strip() == "1 files: 1 stored, 0 duplicates, 0 refused.", proc.stderr
        assert (tmp_path / name / "var" / "db.sqlite3").exists()
        assert len(list((tmp_path / name / "media" / "originals").rglob("*.jpg"))) == 1
        assert (tmp_path / name / "var" / "broker" / "queue").is_dir()


# Each task and the setting that names its queue.
TASK_QUEUES = {
    "search.embed_image": "LOOKALIKE_EMBED_QUEUE",
    "search.send_embedding_batches": "LOOKALIKE_EMBED_QUEUE",
    "search.sync_index": "LOOKALIKE_INDEX_QUEUE",
    "jobs.run_job": "LOOKALIKE_BACKGROUND_QUEUE",
    "search.upkeep": "LOOKALIKE_BACKGROUND_QUEUE",
    "gallery.make_display_copies": "LOOKALIKE_BACKGROUND_QUEUE",
    "search.suggest_tags": "LOOKALIKE_BACKGROUND_QUEUE",
    "search.cluster_gallery": "LOOKALIKE_BACKGROUND_QUEUE",
}

SHOW_ROUTES = ("import json; from config.celery import app; app.loader.import_default_modules(); "
               "print(json.dumps({name: app.amqp.router.route({}, name)['queue'].name for name in app.tasks "
               "if not name.startswith('celery.')}))")


class TestQueues:
    def test_every_task_is_routed_to_the_queue_its_setting_names(self, settings):
        from config.celery import app

        app.loader.import_default_modules()
        # A new task must be given its kind of worker here and in config.settings.base.celery_queues.
        assert {name for name in app.tasks if not name.startswith("celery.")} == set(TASK_QUEUES)
        for task, setting in TASK_QUEUES.items():
            assert app.amqp.router.route({}, task)["queue"].name == getattr(settings, setting), task
        assert settings.CELERY_TASK_DEFAULT_QUEUE == settings.LOOKALIKE_BACKGROUND_QUEUE

    def test_no_message_sent_to_one_queue_reaches_another(self, settings):
        bindings = {(queue.exchange.name, queue.routing_key) for queue in settings.CELERY_TASK_QUEUES}
        assert bindings == {(queue.name, queue.name) for queue in settings.CELERY_TASK_QUEUES}
        assert len(bindings) == 3

    def test_the_queue_settings_choose_where_each_task_goes(self, tmp_path):
        def routes(**queues: str) -> dict[str, str]:
            proc = manage(bare_env(DATA_DIR=str(tmp_path), **queues), "shell", "-c", SHOW_ROUTES)
            assert proc.returncode == 0, proc.stderr
            return json.loads(proc.stdout.strip().splitlines()[-1])

        defaults = {"LOOKALIKE_EMBED_QUEUE": "embed", "LOOKALIKE_INDEX_QUEUE": "index",
                    "LOOKALIKE_BACKGROUND_QUEUE": "background"}
        assert routes() == {task: defaults[setting] for task, setting in TASK_QUEUES.items()}
        chosen = {"LOOKALIKE_EMBED_QUEUE": "embed-gpu", "LOOKALIKE_INDEX_QUEUE": "writer",
                  "LOOKALIKE_BACKGROUND_QUEUE": "jobs"}
        assert routes(**chosen) == {task: chosen[setting] for task, setting in TASK_QUEUES.items()}

    def test_two_kinds_of_worker_given_one_queue_stop_start_up(self, tmp_path):
        proc = manage(bare_env(DATA_DIR=str(tmp_path), LOOKALIKE_INDEX_QUEUE="embed"), "check")
        assert proc.returncode != 0
        assert ("ImproperlyConfigured: The queues must have three different names (LOOKALIKE_EMBED_QUEUE=embed, "
                "LOOKALIKE_INDEX_QUEUE=embed, LOOKALIKE_BACKGROUND_QUEUE=background)") in proc.stderr

    def test_a_malformed_queue_name_stops_start_up(self, tmp_path):
        proc = manage(bare_env(DATA_DIR=str(tmp_path), LOOKALIKE_EMBED_QUEUE="embed,gpu"), "check")
        assert proc.returncode != 0
        assert "LOOKALIKE_EMBED_QUEUE='embed,gpu' is not a queue name" in proc.stderr


class TestProductionSettings:
    def test_they_pass_the_deployment_check(self, tmp_path):
        environ = bare_env(DJANGO_SETTINGS_MODULE="config.settings.production", DATA_DIR=str(tmp_path),
                           SECRET_KEY=PRODUCTION_KEY,
                           ALLOWED_HOSTS="lookalike.example.org")
        proc = manage(environ, "check", "--deploy", "--fail-level", "WARNING")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "no issues" in proc.stdout

    def test_they_refuse_to_start_without_a_secret_key(self, tmp_path):
        environ = bare_env(DJANGO_SETTINGS_MODULE="config.settings.production", DATA_DIR=str(tmp_path))
        proc = manage(environ, "check")
        assert proc.returncode != 0
        assert "Set the environment variable SECRET_KEY" in proc.stderr

    def test_they_refuse_to_start_with_a_key_the_deployment_check_calls_weak(self, tmp_path):
        environ = bare_env(DJANGO_SETTINGS_MODULE="config.settings.production", DATA_DIR=str(tmp_path),
                           SECRET_KEY="k" * 60, ALLOWED_HOSTS="lookalike.example.org")
        proc = manage(environ, "check")
        assert proc.returncode != 0
        assert "ImproperlyConfigured: SECRET_KEY is weak: it has 1 different characters" in proc.stderr


def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def site_services() -> dict[str, dict]:
    """The services that run this project's code (built from it), by name."""
    return {name: service for name, service in compose()["services"].items() if "build" in service}


def command_of(service: dict) -> str:
    return " ".join(service["command"]) if isinstance(service["command"], list) else service["command"]


def settings_read(environ: dict[str, str]) -> set[str]:
    """The environment variables the settings read in a process started with ``environ``."""
    proc = subprocess.run([sys.executable, "-c", "from django.conf import settings; settings.DEBUG; "
                           "from config import env; print(' '.join(sorted(env.NAMES_READ)))"],
                          cwd=PROJECT_ROOT, env=environ, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def documented_settings() -> set[str]:
    """The variables named in the first column of README's Configuration table."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return {name for row in table.splitlines() if row.startswith("| `")
            for name in re.findall(r"`(\w+)`", row.split("|")[1])}


# What every service of the s3 layout needs to reach the object store.
OBJECT_STORE_SETTINGS = {"LOOKALIKE_S3_ENDPOINT_URL", "LOOKALIKE_S3_BUCKET", "LOOKALIKE_S3_REGION",
                         "LOOKALIKE_S3_ACCESS_KEY_ID", "LOOKALIKE_S3_SECRET_ACCESS_KEY",
                         "LOOKALIKE_S3_ADDRESSING_STYLE"}


class TestDockerCompose:
    def test_it_runs_commands_that_exist(self):
        for name, service in site_services().items():
            command = command_of(service)
            assert (PROJECT_ROOT / service["build"] / "Dockerfile").exists()
            if "celery" in command:
                assert "-A config" in command
            if "gunicorn" in command:
                assert "config.wsgi" in command
            for part in command.split("&&"):
                words = part.split()
                if "manage.py" in words:
                    subcommand = words[words.index("manage.py") + 1]
                    listed = subprocess.run([sys.executable, "manage.py", "help", subcommand], cwd=PROJECT_ROOT,
                                            env=bare_env(DATA_DIR=os.environ["DATA_DIR"]), capture_output=True)
                    assert listed.returncode == 0, f"{name}: manage.py {subcommand} does not exist"

    def test_each_worker_takes_the_queues_of_its_kind(self, tmp_path):
        queues = {name: re.search(r"--queues=(\S+)", command_of(service)).group(1)
                  for name, service in site_services().items() if "celery" in command_of(service)}
        proc = manage(bare_env(DATA_DIR=str(tmp_path)), "shell", "-c",
                      "from django.conf import settings as s; "
                      "print(s.LOOKALIKE_EMBED_QUEUE, s.LOOKALIKE_INDEX_QUEUE, s.LOOKALIKE_BACKGROUND_QUEUE)")
        embed, index, background = proc.stdout.split()[-3:]
        assert queues == {"embed": embed, "embed-gpu": embed, "index-writer": index, "background": background}
        workers = {name: command_of(service) for name, service in site_services().items()}
        assert "--pool=solo" in workers["index-writer"]
        assert [name for name, command in workers.items() if "--beat" in command] == ["background"]

    def test_the_gpu_worker_runs_one_process_on_the_nvidia_device_it_reserves(self):
        gpu = site_services()["embed-gpu"]
        assert gpu["profiles"] == ["gpu"]
        assert "--concurrency=1" in command_of(gpu) and "--prefetch-multiplier=1" in command_of(gpu)
        [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
        assert gpu["environment"]["LOOKALIKE_DEVICE"] == "cuda"

    def test_no_two_services_share_a_volume(self):
        users: dict[str, list[str]] = {}
        for name, service in compose()["services"].items():
            for volume in service.get("volumes", []):
                users.setdefault(volume.split(":", 1)[0], []).append(name)
        assert {volume: names for volume, names in users.items() if len(names) > 1} == {}
        # The one-container layout keeps the uploads and the index on its own volume; the s3 layout
        # keeps them in the bucket, and its web and workers have no volume at all.
        assert site_services()["site"]["volumes"] == ["data:/data"]
        assert [name for name, service in site_services().items() if "volumes" in service] == ["site"]
        for name, service in site_services().items():
            if name != "site":
                assert set(service["environment"]) >= OBJECT_STORE_SETTINGS, name

    def test_the_web_replicas_are_reached_through_the_proxy_only(self):
        services = compose()["services"]
        assert services["web"]["deploy"]["replicas"] >= 2
        assert "dynamic a web 8000" in compose()["configs"]["caddyfile"]["content"]
        assert {name: service["ports"] for name, service in services.items() if "ports" in service} == {
            "site": ["127.0.0.1:8000:8000"], "proxy": ["80:80", "443:443"]}
        for service in site_services().values():
            assert service["environment"]["LOOKALIKE_TRUSTED_PROXY_COUNT"] == "1"

    def test_every_variable_it_gives_the_site_is_a_setting_that_is_read_and_documented(self, tmp_path):
        read = settings_read(bare_env(DJANGO_SETTINGS_MODULE="config.settings.production", DATA_DIR=str(tmp_path),
                                      SECRET_KEY=PRODUCTION_KEY))
        documented = documented_settings()
        for name, service in site_services().items():
            given = set(service["environment"])
            assert given - read - {"DJANGO_SETTINGS_MODULE"} == set(), name
            assert given - documented == set(), name


def test_every_setting_read_is_documented(tmp_path):
    for module in ("config.settings.local", "config.settings.production"):
        read = settings_read(bare_env(DJANGO_SETTINGS_MODULE=module, DATA_DIR=str(tmp_path), SECRET_KEY=PRODUCTION_KEY))
        assert "LOOKALIKE_EMBED_QUEUE" in read
        assert read - documented_settings() == set(), module


def compose_environment(service: str, **shell: str) -> dict[str, str]:
    """The environment docker compose gives ``service`` when started from a shell that sets ``shell``:
    ``${NAME:-default}`` and ``${NAME:?message}`` filled in as compose does."""
    def fill(match: re.Match[str]) -> str:
        name, kind, fallback = match.groups()
        if shell.get(name):
            return shell[name]
        assert kind == ":-", f"docker compose would stop: {fallback}"
        return fallback

    return {name: re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", fill, str(value))
            for name, value in compose()["services"][service]["environment"].items()}


class TestDockerComposeAsShipped:
    SHOW = ("from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, "
            "s.CSRF_COOKIE_SECURE, s.LOOKALIKE_TRUSTED_PROXY_COUNT)")

    def web_settings(self, tmp_path, service: str = "site", **shell: str) -> str:
        environ = bare_env(**{**compose_environment(service, SECRET_KEY=PRODUCTION_KEY, **shell),
                              "DATA_DIR": str(tmp_path)})
        proc = manage(environ, "shell", "-c", self.SHOW)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    def test_it_is_https_only_and_counts_clients_behind_one_proxy(self, tmp_path):
        assert self.web_settings(tmp_path) == "True True True 1"
        keys = {"LOOKALIKE_S3_ACCESS_KEY_ID": "site", "LOOKALIKE_S3_SECRET_ACCESS_KEY": "a-secret-of-the-site"}
        assert self.web_settings(tmp_path, "web", **keys) == "True True True 1"

    def test_the_s3_layout_stops_without_the_bucket_keys(self):
        with pytest.raises(AssertionError, match="docker compose would stop: set LOOKALIKE_S3_ACCESS_KEY_ID"):
            compose_environment("web", SECRET_KEY=PRODUCTION_KEY)

    def test_one_switch_makes_a_plain_http_trial(self, tmp_path):
        assert self.web_settings(tmp_path, HTTPS_ONLY="false") == "False False False 1"
        assert "HTTPS_ONLY=false" in (PROJECT_ROOT / "docker-compose.yml").read_text()
        assert "HTTPS_ONLY=false" in (PROJECT_ROOT / "README.md").read_text()


class TestCache:
    """Rate-limit counters live in the cache, which every web process must share."""

    def cache_setting(self, environ: dict[str, str]) -> str:
        proc = manage(environ, "shell", "-c", "from django.conf import settings; print(settings.CACHES['default'])")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def test_it_is_redis_when_redis_is_configured(self, tmp_path):
        shown = self.cache_setting(bare_env(DATA_DIR=str(tmp_path), REDIS_URL="redis://cache.example:6379/3"))
        assert "RedisCache" in shown and "redis://cache.example:6379/3" in shown

    def test_it_is_files_in_the_data_directory_otherwise(self, tmp_path):
        shown = self.cache_setting(bare_env(DATA_DIR=str(tmp_path)))
        assert "FileBasedCache" in shown and str(tmp_path / "var" / "cache") in shown

    def test_a_malformed_rate_limit_stops_start_up(self, tmp_path):
        proc = manage(bare_env(DATA_DIR=str(tmp_path), LOOKALIKE_RATE_LIMIT_SEARCH="lots"), "check")
        assert proc.returncode != 0
        assert "LOOKALIKE_RATE_LIMIT_SEARCH='lots' is not a rate" in proc.stderr


class TestOutlierModerationSetting:
    @pytest.mark.parametrize(("raw", "message"), [
        ("high", "LOOKALIKE_MODERATION_OUTLIER_SCORE='high' is not a number."),
        ("-5", "LOOKALIKE_MODERATION_OUTLIER_SCORE=-5.0 is below its minimum of 0.0."),
        ("150", "LOOKALIKE_MODERATION_OUTLIER_SCORE=150.0 is above its maximum of 100.0."),
        ("nan", "LOOKALIKE_MODERATION_OUTLIER_SCORE='nan' is not a finite number."),
    ])
    def test_a_bad_value_stops_start_up_and_says_why(self, tmp_path, raw, message):
        proc = manage(bare_env(DATA_DIR=str(tmp_path), LOOKALIKE_MODERATION_OUTLIER_SCORE=raw), "check")
        assert proc.returncode != 0
        assert f"ImproperlyConfigured: {message}" in proc.stderr

    def test_unset_it_is_off_and_a_percentile_is_kept(self, tmp_path):
        script = "from django.conf import settings; print(settings.LOOKALIKE_MODERATION_OUTLIER_SCORE)"
        for raw, shown in (("", "None"), ("99.5", "99.5")):
            proc = manage(bare_env(DATA_DIR=str(tmp_path), LOOKALIKE_MODERATION_OUTLIER_SCORE=raw), "shell", "-c",
                          script)
            assert proc.stdout.strip().splitlines()[-1] == shown, proc.stderr


class TestClusterSettings:
    def test_beat_groups_the_gallery_daily_by_default_every_interval_set_and_never_at_zero(self, tmp_path):
        script = ("import json; from django.conf import settings; print(json.dumps([settings.LOOKALIKE_CLUSTER_COUNT, "
                  "settings.CELERY_BEAT_SCHEDULE.get('clusters')]))")
        for extra, expected in (({}, [0, {"task": "search.cluster_gallery", "schedule": 86400.0}]),
                                ({"LOOKALIKE_CLUSTER_INTERVAL": "3600", "LOOKALIKE_CLUSTER_COUNT": "12"},
                                 [12, {"task": "search.cluster_gallery", "schedule": 3600.0}]),
                                ({"LOOKALIKE_CLUSTER_INTERVAL": "0"}, [0, None])):
            proc = manage(bare_env(DATA_DIR=str(tmp_path), **extra), "shell", "-c", script)
            assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected, proc.stderr

    def test_a_negative_count_stops_start_up(self, tmp_path):
        proc = manage(bare_env(DATA_DIR=str(tmp_path), LOOKALIKE_CLUSTER_COUNT="-1"), "check")
        assert "LOOKALIKE_CLUSTER_COUNT=-1 is below its minimum of 0." in proc.stderr
