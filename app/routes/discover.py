"""/discover (HTML) and POST /api/v1/discover (its JSON twin): concepts, segmentation, ablations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from app import live, live_discovery
from app.dependencies import get_session
from app.live_discovery import DiscoverForm
from app.pages.discover import discover_form
from app.ratelimit import limit_live
from app.rendering import render
from app.routes import schemas as s
from app.routes.schemas.discover import DiscoverFormOut, DiscoverResultOut
from app.urls import API_PREFIX, request_urls

MAX_ID = 2**31 - 1
LayerNames = list[Annotated[str, StringConstraints(max_length=4000)]] | None
LAYERS_HELP = ("Concept layers, each field one layer or a comma list; with `layer`, the union (default: every layer "
               "with directions and decompositions).")
api_router = APIRouter(prefix=API_PREFIX, tags=["discover"],
                       responses={422: {"model": s.UnprocessableBody, "description": "The request cannot be answered as given."}})
page_router = APIRouter(include_in_schema=False)

_ERRORS = {
    400: {"model": s.ErrorBody, "description": "No image given, or an empty file."},
    404: {"model": s.ErrorBody, "description": "No such model, layer or dataset image."},
    410: {"model": s.ErrorBody, "description": "The upload_ref names an upload no longer kept."},
    413: {"model": s.ErrorBody, "description": "The file or the picture is too large."},
    415: {"model": s.ErrorBody, "description": "The file is not an accepted image format."},
    429: {"model": s.ErrorBody, "description": "Rate limit exceeded; see Retry-After."},
    503: {"model": s.ErrorBody, "description": "The model service is busy or the model cannot be loaded; see Retry-After."},
}


async def _class_name_sent(request: Request) -> bool:
    """Whether the form holds a class_name field at all: FastAPI reads an empty field as left out,
    and an empty class name is a mistake to refuse, not a request to skip segmentation."""
    return "class_name" in await request.form()


def _form(layer, class_name, seg_layers, ablate, ablate_layer, ablate_mode, labels, top, layers) -> DiscoverForm:
    return DiscoverForm(layer or None, class_name, seg_layers or None, ablate or "", ablate_layer or None,
                        ablate_mode or "zero", labels or None, top, tuple(layers or ()))


@api_router.get("/discover", response_model=DiscoverFormOut, responses={404: _ERRORS[404]}, summary="What /discover offers: models, layers with directions, images")
def discover_options(request: Request, model: str | None = Query(None, max_length=128),
                     layer: str | None = Query(None, max_length=256), dataset: str | None = Query(None, max_length=128),
                     page: int = Query(1, ge=1, le=100_000), layers: LayerNames = Query(None, description=LAYERS_HELP),
                     session: Session = Depends(get_session)):
    return discover_form(session, request_urls(request), model_id=model, layer=layer, dataset=dataset, page=page,
                         limits=live.upload_limits_info(request), layers=live_discovery.layer_names(layers))


@api_router.post("/discover", response_model=DiscoverResultOut, responses=_ERRORS, dependencies=[Depends(limit_live)],
                 summary="Concepts the picture's standing-out neurons add up to, a zero-shot segmentation for a class, "
                         "and both again with chosen neurons silenced (live, rate limited)")
def discover(
    request: Request,
    model: str = Form(..., max_length=128),
    layer: str | None = Form(None, max_length=256, description="One concept layer (see `layers`)."),
    layers: LayerNames = Form(None, description=LAYERS_HELP),
    class_name: str | None = Form(None, max_length=1000, description="The class to segment; leave out to skip segmentation."),
    seg_layers: str | None = Form(None, max_length=4000, description="'vit-late' (ViT-only), 'stored', or layers, comma separated."),
    ablate: str = Form("", max_length=4000, description="Units to silence, comma separated, all in one forward pass: "
                       "layer:index references (transformer.resblocks.3.mlp:17) and bare indices (units of `ablate_layer`)."),
    ablate_layer: str | None = Form(None, max_length=256, description="The layer of bare indices in `ablate` (default: "
                                    "`layer`, else the last concept layer)."),
    ablate_mode: str = Form("zero", max_length=8, description="'zero' or 'mean' (the unit's dataset mean)."),
    labels: str | None = Form(None, max_length=64, description="The label set of the zero-shot prediction."),
    top: int = Form(10, ge=1, le=50, description="How many texts to list."),
    dataset: str | None = Form(None, max_length=128),
    position: int | None = Form(None, ge=0, le=MAX_ID),
    upload_ref: str | None = Form(None, max_length=64, description="The sha256 of an upload made moments ago."),
    file: UploadFile | None = File(None, description="PNG, JPEG, GIF, WebP or BMP."),
    session: Session = Depends(get_session),
    class_name_sent: bool = Depends(_class_name_sent),
):
    if class_name is None and class_name_sent:
        class_name = ""
    form = _form(layer, class_name, seg_layers, ablate, ablate_layer, ablate_mode, labels, top, layers)
    return live_discovery.discover(request, session, model_id=model, form=form, upload=file, dataset=dataset,
                                   position=position, upload_ref=upload_ref)


@page_router.get("/discover", response_class=HTMLResponse)
def discover_page(request: Request, model: str | None = Query(None, max_length=128),
                  layer: str | None = Query(None, max_length=256), dataset: str | None = Query(None, max_length=128),
                  page: int = Query(1, ge=1, le=100_000), layers: LayerNames = Query(None),
                  session: Session = Depends(get_session)) -> HTMLResponse:
    payload = discover_form(session, request_urls(request), model_id=model, layer=layer, dataset=dataset, page=page,
                            limits=live.upload_limits_info(request), layers=live_discovery.layer_names(layers))
    return render(request, "discover.html", payload, payload["api_url"], session=session, result=None)


@page_router.post("/discover", response_class=HTMLResponse)
def discover_submit(
    request: Request, model: str = Form(..., max_length=128), layer: str | None = Form(None, max_length=256),
    layers: LayerNames = Form(None),
    class_name: str | None = Form(None, max_length=1000), seg_layers: str | None = Form(None, max_length=4000),
    ablate: str = Form("", max_length=4000), ablate_layer: str | None = Form(None, max_length=256),
    ablate_mode: str = Form("zero", max_length=8), labels: str | None = Form(None, max_length=64),
    top: int = Form(10, ge=1, le=50), dataset: str | None = Form(None, max_length=128),
    position: int | None = Form(None, ge=0, le=MAX_ID), upload_ref: str | None = Form(None, max_length=64),
    file: UploadFile | None = File(None), session: Session = Depends(get_session),
) -> HTMLResponse:
    limit_live(request)
    form = _form(layer, class_name, seg_layers, ablate, ablate_layer, ablate_mode, labels, top, layers)
    result = live_discovery.discover(request, session, model_id=model, form=form, upload=file, dataset=dataset or None,
                                     position=position, upload_ref=upload_ref or None)
    payload = discover_form(session, request_urls(request), model_id=model, layer=result["layer"], dataset=dataset or None,
                            limits=live.upload_limits_info(request), layers=result["layers"])
    return render(request, "discover.html", payload, request_urls(request).docs("discover"), session=session, result=result)


# -- /cues ---------------------------------------------------------------------------------------
@api_router.post("/cues", responses=_ERRORS, dependencies=[Depends(limit_live)],
                 summary="Spurious cues for a class pair: words that could push pictures of one class toward another, "
                         "verified on the synthetic world for toy models (live, rate limited)")
def cues_api(request: Request, model: str = Form(..., max_length=128), source: str = Form("", max_length=64),
             target: str = Form("", max_length=64), layers: str | None = Form(None, max_length=4000),
             top: int = Form(10, ge=1, le=50), session: Session = Depends(get_session)):
    return live_discovery.cues(request, session, model_id=model, source=source, target=target, layers=layers, top=top)


@page_router.get("/cues", response_class=HTMLResponse)
def cues_page(request: Request, model: str | None = Query(None, max_length=128),
              session: Session = Depends(get_session)) -> HTMLResponse:
    from app.pages.cues import cues_form

    payload = cues_form(session, request_urls(request), model_id=model)
    return render(request, "cues.html", payload, payload["api_url"], session=session, result=None)


@page_router.post("/cues", response_class=HTMLResponse)
def cues_submit(request: Request, model: str = Form(..., max_length=128), source: str = Form("", max_length=64),
                target: str = Form("", max_length=64), layers: str | None = Form(None, max_length=4000),
                top: int = Form(10, ge=1, le=50), session: Session = Depends(get_session)) -> HTMLResponse:
    from app.pages.cues import cues_form

    limit_live(request)
    result = live_discovery.cues(request, session, model_id=model, source=source, target=target, layers=layers or None,
                                 top=top)
    payload = cues_form(session, request_urls(request), model_id=model)
    payload.update(source=source, target=target)
    return render(request, "cues.html", payload, request_urls(request).api.cues(model=model), session=session, result=result)
