"""JSON twins of the pages, under /api/v1, and the API's writes.

Every GET here returns exactly the dict its HTML page renders (app.pages builds both).
Writes need `Authorization: Bearer <token>`; live endpoints (probe, prompt search) are rate
limited per client and answer 503 with Retry-After when the model service is saturated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from app import auth, live
from app import pages as builders
from app.dependencies import get_session
from app.pages.common import DEFAULT_PER_PAGE, MAX_PER_PAGE, require_annotation, require_collection, require_unit
from app.pages.unit import read_unit
from app.ratelimit import limit_live
from app.routes import schemas as s
from app.routes.live_forms import ProbeRequest, TypographicRequest, probe_request, typographic_request
from app.urls import API_PREFIX, request_urls
from store import annotations

router = APIRouter(
    prefix=API_PREFIX,
    responses={422: {"model": s.UnprocessableBody, "description": "The query or body cannot be answered as given."}},
)

E404 = {404: {"model": s.ErrorBody, "description": "No such model, layer, unit or collection."}}
E_AUTH = {
    400: {"model": s.ErrorBody, "description": "A body that cannot be parsed (not JSON)."},
    401: {"model": s.ErrorBody, "description": "No token, or an unknown or revoked one."},
    403: {"model": s.ErrorBody, "description": "Not allowed (another author's note, or a missing CSRF header)."},
}
E_LIVE = {
    429: {"model": s.ErrorBody, "description": "Rate limit exceeded; see Retry-After."},
    503: {"model": s.ErrorBody, "description": "The model service is busy or the model cannot be loaded; see Retry-After."},
}

Page = Query(1, ge=1, le=100_000, description="1-based page number.")
MAX_ID = 2**31 - 1  # INTEGER columns on both backends
UnitIndex = Annotated[int, Path(ge=0, le=MAX_ID, description="The unit's index in its layer.")]
AnnotationId = Annotated[int, Path(ge=1, le=MAX_ID)]
PerPage = Query(DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE, description="Items per page.")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json(payload: dict[str, Any]) -> Response:
    """The builders already produce JSON-ready dicts; serialising them directly skips a second
    validation pass on the hottest endpoints (the schema tests hold them to response_model).
    A NaN or infinity from a precompute job becomes null, as JSON has no such numbers."""
    try:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except ValueError:
        body = json.dumps(_finite(payload), separators=(",", ":"))
    return Response(body, media_type="application/json")


# -- models, layers, units -----------------------------------------------------------------------
@router.get("/models", response_model=s.ModelList, tags=["models"], summary="Registered models, with their layers and what is computed")
def list_models(request: Request, page: int = Page, per_page: int = Query(50, ge=1, le=MAX_PER_PAGE),
                session: Session = Depends(get_session)) -> Any:
    return builders.models_index(session, request_urls(request), page, per_page)


@router.get("/models/{model_id}", response_model=s.ModelDetail, responses=E404, tags=["models"],
            summary="One model with its layers, unit counts and job progress")
def get_model(model_id: str, request: Request, session: Session = Depends(get_session)) -> Any:
    return builders.model_detail(session, model_id, request_urls(request))


class NDJSONResponse(StreamingResponse):
    media_type = "application/x-ndjson"


@router.get(
    "/models/{model_id}/{layer}/export",
    tags=["models"],
    response_class=NDJSONResponse,
    responses={
        200: {"description": "One JSON object per unit and line, in index order."},
        # Refusals are JSON like everywhere else, not JSON Lines: documented by hand, since a
        # `model` here would be listed under the route's own media type.
        404: {"description": "No such model or layer.",
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
        422: {"description": "Invalid parameters.",
              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UnprocessableBody"}}}},
    },
    summary="The whole layer as JSON Lines (bulk export)",
)
def export_layer(model_id: str, layer: str, request: Request, session: Session = Depends(get_session)) -> NDJSONResponse:
    rows = builders.export_layer(session, model_id, layer, request_urls(request))
    first = next(rows, None)  # refuses an unknown model or layer before any byte is sent

    def lines() -> Iterator[bytes]:
        if first is not None:
            yield (json.dumps(first, separators=(",", ":")) + "\n").encode()
        for row in rows:
            yield (json.dumps(row, separators=(",", ":")) + "\n").encode()

    filename = f"{model_id}-{layer}.jsonl"
    return NDJSONResponse(lines(), headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/models/{model_id}/{layer}", response_model=s.LayerPage, responses=E404, tags=["models"],
            summary="A page of a layer's units: thumbnails, labels, top words")
def get_layer(
    model_id: str, layer: str, request: Request, sort: str = Query("index", pattern="^(index|label|activation)$"),
    page: int = Page, per_page: int = PerPage, session: Session = Depends(get_session),
) -> Any:
    return _json(builders.layer_page(session, model_id, layer, request_urls(request), sort=sort, page=page, per_page=per_page))


@router.get("/models/{model_id}/{layer}/{unit}", response_model=s.UnitPage, responses=E404, tags=["units"],
            summary="Everything known about one unit")
def get_unit(
    model_id: str, layer: str, unit: UnitIndex, request: Request,
    word_list: str | None = Query(None, max_length=128, description="Only this word list's top words (an id from `word_lists`)."),
    session: Session = Depends(get_session),
) -> Any:
    state = request.app.state
    read = read_unit(session, model_id, layer, unit, stamps=state.unit_cache is not None)

    def body() -> bytes:
        return _json(builders.unit_page(session, state.vectors, model_id, layer, unit, request_urls(request),
                                        state.unit_cache, word_list=word_list, read=read)).body

    key = read.view_key()
    if key is None or state.rendered_pages is None:
        return Response(body(), media_type="application/json")
    # The same for every caller (no user in it): reused while the stamps are unchanged.
    full_key = ("api-unit", request.scope.get("root_path", ""), request.url.path, request.url.query, key)
    return Response(state.rendered_pages.get(full_key, body), media_type="application/json")


# -- search and words ----------------------------------------------------------------------------
@router.get("/search", response_model=s.SearchPage, tags=["search"],
            summary="Units whose label, notes, top words or decomposition contain the text")
def search(
    request: Request, q: str = Query("", max_length=200), model: str | None = Query(None, max_length=128),
    layer: str | None = Query(None, max_length=256), page: int = Page, per_page: int = PerPage,
    session: Session = Depends(get_session),
) -> Any:
    return builders.search_page(session, request_urls(request), q=q, model_id=model, layer=layer, page=page, per_page=per_page)


@router.get("/search/prompt", response_model=s.PromptPage, responses={**E404, **E_LIVE}, tags=["search"],
            dependencies=[Depends(limit_live)], summary="Units nearest to a text prompt (live, rate limited)")
def search_prompt(
    request: Request, text: str = Query(..., min_length=1, max_length=200), model: str = Query(..., max_length=128),
    layer: str | None = Query(None, max_length=256), k: int = Query(24, ge=1, le=100),
    reading: Literal["class", "text"] = Query("class", description="Embed the prompt as the zero-shot classifier reads a "
                                              "class name (its prompt templates), or as typed."),
    session: Session = Depends(get_session),
) -> Any:
    return live.prompt_search(request, session, text=text, model_id=model, layer=layer, k=k, reading=reading)


@router.get("/words", response_model=s.WordsPage, tags=["search"],
            responses={404: {"model": s.ErrorBody, "description": "No word embedding uses that word list."}},
            summary="Nearest words and word arithmetic over image-based word embeddings")
def words(
    request: Request, q: str = Query("", max_length=200), model: str | None = Query(None, max_length=128),
    layer: str | None = Query(None, max_length=256), word_list: str | None = Query(None, max_length=128),
    k: int = Query(20, ge=1, le=100), session: Session = Depends(get_session),
) -> Any:
    return builders.words_page(session, request.app.state.vectors, request_urls(request), q=q, model_id=model, layer=layer,
                           word_list=word_list, k=k)


# -- collections, jobs ---------------------------------------------------------------------------
@router.get("/collections", response_model=s.CollectionList, tags=["collections"], summary="Collections of units")
def list_collections(request: Request, page: int = Page, per_page: int = PerPage, session: Session = Depends(get_session)) -> Any:
    return builders.collections_index(session, request_urls(request), page, per_page)


@router.get("/collections/{collection_id}", response_model=s.CollectionDetail, responses=E404, tags=["collections"],
            summary="One collection with its units")
def get_collection(collection_id: str, request: Request, page: int = Page, per_page: int = PerPage,
                   session: Session = Depends(get_session)) -> Any:
    return builders.collection_detail(session, collection_id, request_urls(request), page, per_page)


@router.get("/jobs", response_model=s.JobsPage, tags=["jobs"], summary="Precompute jobs and their progress")
def list_jobs(
    request: Request, state: str | None = Query(None, pattern="^(pending|running|done|failed)$"),
    model: str | None = Query(None, max_length=128), kind: str | None = Query(None, max_length=64), page: int = Page,
    per_page: int = Query(100, ge=1, le=MAX_PER_PAGE), session: Session = Depends(get_session),
) -> Any:
    return builders.jobs_page(session, request_urls(request), state=state, model_id=model, kind=kind, page=page, per_page=per_page)


# -- probe ---------------------------------------------------------------------------------------
@router.get("/probe", response_model=s.ProbeForm, responses=E404, tags=["probe"], summary="What /probe offers: models, layers, dataset images, limits")
def probe_form(
    request: Request, model: str | None = Query(None, max_length=128), layer: str | None = Query(None, max_length=256),
    dataset: str | None = Query(None, max_length=128), page: int = Page, session: Session = Depends(get_session),
) -> Any:
    return builders.probe_form(session, request_urls(request), model_id=model, layer=layer, dataset=dataset, page=page,
                           limits=live.upload_limits_info(request))


@router.post(
    "/probe",
    response_model=s.ProbeResult,
    responses={
        **E404, **E_LIVE,
        400: {"model": s.ErrorBody, "description": "No image given, or an empty file."},
        413: {"model": s.ErrorBody, "description": "The file or the picture is too large."},
        415: {"model": s.ErrorBody, "description": "The file is not an accepted image format."},
    },
    dependencies=[Depends(limit_live)],
    tags=["probe"],
    summary="Which units fire most on an image, and where (live, rate limited)",
)
def probe(request: Request, form: ProbeRequest = Depends(probe_request), session: Session = Depends(get_session)) -> Any:
    return form.run(request, session)


# -- typographic probe -----------------------------------------------------------------------------
@router.get("/probe/typographic", response_model=s.TypographicForm, responses=E404, tags=["probe"],
            summary="What /probe/typographic offers: models, layers, label sets, dataset images, limits")
def typographic_form(
    request: Request, model: str | None = Query(None, max_length=128), layer: str | None = Query(None, max_length=256),
    dataset: str | None = Query(None, max_length=128), page: int = Page, session: Session = Depends(get_session),
) -> Any:
    return builders.typographic_form(session, request_urls(request), model_id=model, layer=layer, dataset=dataset, page=page,
                                     limits=live.upload_limits_info(request))


@router.post(
    "/probe/typographic",
    response_model=s.TypographicResult,
    responses={
        **E404, **E_LIVE,
        400: {"model": s.ErrorBody, "description": "No image given, or an empty file."},
        410: {"model": s.ErrorBody, "description": "The upload_ref names an upload no longer kept."},
        413: {"model": s.ErrorBody, "description": "The file or the picture is too large."},
        415: {"model": s.ErrorBody, "description": "The file is not an accepted image format."},
    },
    dependencies=[Depends(limit_live)],
    tags=["probe"],
    summary="Write text on a picture: top classes before and after, the units that carried it, silenced (live, rate limited)",
)
def typographic_probe(request: Request, attack: TypographicRequest = Depends(typographic_request),
                      session: Session = Depends(get_session)) -> Any:
    return attack.run(request, session)


@router.get("/typographic", response_model=s.TypographicEvalsPage, responses=E404, tags=["probe"],
            summary="Typographic evaluation tables (Figure 16): attacks, their pixel cover and success, and the search's finds")
def typographic_evals(
    request: Request, model: str | None = Query(None, max_length=128), dataset: str | None = Query(None, max_length=128),
    labels: str | None = Query(None, max_length=64), limit: int = Query(50, ge=1, le=1000), session: Session = Depends(get_session),
) -> Any:
    return builders.typographic_evals_page(session, request_urls(request), model_id=model, dataset=dataset, labels=labels, limit=limit)


# -- writes --------------------------------------------------------------------------------------
def relabelled(request: Request, layer_id: int) -> None:
    """Unit pages of the layer list their neighbours' labels: let them read the new one."""
    if request.app.state.unit_cache is not None:
        request.app.state.unit_cache.invalidate(("unit", layer_id))


@router.put("/models/{model_id}/{layer}/{unit}/label", response_model=s.LabelOut, responses={**E404, **E_AUTH},
            tags=["writes"], summary="Set a unit's label (kept in its history)")
def put_label(model_id: str, layer: str, unit: UnitIndex, body: s.TextIn, request: Request,
              writer: auth.Writer = Depends(auth.api_writer), session: Session = Depends(get_session)) -> Any:
    target = require_unit(session, model_id, layer, unit)
    row = annotations.set_label(session, target["id"], body.text, writer.name)
    session.commit()
    relabelled(request, target["layer_id"])
    url = request_urls(request).html.unit(model_id, layer, unit)
    return {"unit": f"{model_id}/{layer}/{unit}", "label": row.text, "annotation": annotations.as_dict(row), "url": url}


@router.delete("/models/{model_id}/{layer}/{unit}/label", response_model=s.LabelOut, responses={**E404, **E_AUTH},
               tags=["writes"], summary="Remove a unit's current label (its history stays)")
def delete_label(model_id: str, layer: str, unit: UnitIndex, request: Request,
                 writer: auth.Writer = Depends(auth.api_writer), session: Session = Depends(get_session)) -> Any:
    target = require_unit(session, model_id, layer, unit)
    annotations.clear_label(session, target["id"])
    session.commit()
    relabelled(request, target["layer_id"])
    url = request_urls(request).html.unit(model_id, layer, unit)
    return {"unit": f"{model_id}/{layer}/{unit}", "label": None, "annotation": None, "url": url}


@router.post("/models/{model_id}/{layer}/{unit}/notes", response_model=s.AnnotationOut, status_code=201,
             responses={**E404, **E_AUTH}, tags=["writes"], summary="Add a note to a unit")
def post_note(model_id: str, layer: str, unit: UnitIndex, body: s.TextIn, writer: auth.Writer = Depends(auth.api_writer),
              session: Session = Depends(get_session)) -> Any:
    row = annotations.add_note(session, require_unit(session, model_id, layer, unit)["id"], body.text, writer.name)
    session.commit()
    return annotations.as_dict(row)


@router.patch("/annotations/{annotation_id}", response_model=s.AnnotationOut, responses={**E404, **E_AUTH},
              tags=["writes"], summary="Edit your note")
def patch_note(annotation_id: AnnotationId, body: s.TextIn, writer: auth.Writer = Depends(auth.api_writer),
               session: Session = Depends(get_session)) -> Any:
    row = require_annotation(session, annotation_id)
    annotations.edit_note(session, row, body.text, writer.name)
    session.commit()
    return annotations.as_dict(row)


@router.delete("/annotations/{annotation_id}", response_model=s.Deleted, responses={**E404, **E_AUTH},
               tags=["writes"], summary="Delete your note")
def delete_note(annotation_id: AnnotationId, writer: auth.Writer = Depends(auth.api_writer), session: Session = Depends(get_session)) -> Any:
    row = require_annotation(session, annotation_id)
    annotations.delete_note(session, row, writer.name)
    session.commit()
    return {"deleted": True}


@router.post("/collections", response_model=s.CollectionDetail, status_code=201,
             responses={**E_AUTH, 409: {"model": s.ErrorBody, "description": "The id is taken."}},
             tags=["writes"], summary="Create a collection")
def post_collection(body: s.CollectionIn, request: Request, writer: auth.Writer = Depends(auth.api_writer),
                    session: Session = Depends(get_session)) -> Any:
    row = annotations.create_collection(session, body.id, body.title, body.description, writer.name)
    session.commit()
    return builders.collection_detail(session, row.id, request_urls(request))


@router.patch("/collections/{collection_id}", response_model=s.CollectionDetail, responses={**E404, **E_AUTH},
              tags=["writes"], summary="Retitle or redescribe a collection")
def patch_collection(collection_id: str, body: s.CollectionPatch, request: Request,
                     writer: auth.Writer = Depends(auth.api_writer), session: Session = Depends(get_session)) -> Any:
    annotations.update_collection(session, require_collection(session, collection_id), body.title, body.description)
    session.commit()
    return builders.collection_detail(session, collection_id, request_urls(request))


@router.delete("/collections/{collection_id}", response_model=s.Deleted, responses={**E404, **E_AUTH},
               tags=["writes"], summary="Delete a collection (the units stay)")
def delete_collection(collection_id: str, writer: auth.Writer = Depends(auth.api_writer),
                      session: Session = Depends(get_session)) -> Any:
    annotations.delete_collection(session, require_collection(session, collection_id))
    session.commit()
    return {"deleted": True}


@router.post("/collections/{collection_id}/units", response_model=s.CollectionDetail, responses={**E404, **E_AUTH},
             tags=["writes"], summary="Add a unit to a collection")
def post_collection_unit(collection_id: str, body: s.CollectionUnitIn, request: Request,
                         writer: auth.Writer = Depends(auth.api_writer), session: Session = Depends(get_session)) -> Any:
    collection = require_collection(session, collection_id)
    annotations.add_to_collection(session, collection, require_unit(session, body.model, body.layer, body.index)["id"], body.note)
    session.commit()
    return builders.collection_detail(session, collection_id, request_urls(request))


@router.delete("/collections/{collection_id}/units/{model_id}/{layer}/{unit}", response_model=s.CollectionDetail,
               responses={**E404, **E_AUTH}, tags=["writes"], summary="Remove a unit from a collection")
def delete_collection_unit(collection_id: str, model_id: str, layer: str, unit: UnitIndex, request: Request,
                           writer: auth.Writer = Depends(auth.api_writer), session: Session = Depends(get_session)) -> Any:
    collection = require_collection(session, collection_id)
    annotations.remove_from_collection(session, collection, require_unit(session, model_id, layer, unit)["id"])
    session.commit()
    return builders.collection_detail(session, collection_id, request_urls(request))
