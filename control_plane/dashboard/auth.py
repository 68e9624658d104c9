"""The dashboard's login: the operator pastes the API token once; the browser then carries an HttpOnly,
SameSite=Strict cookie holding an HMAC of it (never the token itself). Without a token configured (a loopback dev
control plane) every page is open, as the API is."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote

from fastapi import HTTPException, Request

COOKIE = "litefleet_session"
_PURPOSE = b"litefleet dashboard session v1"


def session_value(token: str) -> str:
    """What the cookie holds: HMAC-SHA256 of a fixed purpose under the token. It proves the token was known,
    cannot be turned back into it, and changes (logging everyone out) when the token is rotated."""
    return hmac.new(token.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def token_matches(request: Request, given: str) -> bool:
    token: str | None = request.app.state.token
    return token is None or secrets.compare_digest(given.encode(), token.encode())


def signed_in(request: Request) -> bool:
    """A valid session cookie, or the API's own bearer header (for curl), or no token configured."""
    token: str | None = request.app.state.token
    if token is None:
        return True
    cookie = request.cookies.get(COOKIE, "")
    if secrets.compare_digest(cookie.encode(), session_value(token).encode()):
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.encode(), token.encode())


def require_viewer(request: Request) -> None:
    """Every dashboard page depends on this: without a session, off to the login page (and back afterwards)."""
    if not signed_in(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, "sign in first", headers={"Location": f"/ui/login?next={quote(target)}"})


def safe_next(target: str | None) -> str:
    """Only a dashboard path: a login must not bounce the operator to another site."""
    if target and target.startswith("/ui") and "//" not in target and "\\" not in target:
        return target
    return "/ui"
