# The two commands a person needs: `make run` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install install-browser install-wordnet run test lint

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt | $(PY)
	$(PY) -m pip install --no-input -r requirements.txt
	touch $(INSTALLED)

install: $(INSTALLED)

# Debian's Chromium and its driver drive the browser tests; Playwright's own download does not work offline.
install-browser:
	@bin/ensure-chromium

# WordNet, from which bin/imagenet-words derives core/data/imagenet_words.json; a test makes it again.
install-wordnet:
	@bin/ensure-wordnet

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap_admin
	DEBUG=$${DEBUG:-true} $(PY) manage.py serve

# With REDIS_URL (and DATABASE_URL) set, the suite runs on Redis (and PostgreSQL); the tests that
# go through a real worker then run once more on the embedded broker and SQLite.
test: install install-browser install-wordnet
	$(PY) -m pytest
	@if [ -n "$$REDIS_URL$$DATABASE_URL" ]; then \
		echo "== worker tests again on the embedded broker and SQLite =="; \
		env -u REDIS_URL -u DATABASE_URL -u CELERY_BROKER_URL $(PY) -m pytest -m worker; \
	fi

# ruff, mypy over the project (strict on core/ and lint/), and the import contracts in pyproject.toml.
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
