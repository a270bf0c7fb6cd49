"""The account page, where a signed-in user makes and revokes their own API tokens."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from api import selectors, services
from api.models import TOKEN_NAME_MAX_LENGTH
from config.signed_in import SignedInRequest


def _render_account(request: SignedInRequest, context: dict[str, object], status: int = 200) -> HttpResponse:
    context["tokens"] = selectors.api_token_list_active(user=request.user)
    context["name_max_length"] = TOKEN_NAME_MAX_LENGTH
    return render(request, "api/account.html", context, status=status)


@login_required
@require_GET
@never_cache
def account(request: SignedInRequest) -> HttpResponse:
    return _render_account(request, {})


@login_required
@require_POST
@never_cache
def token_create(request: SignedInRequest) -> HttpResponse:
    name = request.POST.get("name", "")
    try:
        token, secret = services.api_token_create(user=request.user, name=name)
    except ValidationError as exc:
        return _render_account(request, {"error": exc.messages[0], "name": name}, status=400)
    # Answered here rather than after a redirect: the secret exists in this response only.
    return _render_account(request, {"new_token": token, "secret": secret}, status=201)


@login_required
@require_POST
def token_revoke(request: SignedInRequest, token_id: int) -> HttpResponse:
    token = services.api_token_revoke(token_id=token_id, user=request.user)
    messages.success(request, f"Revoked the token “{token.name}”; programs using it can no longer sign in.")
    return redirect("api:account")
