"""The request of a view that only a signed-in user reaches (``login_required``, or an API endpoint
that refuses anonymous requests): its user is a user account, never ``AnonymousUser``."""
from django.contrib.auth.models import User
from django.http import HttpRequest


class SignedInRequest(HttpRequest):
    user: User
