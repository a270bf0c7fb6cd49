"""Settings shared by every environment. Each value that an operator may change is read from
the environment (see README.md, "Configuration")."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

from config.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_networks,
    env_optional,
    env_optional_float,
    env_path,
    env_queue,
    env_rate,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parents[2]

# All mutable state lives under DATA_DIR when it is set: DATA_DIR/media holds the uploads and
# DATA_DIR/var the database, index snapshots, broker queue and model weights.
DATA_DIR = env_path("DATA_DIR", BASE_DIR)
MEDIA_ROOT = DATA_DIR / "media"
VAR_DIR = DATA_DIR / "var"
INDEX_DIR = VAR_DIR / "index"
# With an object store: this machine's copies of the index snapshots downloaded from it.
INDEX_CACHE_DIR = VAR_DIR / "index-cache"
# Lock files that count the searches by URL in flight, across the web processes of this machine.
URL_FETCH_SLOTS_DIR = VAR_DIR / "url-fetches"
TORCH_HOME = env_path("TORCH_HOME", VAR_DIR / "torch")

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "jobs",
    "gallery",
    "search",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Before CSRF's check, which reads the body.
    "config.request_body.RequestBodyLimitMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.security.ContentSecurityPolicyMiddleware",
    # Last, as django-axes asks: it turns a sign-in refused for lockout into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Security headers on every response, in every environment.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "gallery.context_processors.site",
            ],
        },
    },
]


def _database() -> dict[str, Any]:
    url = env_optional("DATABASE_URL")
    if url:
        return dict(dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))
    # SQLite creates the file but not its folder.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db.sqlite3",
        # A worker and the web process write at once: WAL lets readers go on while one writes,
        # and IMMEDIATE transactions queue writers instead of failing with "database is locked".
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes refuses sign-ins (the site's and the admin's) once an account, or a client address,
# has LOOKALIKE_SIGNIN_FAILURE_LIMIT failures within LOOKALIKE_SIGNIN_LOCKOUT_SECONDS of each other;
# the lockout ends that long after the last failure. API tokens are not passwords and are not counted.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOOKALIKE_SIGNIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("LOOKALIKE_SIGNIN_LOCKOUT_SECONDS", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# The address the rate limits use, so that clients behind the site's proxy are told apart.
AXES_CLIENT_IP_CALLABLE = "config.ratelimit.client_address"
AXES_LOCKOUT_CALLABLE = "config.ratelimit.signin_locked_out_page"
# Tries during a lockout do not lengthen it: the account's owner knows when they may sign in again.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Record failed sign-ins only, not every successful one.
AXES_DISABLE_ACCESS_LOG = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "gallery:index"
LOGOUT_REDIRECT_URL = "gallery:index"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# An S3-compatible object store (Amazon S3, Ceph's RADOS Gateway, MinIO, ...) that every host
# shares. With a bucket set, uploads, their copies and the index snapshots live in it, so web
# processes and workers on different hosts need no shared folder; without one, under DATA_DIR.
LOOKALIKE_S3_BUCKET = env_optional("LOOKALIKE_S3_BUCKET")
# Unset: Amazon S3 itself.
LOOKALIKE_S3_ENDPOINT_URL = env_optional("LOOKALIKE_S3_ENDPOINT_URL")
LOOKALIKE_S3_REGION = env_str("LOOKALIKE_S3_REGION", "us-east-1")
# Unset: boto3's own search for credentials (an instance role, ~/.aws, AWS_* variables).
LOOKALIKE_S3_ACCESS_KEY_ID = env_optional("LOOKALIKE_S3_ACCESS_KEY_ID")
LOOKALIKE_S3_SECRET_ACCESS_KEY = env_optional("LOOKALIKE_S3_SECRET_ACCESS_KEY")
# "path" for most self-hosted servers, which have no wildcard DNS name per bucket.
LOOKALIKE_S3_ADDRESSING_STYLE = env_choice("LOOKALIKE_S3_ADDRESSING_STYLE", ("auto", "path", "virtual"), "auto")

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    # Uploads and their copies: in the bucket when one is set (config/media_storage.py), else under MEDIA_ROOT.
    "default": {"BACKEND": "config.media_storage.MediaStorage" if LOOKALIKE_S3_BUCKET
                else "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
MEDIA_URL = "/media/"
# Uploads bigger than this are spooled to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "gallery": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO"), "propagate": False},
        "search": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO"), "propagate": False},
        "api": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO"), "propagate": False},
        "jobs": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO"), "propagate": False},
    },
}

# Celery: Redis when REDIS_URL is set, otherwise kombu's filesystem transport under VAR_DIR,
# so that a fresh checkout runs with nothing else installed.
REDIS_URL = env_optional("REDIS_URL")
CELERY_BROKER_URL = env_optional("CELERY_BROKER_URL") or REDIS_URL or "filesystem://localhost//"
BROKER_DIR = VAR_DIR / "broker"
EMBEDDED_BROKER = CELERY_BROKER_URL.startswith("filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"data_folder_in": str(BROKER_DIR / "queue"), "data_folder_out": str(BROKER_DIR / "queue"),
     "control_folder": str(BROKER_DIR / "control"), "polling_interval": 0.05}
    if EMBEDDED_BROKER
    else {"visibility_timeout": 3600}
)
if EMBEDDED_BROKER:
    # kombu's filesystem transport, writing each message whole before renaming it into the queue.
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"
# The cache holds the rate-limit counters, which every web process must share: Redis when it is
# configured, otherwise files under VAR_DIR, which all processes on one machine see.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(VAR_DIR / "cache")}
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task is acknowledged only once it has finished, and a killed worker's task goes back to
# the queue; every task is idempotent, so running one twice is harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery closes the database connections before and after every task unless this is set, and each
# task then starts a new PostgreSQL session. Set, connections live as CONN_MAX_AGE says, checked
# before and after each task as Django checks them around a request (config.celery).
CELERY_DB_REUSE_MAX = 1_000_000
# The prefork pool, whose processes on the embedded broker wait for a task without holding the lock
# of the pipe they share: one killed while waiting would stop the worker for good (config/pool.py).
CELERY_WORKER_POOL = "config.pool:TaskPool"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# A pool process loads the model as it starts (config.celery), which takes seconds on a busy machine:
# the 4 s Celery gives a process to start would kill it.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 120


def celery_queues(*, embed: str, index: str, background: str) -> tuple[tuple[Queue, ...], dict[str, dict[str, str]]]:
    """The site's queues, one for each kind of worker, and the route of every task to its queue.

    - ``embed``: ``search.embed_image`` (and ``search.send_embedding_batches``, the message of a
      store batch, which becomes one per embedding batch). Every embedding worker, on a CPU or a
      GPU, takes this one queue; each task claims as many queued images as its worker's ``LOOKALIKE_EMBED_BATCH_SIZE``,
      so a GPU worker that joins takes large batches while CPU workers take small ones, and no
      sender needs to know which hardware is up.
    - ``index``: ``search.sync_index``, for the one index writer.
    - ``background``: everything else (background jobs, upkeep, display copies, tag suggestions, the
      scheduled clustering),
      which needs neither the model loaded in advance nor the writer's index, and must not hold a
      GPU worker's one process.

    A worker started without ``--queues`` takes them all, which suits one small machine.
    """
    names = {"LOOKALIKE_EMBED_QUEUE": embed, "LOOKALIKE_INDEX_QUEUE": index,
             "LOOKALIKE_BACKGROUND_QUEUE": background}
    if len(set(names.values())) < len(names):
        given = ", ".join(f"{setting}={queue}" for setting, queue in names.items())
        raise ImproperlyConfigured(f"The queues must have three different names ({given}): each kind of worker "
                                   "takes its own, and a worker may take several with --queues=A,B.")
    routes = {
        "search.embed_image": embed,
        # Behind the embeddings already queued, and sent on as theirs are: no worker waits for it.
        "search.send_embedding_batches": embed,
        "search.sync_index": index,
        "jobs.run_job": background,
        "search.upkeep": background,
        "gallery.make_display_copies": background,
        "search.suggest_tags": background,
        "search.cluster_gallery": background,
    }
    # Each queue with an exchange and key of its own: unnamed, Celery would bind all three to the
    # default queue's exchange and key, and a message sent there would reach every queue.
    queues = tuple(Queue(name, Exchange(name), routing_key=name) for name in (embed, index, background))
    return queues, {task: {"queue": queue} for task, queue in routes.items()}


LOOKALIKE_EMBED_QUEUE = env_queue("LOOKALIKE_EMBED_QUEUE", "embed")
LOOKALIKE_INDEX_QUEUE = env_queue("LOOKALIKE_INDEX_QUEUE", "index")
LOOKALIKE_BACKGROUND_QUEUE = env_queue("LOOKALIKE_BACKGROUND_QUEUE", "background")
CELERY_TASK_QUEUES, CELERY_TASK_ROUTES = celery_queues(
    embed=LOOKALIKE_EMBED_QUEUE, index=LOOKALIKE_INDEX_QUEUE, background=LOOKALIKE_BACKGROUND_QUEUE)
# A task without a route of its own goes where no GPU worker's one process waits for embeddings.
CELERY_TASK_DEFAULT_QUEUE = LOOKALIKE_BACKGROUND_QUEUE

# The product.
LOOKALIKE_BACKBONE = env_str("LOOKALIKE_BACKBONE", "efficientnet_lite0")
LOOKALIKE_DEVICE = env_str("LOOKALIKE_DEVICE", "auto")
LOOKALIKE_EMBED_BATCH_SIZE = env_int("LOOKALIKE_EMBED_BATCH_SIZE", 8, minimum=1)
LOOKALIKE_JPEG_DECODER = env_str("LOOKALIKE_JPEG_DECODER", "auto")
LOOKALIKE_MAX_UPLOAD_BYTES = env_int("LOOKALIKE_MAX_UPLOAD_BYTES", 40 * 1024 * 1024, minimum=1)
LOOKALIKE_MAX_UPLOAD_FILES = env_int("LOOKALIKE_MAX_UPLOAD_FILES", 200, minimum=1)
# Django refuses a request with more files than this before any view runs; leave room above
# the site's own limit so that the upload view can answer with a clear message instead.
DATA_UPLOAD_MAX_NUMBER_FILES = 2 * LOOKALIKE_MAX_UPLOAD_FILES
# Per user, over everything they have stored; 0 means no limit.
LOOKALIKE_UPLOAD_QUOTA_IMAGES = env_int("LOOKALIKE_UPLOAD_QUOTA_IMAGES", 0, minimum=0)
LOOKALIKE_UPLOAD_QUOTA_BYTES = env_int("LOOKALIKE_UPLOAD_QUOTA_BYTES", 0, minimum=0)
LOOKALIKE_MAX_IMAGE_PIXELS = env_int("LOOKALIKE_MAX_IMAGE_PIXELS", 60_000_000, minimum=1)
LOOKALIKE_PUBLIC_GALLERY = env_bool("LOOKALIKE_PUBLIC_GALLERY", True)
LOOKALIKE_SEARCH_DEFAULT_K = env_int("LOOKALIKE_SEARCH_DEFAULT_K", 24, minimum=1)
LOOKALIKE_SEARCH_MAX_K = env_int("LOOKALIKE_SEARCH_MAX_K", 500, minimum=1)
# A query picture that nothing close was found for is searched again turned and inside (search/selectors.py).
LOOKALIKE_SEARCH_SECOND_LOOK = env_bool("LOOKALIKE_SEARCH_SECOND_LOOK", True)
# Unset: the threshold calibrated for the backbone (search/verdicts.py).
LOOKALIKE_EDITED_COPY_THRESHOLD = env_optional_float("LOOKALIKE_EDITED_COPY_THRESHOLD", minimum=-1.0, maximum=1.0)
LOOKALIKE_URL_FETCH_TIMEOUT = env_float("LOOKALIKE_URL_FETCH_TIMEOUT", 10.0, minimum=0.1)
# Private networks that search-by-URL may fetch from anyway (an intranet image server, say).
LOOKALIKE_URL_FETCH_ALLOWED_NETWORKS = env_networks("LOOKALIKE_URL_FETCH_ALLOWED_NETWORKS")
# Searches by URL fetching at once, over all web processes of a machine; more are answered 503. Keep
# it below gunicorn's --threads, so that every web process has threads left whatever the fetches do.
LOOKALIKE_URL_FETCH_MAX_IN_FLIGHT = env_int("LOOKALIKE_URL_FETCH_MAX_IN_FLIGHT", 2, minimum=1)
LOOKALIKE_INDEX_M = env_int("LOOKALIKE_INDEX_M", 16, minimum=2)
LOOKALIKE_INDEX_EF_CONSTRUCTION = env_int("LOOKALIKE_INDEX_EF_CONSTRUCTION", 200, minimum=1)
LOOKALIKE_INDEX_EF_SEARCH = env_int("LOOKALIKE_INDEX_EF_SEARCH", 256, minimum=1)
LOOKALIKE_SNAPSHOT_INTERVAL = env_float("LOOKALIKE_SNAPSHOT_INTERVAL", 2.0, minimum=0.0)
# With an object store: how often each process asks it whether a newer index snapshot is out.
LOOKALIKE_SNAPSHOT_POLL_SECONDS = env_float("LOOKALIKE_SNAPSHOT_POLL_SECONDS", 2.0, minimum=0.0)
LOOKALIKE_EMBED_LEASE_SECONDS = env_int("LOOKALIKE_EMBED_LEASE_SECONDS", 600, minimum=1)
# Rate limits per signed-in user, or per client address for anonymous requests ("0" turns one off).
LOOKALIKE_RATE_LIMIT_SEARCH = env_rate("LOOKALIKE_RATE_LIMIT_SEARCH", "60/minute")
LOOKALIKE_RATE_LIMIT_UPLOAD = env_rate("LOOKALIKE_RATE_LIMIT_UPLOAD", "300/hour")  # counts files
LOOKALIKE_RATE_LIMIT_URL_FETCH = env_rate("LOOKALIKE_RATE_LIMIT_URL_FETCH", "20/minute")
# How many reverse proxies in front of the site append to X-Forwarded-For; 0 trusts only REMOTE_ADDR.
LOOKALIKE_TRUSTED_PROXY_COUNT = env_int("LOOKALIKE_TRUSTED_PROXY_COUNT", 0, minimum=0)
LOOKALIKE_EMBED_MAX_ATTEMPTS = env_int("LOOKALIKE_EMBED_MAX_ATTEMPTS", 3, minimum=1)
LOOKALIKE_EMBED_RETRY_SECONDS = env_float("LOOKALIKE_EMBED_RETRY_SECONDS", 30.0, minimum=0.0)
LOOKALIKE_STUCK_AFTER_SECONDS = env_int("LOOKALIKE_STUCK_AFTER_SECONDS", 1800, minimum=1)
LOOKALIKE_JOB_STALL_SECONDS = env_int("LOOKALIKE_JOB_STALL_SECONDS", 600, minimum=1)
LOOKALIKE_UPKEEP_INTERVAL = env_float("LOOKALIKE_UPKEEP_INTERVAL", 300.0, minimum=1.0)
LOOKALIKE_MODERATION = env_bool("LOOKALIKE_MODERATION", False)
# Uploads whose outlier score (0 to 100, core/knn_outliers.py) is at or above this are held for
# moderation as with LOOKALIKE_MODERATION; unset: none are.
LOOKALIKE_MODERATION_OUTLIER_SCORE = env_optional_float("LOOKALIKE_MODERATION_OUTLIER_SCORE", minimum=0.0,
                                                        maximum=100.0)
# Tag suggestions below this confidence are not offered; at or above the auto-apply one (unset: never)
# they become tags at once.
LOOKALIKE_TAG_SUGGESTION_MIN_CONFIDENCE = env_float("LOOKALIKE_TAG_SUGGESTION_MIN_CONFIDENCE", 0.5, minimum=0.0)
LOOKALIKE_TAG_SUGGESTION_AUTO_APPLY = env_optional_float("LOOKALIKE_TAG_SUGGESTION_AUTO_APPLY", minimum=0.0,
                                                         maximum=1.0)
# Clusters of the "Browse" page (search/clusters.py): how many (0: sqrt(n / 2) of the n indexed
# images, at most 100), and the seconds between two runs of the clustering job that beat starts (0: none).
LOOKALIKE_CLUSTER_COUNT = env_int("LOOKALIKE_CLUSTER_COUNT", 0, minimum=0)
LOOKALIKE_CLUSTER_INTERVAL = env_float("LOOKALIKE_CLUSTER_INTERVAL", 86400.0, minimum=0.0)

# Periodic upkeep, run by `celery -A config beat` (or `worker --beat`): see `python manage.py upkeep`.
CELERY_BEAT_SCHEDULE = {
    "upkeep": {"task": "search.upkeep", "schedule": LOOKALIKE_UPKEEP_INTERVAL},
}
if LOOKALIKE_CLUSTER_INTERVAL:
    CELERY_BEAT_SCHEDULE["clusters"] = {"task": "search.cluster_gallery", "schedule": LOOKALIKE_CLUSTER_INTERVAL}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
