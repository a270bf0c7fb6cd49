"""Settings for a deployment behind a TLS-terminating proxy. Every secret comes from the environment."""
from config.env import env_bool, env_int, env_list, env_secret_key
from config.settings.base import *  # noqa: F403

DEBUG = False
# Start-up refuses a key that `check --deploy` would only warn about.
SECRET_KEY = env_secret_key("SECRET_KEY")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
