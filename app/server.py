"""The FastAPI application: pages, their JSON twins under /api/v1, OpenAPI at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.paths import static_dir, templates_dir
from app.routes import api, pages, system
from app.routes.data import API_PREFIX, NotFound
from app.settings import Settings, get_settings
from app.store import migrations
from app.store.blobs import BlobStore
from app.store.session import make_engine, make_sessionmaker


def _version() -> str:
    try:
        return version("clip-microscope")
    except PackageNotFoundError:  # running from a checkout that was never pip-installed
        return "dev"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(templates_dir()))
    templates.env.filters["thousands"] = lambda n: f"{n:,}" if isinstance(n, int) else n
    templates.env.globals["version"] = _version()
    return templates


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
            # Returns pooled connections now rather than at interpreter exit, so a test (or a
            # redeploy) can drop the database right after the app stops.
            engine.dispose()

    app = FastAPI(
        title="CLIP Microscope",
        description="Per-neuron visualizations of CLIP vision towers. Every HTML page has a JSON twin here.",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url=f"{API_PREFIX}/openapi.json",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.blobs = BlobStore(settings.blob_url)
    app.state.templates = _templates()
    app.state.schema_head = migrations.head()

    app.mount("/static", StaticFiles(directory=str(static_dir())), name="static")
    app.include_router(system.router)
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        if request.url.path.startswith(API_PREFIX):
            return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=404)
        return pages.render(
            request, "error.html", {"title": "Not found", "detail": exc.detail, "reason": exc.reason}, json_url="", status_code=404
        )

    return app


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
