"""Rendering pages: the Jinja environment and its filters, and `render`, which every HTML
response goes through (error pages included)."""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.requests import Request

from app import auth, svg
from app.cache import TTLCache
from app.paths import templates_dir
from app.urls import request_urls

COOKIE_AGE = 60 * 60 * 24 * 30


def app_version() -> str:
    try:
        return version("clip-microscope")
    except PackageNotFoundError:  # running from a checkout that was never pip-installed
        return "dev"


def number(value: Any, digits: int = 3) -> str:
    """Activations and similarities for reading: 3 significant digits, no exponent below 1e5."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{value:,.{decimals}f}"


def templates() -> Jinja2Templates:
    env = Jinja2Templates(directory=str(templates_dir()))
    env.env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    env.env.filters["num"] = number
    env.env.filters["pct"] = lambda v: "–" if v is None else f"{v * 100:.0f}%"
    env.env.globals["version"] = app_version()
    env.env.globals["histogram_svg"] = svg.histogram_svg
    env.env.globals["strip_svg"] = svg.strip_svg
    env.env.globals["heatmap_svg"] = svg.heatmap_svg
    return env


def render(
    request: Request, template: str, page: dict[str, Any], json_url: str, status_code: int = 200,
    session: Session | None = None, **extra: Any,
) -> HTMLResponse:
    """Render a page with its data, the JSON twin's URL, the URL builder (`urls`) and who is
    logged in.

    Every page carries a CSRF token for its forms; a visitor without the cookie gets one here.
    """
    csrf = request.cookies.get(auth.CSRF_COOKIE)
    fresh_csrf = None
    if not csrf:
        csrf = fresh_csrf = auth.new_csrf()
    if "user" in extra:
        user = extra.pop("user")
    else:
        user = auth.page_user(request, session) if session is not None else None
    context = {"data": page, "json_url": json_url, "user": user, "csrf": csrf, "urls": request_urls(request), **extra}
    response = request.app.state.templates.TemplateResponse(request, template, context, status_code=status_code)
    if fresh_csrf:
        set_cookie(request, response, auth.CSRF_COOKIE, fresh_csrf, http_only=False)
    return response


def render_anonymous(
    request: Request, template: str, build: Callable[[], dict[str, Any]], cache: TTLCache | None, key: tuple, **extra: Any,
) -> HTMLResponse:
    """`render` for a visitor who is not logged in, reusing the body rendered before under the
    same `key` (which must name everything the page shows) and the same request path; `build`
    makes the page's data (its JSON twin at `api_url`), only when the body is not cached.

    Such a page embeds no CSRF token or user, so its body is the same for every anonymous
    visitor; big pages (a unit's 128 examples) cost far more to build and render than to look up."""

    def body() -> bytes:
        page = build()
        return bytes(render(request, template, page, page["api_url"], user=None, **extra).body)

    if cache is None:
        response = HTMLResponse(body())
    else:
        full_key = (template, request.scope.get("root_path", ""), request.url.path, request.url.query, key)
        response = HTMLResponse(cache.get(full_key, body))
    if not request.cookies.get(auth.CSRF_COOKIE):
        set_cookie(request, response, auth.CSRF_COOKIE, auth.new_csrf(), http_only=False)
    return response


def set_cookie(request: Request, response: Response, name: str, value: str, *, http_only: bool) -> None:
    response.set_cookie(
        name, value, max_age=COOKIE_AGE, httponly=http_only, samesite="strict" if http_only else "lax",
        secure=request.app.state.settings.cookie_secure, path="/",
    )
