"""Settings for `make run` and the management commands on a workstation."""
import secrets

from config.env import env_optional
from config.settings.base import *  # noqa: F403
from config.settings.base import VAR_DIR


def _persistent_secret_key() -> str:
    # A key generated once per data directory keeps sessions valid across restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_optional("SECRET_KEY") or _persistent_secret_key()

# Serve static files straight from the source folders: no collectstatic step for a local run.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
