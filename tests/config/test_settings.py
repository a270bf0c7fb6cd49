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

    def test_lists_are_comma_separated(self, monkeypatch):
        monkeypatch.setenv("SOME_HOSTS", "a.example, b.example,")
        assert env.env_list("SOME_HOSTS", []) == ["a.example", "b.example"]


def bare_env(**extra: str) -> dict[str, str]:
    """An environment with no services configured, as on a fresh machine."""
    environ = {k: v for k, v in os.environ.items()
               if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE",
                            "LOOKALIKE_TEST_QUEUE"}}
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


def test_docker_compose_runs_commands_that_exist():
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"web", "worker", "redis", "postgres"} <= set(services)
    for name in ("web", "worker"):
        service = services[name]
        command = " ".join(service["command"]) if isinstance(service["command"], list) else service["command"]
        assert "DATA_DIR" in service["environment"]
        assert any(volume.endswith(":/data") for volume in service["volumes"])
        if "celery" in command:
            assert "-A config" in command
            assert (PROJECT_ROOT / "config" / "celery.py").exists()
        if "gunicorn" in command:
            assert "config.wsgi" in command
            assert (PROJECT_ROOT / "config" / "wsgi.py").exists()
        for part in command.split("&&"):
            words = part.split()
            if "manage.py" in words:
                subcommand = words[words.index("manage.py") + 1]
                listed = subprocess.run([sys.executable, "manage.py", "help", subcommand], cwd=PROJECT_ROOT,
                                        env=bare_env(DATA_DIR=os.environ["DATA_DIR"]), capture_output=True)
                assert listed.returncode == 0, f"{name}: manage.py {subcommand} does not exist"
    assert (PROJECT_ROOT / services["web"]["build"] / "Dockerfile").exists()


def compose_environment(service: str, **shell: str) -> dict[str, str]:
    """The environment docker compose gives ``service`` when started from a shell that sets ``shell``:
    ``${NAME:-default}`` and ``${NAME:?message}`` filled in as compose does."""
    def fill(match: re.Match[str]) -> str:
        name, kind, fallback = match.groups()
        if shell.get(name):
            return shell[name]
        assert kind == ":-", f"docker compose would stop: {fallback}"
        return fallback

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    return {name: re.sub(r"\$\{(\w+)(:-|:\?)([^}]*)\}", fill, str(value))
            for name, value in compose["services"][service]["environment"].items()}


class TestDockerComposeAsShipped:
    SHOW = ("from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, "
            "s.CSRF_COOKIE_SECURE, s.LOOKALIKE_TRUSTED_PROXY_COUNT)")

    def web_settings(self, tmp_path, **shell: str) -> str:
        environ = bare_env(**{**compose_environment("web", SECRET_KEY=PRODUCTION_KEY, **shell),
                              "DATA_DIR": str(tmp_path)})
        proc = manage(environ, "shell", "-c", self.SHOW)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    def test_it_is_https_only_and_counts_clients_behind_one_proxy(self, tmp_path):
        assert self.web_settings(tmp_path) == "True True True 1"

    def test_the_web_port_is_reachable_only_through_a_proxy_on_this_host(self):
        compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
        assert compose["services"]["web"]["ports"] == ["127.0.0.1:8000:8000"]
        for name, service in compose["services"].items():
            assert name == "web" or "ports" not in service, name

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
