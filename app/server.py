"""The FastAPI application: pages, their JSON twins under /api/v1, OpenAPI at /docs."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app import problems
from app.blob_presence import BlobPresence, BlobPresenceScope
from app.cache import TTLCache
from app.model_service import ModelService
from app.paths import static_dir
from app.ratelimit import RateLimiter
from app.rendering import app_version, templates
from app.routes import api, pages, system
from app.routes import discover as discover_routes
from app.settings import Settings, get_settings
from app.uploads import BodySizeLimit
from app.urls import API_DOCS_ASSETS, API_PREFIX, Urls, request_urls
from app.vectors import VectorCache
from store import migrations
from store.blobs import BlobStore
from store.session import make_engine, make_sessionmaker

# Bodies of requests that are not uploads: JSON writes and small forms.
SMALL_BODY = 64 * 1024
# Multipart framing around an upload's bytes (boundaries, part headers, the other fields).
MULTIPART_SLACK = 64 * 1024
UPLOAD_PATHS = ("/probe", f"{API_PREFIX}/probe", "/probe/typographic", f"{API_PREFIX}/probe/typographic", "/discover",
                f"{API_PREFIX}/discover")


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
        version=app_version(),
        lifespan=lifespan,
        # /docs and /redoc are added by _api_docs: FastAPI's own pages load their scripts from a CDN,
        # and our users run the server offline.
        docs_url=None,
        redoc_url=None,
        openapi_url=Urls().openapi(),
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.blobs = BlobStore(settings.blob_url)
    app.state.blob_presence = BlobPresence(app.state.blobs)
    app.state.templates = templates()
    app.state.schema_head = migrations.head()
    app.state.vectors = VectorCache(app.state.blobs)
    caching = settings.page_cache_seconds > 0
    app.state.unit_cache = TTLCache(settings.page_cache_seconds, 4096) if caching else None
    # Rendered unit pages for visitors who are not logged in, ~125 kB each for the demo's units.
    app.state.rendered_pages = TTLCache(settings.page_cache_seconds, settings.rendered_page_cache_entries) if caching else None
    app.state.rate_limiter = RateLimiter(settings.live_rate_limit, settings.rate_limit_storage)
    app.state.model_service = ModelService(_model_loader(app, settings), max_queue=settings.model_queue_size)

    app.mount("/static", StaticFiles(directory=str(static_dir())), name="static")
    _api_docs(app)
    app.include_router(system.router)
    app.include_router(api.router)
    app.include_router(discover_routes.api_router)
    app.include_router(pages.router)
    app.include_router(discover_routes.page_router)

    upload_limit = settings.max_upload_bytes + MULTIPART_SLACK
    app.add_middleware(BodySizeLimit, limit_for=lambda path: upload_limit if path in UPLOAD_PATHS else SMALL_BODY)
    # Page builders link only blobs the store still has (a placeholder and null otherwise).
    app.add_middleware(BlobPresenceScope, presence=app.state.blob_presence)

    problems.install(app)
    return app


def _api_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, from the assets fastapi-offline ships."""
    # Not under /static: that mount is matched first and would 404 these.
    app.mount(API_DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="api-docs")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        urls = request_urls(request)
        return get_swagger_ui_html(
            openapi_url=urls.openapi(),
            title=f"{app.title} API",
            swagger_js_url=urls.api_docs_asset("swagger-ui-bundle.js"),
            swagger_css_url=urls.api_docs_asset("swagger-ui.css"),
            swagger_favicon_url=urls.api_docs_asset("favicon.png"),
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        urls = request_urls(request)
        return get_redoc_html(
            openapi_url=urls.openapi(),
            title=f"{app.title} API",
            redoc_js_url=urls.api_docs_asset("redoc.standalone.js"),
            redoc_favicon_url=urls.api_docs_asset("favicon.png"),
            with_google_fonts=False,
        )


def _model_loader(app: FastAPI, settings: Settings) -> Any:
    """How the model service loads a registered model: the way the workers do, on the best device."""

    def load(model_id: str) -> Any:
        from store.loading import load_registered

        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        with app.state.sessionmaker() as session:
            return load_registered(session, model_id, device=settings.resolved_device())

    return load


def run(
    settings: Settings | None = None, *, host: str | None = None, port: int | None = None, log_level: str = "info",
    workers: int = 1, access_log: bool = True,
) -> None:
    """Serve until interrupted (what `microscope serve` calls). Host and port default to settings.

    With `workers` > 1, uvicorn starts that many server processes on one socket; each builds
    its own app from the environment, so `settings` travel to them as MICROSCOPE_* variables.
    Their page caches stay consistent through the store (see app.pages.unit)."""
    import uvicorn

    settings = settings or get_settings()
    options: dict[str, Any] = {
        "host": host or settings.host,
        "port": port or settings.port,
        "log_level": log_level,
        "access_log": access_log,
        # Behind the compose file's or a lab's reverse proxy, trust X-Forwarded-* for links.
        "proxy_headers": True,
    }
    if workers == 1:
        uvicorn.run(served_app(settings), **options)
        return
    os.environ.update(settings_environment(settings))
    get_settings.cache_clear()
    uvicorn.run("app.server:served_app", factory=True, workers=workers, **options)


def served_app(settings: Settings | None = None) -> FastAPI:
    """The app of a long-running server process. What exists once it is built (modules, the
    app, its templates) lives as long as the process, so the garbage collector is told to
    leave it alone: its full collections then pause requests for less."""
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    return app


def settings_environment(settings: Settings) -> dict[str, str]:
    """`settings` as the MICROSCOPE_* variables that rebuild them in another process."""
    values = settings.model_dump(mode="json")
    return {f"MICROSCOPE_{name.upper()}": value if isinstance(value, str) else json.dumps(value) for name, value in values.items()}
