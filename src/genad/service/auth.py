"""Optional bearer-token authentication for every /v1 route.

    app = create_app(storage, token="…")      # or `genad serve --token` / GENAD_SERVICE_TOKEN

With a token, a request under /v1 must carry `Authorization: Bearer <token>`; otherwise it is
answered 401 with `WWW-Authenticate: Bearer` before any route runs (nothing is read, stored or
scored). Tokens are compared in constant time (hmac.compare_digest). The page (`/`), its
files under `/static`, the API docs (`/docs`, `/redoc`, `/openapi.json`) and `/healthz` stay
public: they hold no data (`/healthz` then leaves out the number of inspections). The token is
never logged: it travels only in a header, which uvicorn's access log does not print.

The web page asks for the token once and keeps it in the tab's sessionStorage (or reads it
from the URL fragment, `http://host:8000/#token=…`, which browsers never send to the server),
then sends it with every call, pictures included (fetched, shown as blob URLs).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable

from genad.errors import GenadError

#: what the service protects: the JSON API and everything it serves (pictures, reports)
PROTECTED_PREFIX = "/v1"
MIN_TOKEN_CHARS = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII without spaces: fits in a header as is


def check_token(token: str) -> str:
    """A usable token (GenadError otherwise): at least 16 printable characters, no spaces."""
    if len(token) < MIN_TOKEN_CHARS or len(token) > 4096 or not _TOKEN.fullmatch(token):
        raise GenadError(
            f"the service token must be {MIN_TOKEN_CHARS}-4096 printable characters without spaces: "
            "make one with  python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


class BearerAuth:
    """ASGI middleware: /v1 requests need `Authorization: Bearer <token>` (401 otherwise)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str) -> None:
        self.app = app
        self._token = check_token(token).encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not _protected(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        if given is None:
            await _send_401(
                send,
                "this service needs a token: send the header Authorization: Bearer TOKEN (the web page asks for it)",
                'Bearer realm="genad"',
            )
            return
        if not hmac.compare_digest(given, self._token):
            await _send_401(
                send, "the token is wrong: send the service's token", 'Bearer realm="genad", error="invalid_token"'
            )
            return
        await self.app(scope, receive, send)


def _protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _bearer(scope: dict) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k == b"authorization":
            scheme, _, value = bytes(v).strip().partition(b" ")
            if scheme.lower() == b"bearer" and value.strip():
                return value.strip()
            return None
    return None


async def _send_401(send: Callable, detail: str, challenge: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
