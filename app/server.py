"""The FastAPI application: pages, their JSON twins under /api/v1, OpenAPI at /docs."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import svg
from app.blob_presence import BlobPresence, BlobPresenceScope
from app.auth import AuthError
from app.cache import TTLCache
from app.model_service import LiveError, ModelService, ServiceBusy
from app.paths import static_dir, templates_dir
from app.ratelimit import RateLimited, RateLimiter
from app.routes import api, pages, system
from app.routes.data import API_PREFIX, BadQuery, NotFound
from app.settings import Settings, get_settings
from store import migrations
from store.annotations import Invalid
from store.blobs import BlobStore
from store.session import make_engine, make_sessionmaker
from app.uploads import BodySizeLimit, UploadRejected
from app.vectors import VectorCache

# Bodies of requests that are not uploads: JSON writes and small forms.
SMALL_BODY = 64 * 1024
# Multipart framing around an upload's bytes (boundaries, part headers, the other fields).
MULTIPART_SLACK = 64 * 1024
UPLOAD_PATHS = ("/probe", f"{API_PREFIX}/probe")


def _version() -> str:
    try:
        return version("clip-microscope")
    except PackageNotFoundError:  # running from a checkout that was never pip-installed
        return "dev"


def _number(value: Any, digits: int = 3) -> str:
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


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(templates_dir()))
    templates.env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    templates.env.filters["num"] = _number
    templates.env.filters["pct"] = lambda v: "–" if v is None else f"{v * 100:.0f}%"
    templates.env.globals["version"] = _version()
    templates.env.globals["histogram_svg"] = svg.histogram_svg
    templates.env.globals["strip_svg"] = svg.strip_svg
    templates.env.globals["heatmap_svg"] = svg.heatmap_svg
    return templates


def _error(request: Request, status: int, reason: str, detail: str, headers: dict[str, str] | None = None,
           **extra: Any) -> Response:
    """One shape for every refusal: JSON {detail, reason, ...} under /api, an HTML page elsewhere."""
    if request.url.path.startswith(API_PREFIX):
        return JSONResponse({"detail": detail, "reason": reason, **extra}, status_code=status, headers=headers)
    titles = {400: "Bad request", 401: "Log in to continue", 403: "Not allowed", 404: "Not found", 409: "Already exists",
              413: "Too large", 415: "Not an image", 422: "Cannot answer that", 429: "Slow down", 503: "Busy"}
    page = {"title": titles.get(status, "Error"), "detail": detail, "reason": reason, "status": status, **extra}
    response = pages.render(request, "error.html", page, json_url="", status_code=status)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app around one engine and one blob store.

    The schema is not created here: it belongs to migrations (`microscope db upgrade`);
    /healthz reports 503 until the database is at the shipped head.
    """
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            app.state.model_service.close()
            # Returns pooled connections now rather than at interpreter exit, so a test (or a
            # redeploy) can drop the database right after the app stops.
            engine.dispose()

    app = FastAPI(
        title="CLIP Microscope",
        description="Per-neuron visualizations of CLIP vision towers. Every HTML page has a JSON twin here.",
        version=_version(),
        lifespan=lifespan,
        # /docs and /redoc are added by _api_docs: FastAPI's own pages load their scripts from a CDN,
        # and our users run the server offline.
        docs_url=None,
        redoc_url=None,
        openapi_url=f"{API_PREFIX}/openapi.json",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.blobs = BlobStore(settings.blob_url)
    app.state.blob_presence = BlobPresence(app.state.blobs)
    app.state.templates = _templates()
    app.state.schema_head = migrations.head()
    app.state.vectors = VectorCache(app.state.blobs)
    app.state.unit_cache = TTLCache(settings.page_cache_seconds, 4096) if settings.page_cache_seconds > 0 else None
    app.state.rate_limiter = RateLimiter(settings.live_rate_limit, settings.rate_limit_storage)
    app.state.model_service = ModelService(_model_loader(app, settings), max_queue=settings.model_queue_size)

    app.mount("/static", StaticFiles(directory=str(static_dir())), name="static")
    _api_docs(app)
    app.include_router(system.router)
    app.include_router(api.router)
    app.include_router(pages.router)

    upload_limit = settings.max_upload_bytes + MULTIPART_SLACK
    app.add_middleware(BodySizeLimit, limit_for=lambda path: upload_limit if path in UPLOAD_PATHS else SMALL_BODY)
    # Page builders link only blobs the store still has (a placeholder and null otherwise).
    app.add_middleware(BlobPresenceScope, presence=app.state.blob_presence)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, exc.reason, exc.detail)

    @app.exception_handler(BadQuery)
    async def bad_query(request: Request, exc: BadQuery) -> Response:
        return _error(request, exc.status, exc.reason, exc.detail, **exc.extra)

    @app.exception_handler(Invalid)
    async def invalid(request: Request, exc: Invalid) -> Response:
        return _error(request, exc.status, exc.reason, exc.detail)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> Response:
        if exc.status == 401 and not request.url.path.startswith(API_PREFIX):
            return pages.back_to(f"{request.scope.get('root_path', '')}/login", next=request.headers.get("referer", ""))
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(request, exc.status, exc.reason, exc.detail, headers)

    @app.exception_handler(UploadRejected)
    async def upload_rejected(request: Request, exc: UploadRejected) -> Response:
        return _error(request, exc.status, exc.reason, exc.detail)

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> Response:
        return _error(request, 429, "rate-limited", exc.detail, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ServiceBusy)
    async def busy(request: Request, exc: ServiceBusy) -> Response:
        return _error(request, 503, "busy", exc.detail, {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(LiveError)
    async def live_error(request: Request, exc: LiveError) -> Response:
        headers = {"Retry-After": "30"} if exc.status == 503 else None
        return _error(request, exc.status, exc.reason, exc.detail, headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unmatched routes and the like: the same {detail, reason} shape as every other refusal.
        reason = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, f"http-{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return _error(request, exc.status_code, reason, detail, dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith(API_PREFIX) or request.url.path in ("/healthz",):
            from fastapi.exception_handlers import request_validation_exception_handler

            return await request_validation_exception_handler(request, exc)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return _error(request, 422, "invalid-request", problems or "the request is not valid")

    return app


def _api_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, from the assets fastapi-offline ships."""
    assets = "/vendor/api-docs"  # not under /static: that mount is matched first and would 404 these
    app.mount(assets, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="api-docs")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=f"{root}{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{assets}/favicon.png",
            with_google_fonts=False,
        )


def _model_loader(app: FastAPI, settings: Settings) -> Any:
    """How the model service loads a registered model: the way the workers do, on the best device."""

    def load(model_id: str) -> Any:
        from store.loading import load_registered

        with app.state.sessionmaker() as session:
            return load_registered(session, model_id, device=settings.resolved_device())

    return load


def run(settings: Settings | None = None, *, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve until interrupted (what `microscope serve` calls). Host and port default to settings."""
    import uvicorn

    settings = settings or get_settings()
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level=log_level,
        # Behind the compose file's or a lab's reverse proxy, trust X-Forwarded-* for links.
        proxy_headers=True,
    )
