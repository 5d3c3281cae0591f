"""`token`: `{"token": "<jwt>"}` for the logged-in user, for a browser
client given a token function, e.g.

    websocketClient.configure({token: () => fetch('/tickwire/token/')
        .then((r) => r.json()).then((j) => j.token)});

The client asks it before every connection attempt, so a page left open
past TOKEN_TTL reconnects with a fresh token. An anonymous request gets
401 `{"error": ...}`. The answer is never cached.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods

from tickwire.tokens import mint_token


@require_http_methods(["GET", "POST"])
def token(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not user.is_authenticated:
        response = JsonResponse({"error": "not logged in"}, status=401)
    else:
        response = JsonResponse({"token": mint_token(user)})
    add_never_cache_headers(response)
    return response
