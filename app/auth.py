"""Who may write: API tokens (`microscope tokens create NAME`), stored as SHA-256 only.

Programs send `Authorization: Bearer <token>`. People paste their token once into /login,
which keeps it in an HttpOnly cookie; form posts from the pages then also carry a CSRF token
that must equal a second cookie (double submit), so another site cannot post forms in their
name. JSON writes authenticated by the cookie (from page scripts) need the same value in an
`X-CSRF-Token` header.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from precompute.errors import Problem
from store import annotations
from app.dependencies import get_session

TOKEN_COOKIE = "microscope_token"
CSRF_COOKIE = "microscope_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def unauthorised(reason: str, detail: str) -> Problem:
    """401: who is asking is unknown. The API says how to authenticate; pages send people to /login."""
    return Problem(401, reason, detail, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Writer:
    token_id: int
    name: str  # recorded as the author of what they write


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise unauthorised("bad-authorization", "the Authorization header must be 'Bearer <token>'")
    return value.strip()


def csrf_matches(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie and submitted and hmac.compare_digest(cookie, submitted))


def api_writer(request: Request, session: Session = Depends(get_session)) -> Writer:
    """Dependency of every API write: the token's holder, or 401/403."""
    token = _bearer(request)
    if token is None:
        token = request.cookies.get(TOKEN_COOKIE)
        if token is None:
            raise unauthorised("token-required", "writing needs an API token: send 'Authorization: Bearer <token>' "
                            "(create one with `microscope tokens create NAME`)")
        if not csrf_matches(request, request.headers.get(CSRF_HEADER)):
            raise Problem(403, "csrf", f"cookie-authenticated writes need the {CSRF_HEADER} header")
    row = annotations.verify_token(session, token)
    if row is None:
        raise unauthorised("invalid-token", "the API token is unknown or revoked")
    return Writer(row.id, row.name)


def page_user(request: Request, session: Session) -> Writer | None:
    """The logged-in holder of the cookie's token, for pages (no write to the store)."""
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        return None
    row = annotations.verify_token(session, token, touch=False)
    return Writer(row.id, row.name) if row else None


def form_writer(request: Request, session: Session, submitted_csrf: str | None) -> Writer:
    """The writer behind a page's form post: a valid cookie token and a matching CSRF token."""
    if not csrf_matches(request, submitted_csrf):
        raise Problem(403, "csrf", "the form is stale or came from another site; reload the page and try again")
    token = request.cookies.get(TOKEN_COOKIE)
    row = annotations.verify_token(session, token) if token else None
    if row is None:
        raise unauthorised("login-required", "log in with an API token to change anything")
    return Writer(row.id, row.name)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
