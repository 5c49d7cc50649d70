"""Every URL the app hands out, from one object (datasette's `urls` is the model).

`Urls(base)` builds the HTML pages' URLs under the app's root path (so links stay right
behind a reverse proxy mounted under a prefix); `urls.api` builds the JSON twins under
/api/v1 with the same methods: `urls.unit("toy-rn", "layer4", 7)` is the unit page,
`urls.api.unit("toy-rn", "layer4", 7)` its JSON. Keyword arguments become the query string,
leaving out those that are None or empty. Page builders, routers and templates (as the
global `urls`) use nothing else to make a link.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request

from app.blob_presence import is_present
from store.blobs import blob_name

API_PREFIX = "/api/v1"
API_DOCS_ASSETS = "/vendor/api-docs"
CROP_PREFIX = "/blobs/crop"


def _segment(value: Any) -> str:
    # Layer names contain dots, never slashes; anything else a path segment may not hold is escaped.
    return quote(str(value), safe="")


class Urls:
    def __init__(self, base: str = "", *, api: bool = False) -> None:
        self.base = base.rstrip("/")
        self.is_api = api
        self._prefix = API_PREFIX if api else ""

    @cached_property
    def api(self) -> Urls:
        """The same URLs in the JSON API."""
        return self if self.is_api else Urls(self.base, api=True)

    @cached_property
    def html(self) -> Urls:
        """The same URLs as HTML pages."""
        return Urls(self.base) if self.is_api else self

    def path(self, path: str, **params: Any) -> str:
        """Any path of the app (under /api/v1 for `urls.api`), with a query string of the
        params that are set."""
        # "/" stays readable in values (next=/models/toy-rn); it needs no escaping in a query.
        query = urlencode({k: v for k, v in params.items() if v is not None and v != ""}, safe="/")
        return f"{self.base}{self._prefix}{path}" + (f"?{query}" if query else "")

    # -- models, layers, units -----------------------------------------------------------------
    def home(self) -> str:
        return self.html.path("/")

    def models(self, **params: Any) -> str:
        """The list of models: the home page, or /api/v1/models."""
        return self.path("/models" if self.is_api else "/", **params)

    def model(self, model_id: str, **params: Any) -> str:
        return self.path(f"/models/{_segment(model_id)}", **params)

    def layer(self, model_id: str, layer: str, **params: Any) -> str:
        return self.path(f"/models/{_segment(model_id)}/{_segment(layer)}", **params)

    def layer_export(self, model_id: str, layer: str) -> str:
        """The whole layer as JSON Lines (API only)."""
        return self.api.layer(model_id, layer) + "/export"

    def unit(self, model_id: str, layer: str, index: int, **params: Any) -> str:
        return self.path(f"/models/{_segment(model_id)}/{_segment(layer)}/{int(index)}", **params)

    def unit_label(self, model_id: str, layer: str, index: int) -> str:
        return self.unit(model_id, layer, index) + "/label"

    def unit_notes(self, model_id: str, layer: str, index: int) -> str:
        return self.unit(model_id, layer, index) + "/notes"

    def unit_collections(self, model_id: str, layer: str, index: int) -> str:
        """Where the unit page's form adds the unit to a collection."""
        return self.unit(model_id, layer, index) + "/collections"

    def model_links(self, model_id: str) -> dict[str, str]:
        return {"url": self.html.model(model_id), "api_url": self.api.model(model_id)}

    def layer_links(self, model_id: str, layer: str) -> dict[str, str]:
        return {"url": self.html.layer(model_id, layer), "api_url": self.api.layer(model_id, layer)}

    def unit_links(self, model_id: str, layer: str, index: int) -> dict[str, str]:
        return {"url": self.html.unit(model_id, layer, index), "api_url": self.api.unit(model_id, layer, index)}

    # -- search, words, probe, jobs ------------------------------------------------------------
    def search(self, **params: Any) -> str:
        return self.path("/search", **params)

    def search_prompt(self, **params: Any) -> str:
        """Units nearest to a text prompt (API only)."""
        return self.api.path("/search/prompt", **params)

    def words(self, **params: Any) -> str:
        return self.path("/words", **params)

    def probe(self, **params: Any) -> str:
        return self.path("/probe", **params)

    def probe_typographic(self, **params: Any) -> str:
        return self.path("/probe/typographic", **params)

    def discover(self, **params: Any) -> str:
        return self.path("/discover", **params)

    def cues(self, **params: Any) -> str:
        return self.path("/cues", **params)

    def typographic_evals(self, **params: Any) -> str:
        return self.path("/typographic", **params)

    def jobs(self, **params: Any) -> str:
        return self.path("/jobs", **params)

    # -- collections and notes -----------------------------------------------------------------
    def collections(self, **params: Any) -> str:
        return self.path("/collections", **params)

    def collection(self, collection_id: str, **params: Any) -> str:
        return self.path(f"/collections/{_segment(collection_id)}", **params)

    def collection_edit(self, collection_id: str) -> str:
        return self.html.collection(collection_id) + "/edit"

    def collection_remove(self, collection_id: str) -> str:
        return self.html.collection(collection_id) + "/remove"

    def collection_links(self, collection_id: str) -> dict[str, str]:
        return {"url": self.html.collection(collection_id), "api_url": self.api.collection(collection_id)}

    def annotation(self, annotation_id: int) -> str:
        return self.path(f"/annotations/{int(annotation_id)}")

    def annotation_delete(self, annotation_id: int) -> str:
        return self.html.annotation(annotation_id) + "/delete"

    # -- the server's own pages and files ------------------------------------------------------
    def login(self, **params: Any) -> str:
        return self.html.path("/login", **params)

    def logout(self) -> str:
        return self.html.path("/logout")

    def docs(self, section: str | None = None) -> str:
        """The OpenAPI documentation (Swagger UI), optionally opened at one tag's section."""
        return self.html.path("/docs") + (f"#/{section}" if section else "")

    def redoc(self) -> str:
        return self.html.path("/redoc")

    def openapi(self) -> str:
        return self.api.path("/openapi.json")

    def api_docs_asset(self, name: str) -> str:
        return self.html.path(f"{API_DOCS_ASSETS}/{name}")

    def static(self, name: str) -> str:
        return self.html.path(f"/static/{name}")

    def blob(self, uri: str | None) -> str | None:
        """Where the app serves a stored blob name; None when there is none, or when the blob
        store has lost its bytes (the page shows a placeholder, the JSON says null; see
        app.blob_presence)."""
        if not uri:
            return None
        try:
            name = blob_name(uri)
        except ValueError:
            return None
        return f"{self.base}/blobs/{name}" if is_present(name) else None

    def crop(self, model_id: str, image_uri: str | None, crop_box: str | None) -> str | None:
        """Where the app serves the crop `crop_box` ("left,top,right,bottom,size", see
        precompute.crop_boxes) of a stored image as `model_id` sees it, cut on first request
        and cached; None when there is no box or the image's bytes are gone (as `blob`)."""
        if not crop_box or not image_uri:
            return None
        image = self.blob(image_uri)
        if image is None:
            return None
        return f"{self.base}{CROP_PREFIX}/{_segment(model_id)}/{quote(crop_box, safe=',')}/{image.rsplit('/', 1)[-1]}"

    def example_crop(self, model_id: str, row: dict[str, Any]) -> str | None:
        """The crop beside a dataset example: its stored crop, else the one cut from its image."""
        if row.get("crop_uri"):
            return self.blob(row["crop_uri"])
        return self.crop(model_id, row.get("blob_uri"), row.get("crop_box"))


def request_urls(request: Request) -> Urls:
    """The URL builder for a request, under its root path."""
    return Urls(request.scope.get("root_path", ""))
