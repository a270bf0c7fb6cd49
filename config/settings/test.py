"""Settings for the test suite. Worker processes started by the tests load this module too and
inherit DATA_DIR, so they share the test's database and index directory."""
import os
import tempfile
import uuid

os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="lookalike-test-"))
# A name of this test session's own, for its queues and cache keys, so that two sessions sharing
# a Redis never take each other's tasks.
os.environ.setdefault("LOOKALIKE_TEST_QUEUE", f"lookalike-test-{uuid.uuid4().hex[:12]}")
# Set in the environment, so that the workers a test starts (which inherit it) take the same queues.
os.environ.update({f"LOOKALIKE_{kind.upper()}_QUEUE": f"{os.environ['LOOKALIKE_TEST_QUEUE']}-{kind}"
                   for kind in ("embed", "index", "background")})

from config.env import env_rate
from config.settings.base import *  # noqa: F403
from config.settings.base import CACHES, DATABASES, VAR_DIR

SECRET_KEY = "test-only-secret-key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The live server answers each request in a thread of its own; a connection kept open for reuse
# by a finished thread would block dropping the test database at the end.
DATABASES["default"]["CONN_MAX_AGE"] = 0

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One file for the test database, so that worker processes can open it.
    DATABASES["default"]["NAME"] = VAR_DIR / "test.sqlite3"
    DATABASES["default"]["TEST"] = {"NAME": VAR_DIR / "test.sqlite3"}

WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
LOOKALIKE_SNAPSHOT_INTERVAL = 0.2
# Each query asks the object store for the newest snapshot: tests see a publish at once.
LOOKALIKE_SNAPSHOT_POLL_SECONDS = 0.0
# Cache keys of this session's own (a Redis may be shared); a test may pass another prefix to
# the processes it starts through LOOKALIKE_TEST_CACHE_PREFIX.
CACHES["default"]["KEY_PREFIX"] = os.environ.get("LOOKALIKE_TEST_CACHE_PREFIX") or os.environ["LOOKALIKE_TEST_QUEUE"]
# No rate limits unless a test, or a process it starts, sets them.
LOOKALIKE_RATE_LIMIT_SEARCH = env_rate("LOOKALIKE_RATE_LIMIT_SEARCH", "0")
LOOKALIKE_RATE_LIMIT_UPLOAD = env_rate("LOOKALIKE_RATE_LIMIT_UPLOAD", "0")
LOOKALIKE_RATE_LIMIT_URL_FETCH = env_rate("LOOKALIKE_RATE_LIMIT_URL_FETCH", "0")
