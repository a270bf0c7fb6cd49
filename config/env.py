"""Settings read from the environment. A malformed value stops start-up and names the variable."""
from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.core.checks.security.base import (
    SECRET_KEY_INSECURE_PREFIX,
    SECRET_KEY_MIN_LENGTH,
    SECRET_KEY_MIN_UNIQUE_CHARACTERS,
)
from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T", int, float)
# What a setting is when it is not set: a number like T, or None for an optional one.
D = TypeVar("D")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")

# Every variable the settings have read, so that what a deployment sets can be checked against it.
NAMES_READ: set[str] = set()


def _raw(name: str) -> str | None:
    NAMES_READ.add(name)
    value = os.environ.get(name, "").strip()
    return value or None


def env_str(name: str, default: str | None = None) -> str:
    value = _raw(name)
    if value is not None:
        return value
    if default is None:
        raise ImproperlyConfigured(f"Set the environment variable {name}.")
    return default


def env_secret_key(name: str) -> str:
    """A required secret key that Django's deployment check would not call weak (security.W009)."""
    key = env_str(name)
    problems = []
    if len(key) < SECRET_KEY_MIN_LENGTH:
        problems.append(f"has {len(key)} characters, not the {SECRET_KEY_MIN_LENGTH} or more it needs")
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        problems.append(f"has {len(set(key))} different characters, not the {SECRET_KEY_MIN_UNIQUE_CHARACTERS} "
                        "or more it needs")
    if key.startswith(SECRET_KEY_INSECURE_PREFIX):
        problems.append(f"starts with {SECRET_KEY_INSECURE_PREFIX!r}, as the keys Django makes for development do")
    if problems:
        raise ImproperlyConfigured(
            f"{name} is weak: it {' and '.join(problems)}. Set it to a long random string, such as the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'.")
    return key


def env_optional(name: str) -> str | None:
    return _raw(name)


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean; use true or false.")


def _number(name: str, default: D, minimum: T | None, parse: Callable[[str], T], noun: str) -> T | D:
    value = _raw(name)
    if value is None:
        return default
    try:
        number = parse(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not {noun}.") from None
    if not math.isfinite(number):
        # NaN compares false with every bound and every value: it would pass the checks and then do nothing.
        raise ImproperlyConfigured(f"{name}={value!r} is not a finite number.")
    if minimum is not None and number < minimum:  # type: ignore[operator]
        raise ImproperlyConfigured(f"{name}={number} is below its minimum of {minimum}.")
    return number


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    return _number(name, default, minimum, int, "an integer")


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    return _number(name, default, minimum, float, "a number")


def env_optional_float(name: str, *, minimum: float, maximum: float) -> float | None:
    number = _number(name, None, minimum, float, "a number")
    if number is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above its maximum of {maximum}.")
    return number


def env_networks(name: str) -> list[str]:
    """IP networks in CIDR notation (``10.0.0.0/8,192.168.1.5/32``), checked here rather than at first use."""
    networks = env_list(name, [])
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ImproperlyConfigured(f"{name}: {network!r} is not an IP network such as 10.0.0.0/8.") from None
    return networks


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_queue(name: str, default: str) -> str:
    """A Celery queue name, which workers are given in a comma-separated ``--queues`` list."""
    value = env_str(name, default)
    if not _QUEUE_NAME.match(value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a queue name; use letters, digits and . _ : - only, "
                                   "starting with a letter or digit.")
    return value


def env_path(name: str, default: Path) -> Path:
    value = _raw(name)
    return Path(value).expanduser().resolve() if value else default


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)
_PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(name: str, value: str) -> tuple[int, int] | None:
    """``"60/minute"`` as (60, 60): how many, per how many seconds. "0" or empty means no limit."""
    if value.strip() in ("", "0"):
        return None
    match = _RATE.match(value)
    if not match:
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a rate; write it as COUNT/PERIOD with a period of second, minute, hour "
            "or day (e.g. 60/minute), or 0 for no limit."
        )
    count = int(match.group(1))
    return (count, _PERIOD_SECONDS[match.group(2).lower()]) if count else None


def env_rate(name: str, default: str) -> str:
    """A rate such as "60/minute", checked now and kept as written (see ``parse_rate``)."""
    value = _raw(name) or default
    parse_rate(name, value)
    return value
