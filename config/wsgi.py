import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")

application = get_wsgi_application()

# Each web process (gunicorn imports this module in each worker) loads the model once it serves,
# in the background: its first search by picture then finds it loaded.
from search.runtime import embedder_warm_in_background  # noqa: E402

embedder_warm_in_background()
