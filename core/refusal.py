"""The one shape of everything the site refuses to do for a person: a stable code for programs, a
message for people, and, when trying again later may succeed, after how many seconds."""
from __future__ import annotations


class Refusal(Exception):
    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
