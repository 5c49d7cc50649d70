"""HTML pages. Each renders the dict its JSON twin returns, plus a link to that twin.

Forms post here (labels, notes, collections, login, probe uploads) and answer with a 303 to
the page they came from, so everything works without JavaScript. Form posts need the login
cookie and the CSRF token the page embedded (see app.auth).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app import auth, live
from app import pages as builders
from app.dependencies import get_session
from app.pages.common import DEFAULT_PER_PAGE, MAX_PER_PAGE, require_annotation, require_collection, require_unit
from app.ratelimit import limit_live
from app.pages.unit import read_unit, unit_view_key
from app.rendering import render, render_anonymous, set_cookie
from app.routes.api import relabelled
from app.routes.live_forms import ProbeRequest, TypographicRequest, probe_request, typographic_request
from app.urls import request_urls
from precompute.errors import Problem
from store import annotations, queries

router = APIRouter(include_in_schema=False)

Page = Query(1, ge=1, le=100_000)
MAX_ID = 2**31 - 1  # INTEGER columns on both backends
UnitIndex = Annotated[int, Path(ge=0, le=MAX_ID)]
PerPage = Query(DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE)


def back_to(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _safe_next(request: Request, target: str | None) -> str:
    """Only same-site paths: a login link must never bounce a visitor to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return request_urls(request).home()


# -- reading pages -------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def index(request: Request, page: int = Page, per_page: int = Query(50, ge=1, le=MAX_PER_PAGE),
          session: Session = Depends(get_session)) -> HTMLResponse:
    payload = builders.models_index(session, request_urls(request), page, per_page)
    return render(request, "index.html", payload, payload["api_url"], session=session)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(model_id: str, request: Request, session: Session = Depends(get_session)) -> HTMLResponse:
    payload = builders.model_detail(session, model_id, request_urls(request))
    return render(request, "model.html", payload, payload["api_url"], session=session)


@router.get("/models/{model_id}/{layer}", response_class=HTMLResponse)
def layer_page(model_id: str, layer: str, request: Request, sort: str = Query("index", pattern="^(index|label|activation)$"),
               page: int = Page, per_page: int = PerPage, session: Session = Depends(get_session)) -> HTMLResponse:
    payload = builders.layer_page(session, model_id, layer, request_urls(request), sort=sort, page=page, per_page=per_page)
    return render(request, "layer.html", payload, payload["api_url"], session=session)


@router.get("/models/{model_id}/{layer}/{unit}", response_class=HTMLResponse)
def unit_page(model_id: str, layer: str, unit: UnitIndex, request: Request,
              word_list: str | None = Query(None, max_length=128), session: Session = Depends(get_session)) -> HTMLResponse:
    state = request.app.state
    urls = request_urls(request)
    read = read_unit(session, model_id, layer, unit, stamps=state.unit_cache is not None)

    def build() -> dict:
        return builders.unit_page(session, state.vectors, model_id, layer, unit, urls, state.unit_cache,
                                  word_list=word_list, read=read)

    user = auth.page_user(request, session)
    saved = request.query_params.get("saved")
    if user is None:
        key = read.view_key()
        if key is None:  # no edit stamp: the key needs what the page shows
            payload = build()
            key, build = unit_view_key(payload, read.generation), lambda: payload
        return render_anonymous(request, "unit.html", build, state.rendered_pages, key, my_collections=[], saved=saved)
    payload = build()
    collections = queries.collections_page(session, 0, 200)
    return render(request, "unit.html", payload, payload["api_url"], session=session, user=user, my_collections=collections,
                  saved=saved)


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request, q: str = Query("", max_length=200), prompt: str = Query("", max_length=200),
    model: str | None = Query(None, max_length=128), layer: str | None = Query(None, max_length=256),
    reading: str = Query("class", max_length=16), page: int = Page, per_page: int = PerPage,
    session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = builders.search_page(session, request_urls(request), q=q, model_id=model, layer=layer, page=page, per_page=per_page)
    prompt_result = None
    json_url = payload["api_url"]
    if prompt.strip():
        if not model:
            raise Problem(422, "model-required", "choose a model to search by text prompt")
        limit_live(request)
        prompt_result = live.prompt_search(request, session, text=prompt, model_id=model, layer=layer or None, k=24,
                                           reading=reading)
        json_url = request_urls(request).search_prompt(text=prompt.strip(), model=model, layer=layer,
                                                       reading=reading if reading != "class" else None)
    return render(request, "search.html", payload, json_url, session=session, prompt=prompt.strip(), prompt_result=prompt_result)


@router.get("/words", response_class=HTMLResponse)
def words_page(
    request: Request, q: str = Query("", max_length=200), model: str | None = Query(None, max_length=128),
    layer: str | None = Query(None, max_length=256), word_list: str | None = Query(None, max_length=128),
    k: int = Query(20, ge=1, le=100), session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = builders.words_page(session, request.app.state.vectors, request_urls(request), q=q, model_id=model, layer=layer,
                              word_list=word_list, k=k)
    return render(request, "words.html", payload, payload["api_url"], session=session)


@router.get("/collections", response_class=HTMLResponse)
def collections_page(request: Request, page: int = Page, per_page: int = PerPage, session: Session = Depends(get_session)) -> HTMLResponse:
    payload = builders.collections_index(session, request_urls(request), page, per_page)
    return render(request, "collections.html", payload, payload["api_url"], session=session)


@router.get("/collections/{collection_id}", response_class=HTMLResponse)
def collection_page(collection_id: str, request: Request, page: int = Page, per_page: int = PerPage,
                    session: Session = Depends(get_session)) -> HTMLResponse:
    payload = builders.collection_detail(session, collection_id, request_urls(request), page, per_page)
    return render(request, "collection.html", payload, payload["api_url"], session=session)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request, state: str | None = Query(None, pattern="^(pending|running|done|failed)$"),
    model: str | None = Query(None, max_length=128), kind: str | None = Query(None, max_length=64),
    page: int = Page, session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = builders.jobs_page(session, request_urls(request), state=state or None, model_id=model or None, kind=kind or None, page=page)
    return render(request, "jobs.html", payload, payload["api_url"], session=session)


@router.get("/probe", response_class=HTMLResponse)
def probe_page(
    request: Request, model: str | None = Query(None, max_length=128), layer: str | None = Query(None, max_length=256),
    dataset: str | None = Query(None, max_length=128), page: int = Page, session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = builders.probe_form(session, request_urls(request), model_id=model, layer=layer, dataset=dataset, page=page,
                              limits=live.upload_limits_info(request))
    return render(request, "probe.html", payload, payload["api_url"], session=session, result=None)


@router.post("/probe", response_class=HTMLResponse)
def probe_submit(request: Request, probe: ProbeRequest = Depends(probe_request),
                 session: Session = Depends(get_session)) -> HTMLResponse:
    # Probing writes nothing, so it needs no login or CSRF token; it is rate limited instead.
    limit_live(request)
    result = probe.run(request, session)
    form = builders.probe_form(session, request_urls(request), model_id=probe.model, layer=result["layer"],
                               dataset=probe.dataset, limits=live.upload_limits_info(request))
    return render(request, "probe.html", form, request_urls(request).docs("probe"), session=session, result=result)


@router.get("/probe/typographic", response_class=HTMLResponse)
def typographic_page(
    request: Request, model: str | None = Query(None, max_length=128), layer: str | None = Query(None, max_length=256),
    dataset: str | None = Query(None, max_length=128), page: int = Page, session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = builders.typographic_form(session, request_urls(request), model_id=model, layer=layer, dataset=dataset, page=page,
                                        limits=live.upload_limits_info(request))
    return render(request, "typographic.html", payload, payload["api_url"], session=session, result=None)


@router.post("/probe/typographic", response_class=HTMLResponse)
def typographic_submit(request: Request, attack: TypographicRequest = Depends(typographic_request),
                       session: Session = Depends(get_session)) -> HTMLResponse:
    limit_live(request)
    result = attack.run(request, session)
    page = builders.typographic_form(session, request_urls(request), model_id=attack.model, layer=result["layer"],
                                     dataset=attack.dataset, limits=live.upload_limits_info(request))
    return render(request, "typographic.html", page, request_urls(request).docs("probe"), session=session, result=result)


@router.get("/typographic", response_class=HTMLResponse)
def typographic_evals_page(
    request: Request, model: str | None = Query(None, max_length=128), dataset: str | None = Query(None, max_length=128),
    labels: str | None = Query(None, max_length=64), limit: int = Query(50, ge=1, le=1000), session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = builders.typographic_evals_page(session, request_urls(request), model_id=model, dataset=dataset, labels=labels,
                                              limit=limit)
    return render(request, "typographic_evals.html", payload, payload["api_url"], session=session)


# -- login ---------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = Query(None, max_length=500), session: Session = Depends(get_session)) -> HTMLResponse:
    return render(request, "login.html", {"next": _safe_next(request, next), "error": None}, "", session=session)


@router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request, token: str = Form("", max_length=200), csrf_token: str = Form("", max_length=200),
    next: str = Form("", max_length=500), session: Session = Depends(get_session),
) -> Response:
    target = _safe_next(request, next)
    if not auth.csrf_matches(request, csrf_token):
        return render(request, "login.html", {"next": target, "error": "The form was stale; please try again."}, "", 403, session)
    row = annotations.verify_token(session, token.strip())
    if row is None:
        return render(request, "login.html", {"next": target, "error": "That token is unknown or revoked."}, "", 401, session)
    session.commit()
    response = RedirectResponse(target, status_code=303)
    set_cookie(request, response, auth.TOKEN_COOKIE, token.strip(), http_only=True)
    set_cookie(request, response, auth.CSRF_COOKIE, auth.new_csrf(), http_only=False)  # a fresh one per login
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("", max_length=200)) -> Response:
    if not auth.csrf_matches(request, csrf_token):
        raise Problem(403, "csrf", "the form is stale; reload the page and try again")
    response = back_to(request_urls(request).home())
    response.delete_cookie(auth.TOKEN_COOKIE, path="/")
    return response


# -- form writes ---------------------------------------------------------------------------------
@router.post("/models/{model_id}/{layer}/{unit}/label")
def label_submit(model_id: str, layer: str, unit: UnitIndex, request: Request, text: str = Form("", max_length=2000),
                 csrf_token: str = Form("", max_length=200), session: Session = Depends(get_session)) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    target = require_unit(session, model_id, layer, unit)
    if text.strip():
        annotations.set_label(session, target["id"], text, writer.name)
    else:
        annotations.clear_label(session, target["id"])
    session.commit()
    relabelled(request, target["layer_id"])
    return back_to(request_urls(request).unit(model_id, layer, unit, saved="label"))


@router.post("/models/{model_id}/{layer}/{unit}/notes")
def note_submit(model_id: str, layer: str, unit: UnitIndex, request: Request, text: str = Form("", max_length=2000),
                csrf_token: str = Form("", max_length=200), session: Session = Depends(get_session)) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    annotations.add_note(session, require_unit(session, model_id, layer, unit)["id"], text, writer.name)
    session.commit()
    return back_to(request_urls(request).unit(model_id, layer, unit, saved="note"))


@router.post("/annotations/{annotation_id}/delete")
def note_delete(annotation_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request, csrf_token: str = Form("", max_length=200),
                next: str = Form("", max_length=500), session: Session = Depends(get_session)) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    row = require_annotation(session, annotation_id)
    annotations.delete_note(session, row, writer.name)
    session.commit()
    return back_to(_safe_next(request, next))


@router.post("/models/{model_id}/{layer}/{unit}/collections")
def collect_submit(
    model_id: str, layer: str, unit: UnitIndex, request: Request, collection: str = Form("", max_length=64),
    new_id: str = Form("", max_length=64), new_title: str = Form("", max_length=200), note: str = Form("", max_length=2000),
    csrf_token: str = Form("", max_length=200), session: Session = Depends(get_session),
) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    unit_id = require_unit(session, model_id, layer, unit)["id"]
    if new_id.strip():
        row = annotations.create_collection(session, new_id, new_title or new_id, "", writer.name)
    else:
        row = require_collection(session, collection)
    annotations.add_to_collection(session, row, unit_id, note)
    session.commit()
    return back_to(request_urls(request).unit(model_id, layer, unit, saved="collection"))


@router.post("/collections")
def collection_create(
    request: Request, id: str = Form("", max_length=64), title: str = Form("", max_length=200),
    description: str = Form("", max_length=2000), csrf_token: str = Form("", max_length=200),
    session: Session = Depends(get_session),
) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    row = annotations.create_collection(session, id, title, description, writer.name)
    session.commit()
    return back_to(request_urls(request).collection(row.id))


@router.post("/collections/{collection_id}/edit")
def collection_edit(collection_id: str, request: Request, title: str = Form("", max_length=200),
                    description: str = Form("", max_length=2000), csrf_token: str = Form("", max_length=200),
                    session: Session = Depends(get_session)) -> Response:
    auth.form_writer(request, session, csrf_token)
    row = require_collection(session, collection_id)
    annotations.update_collection(session, row, title or None, description)
    session.commit()
    return back_to(request_urls(request).collection(collection_id))


@router.post("/collections/{collection_id}/remove")
def collection_remove(collection_id: str, request: Request, model: str = Form(..., max_length=128),
                      layer: str = Form(..., max_length=256), index: int = Form(..., ge=0, le=MAX_ID),
                      csrf_token: str = Form("", max_length=200), session: Session = Depends(get_session)) -> Response:
    auth.form_writer(request, session, csrf_token)
    row = require_collection(session, collection_id)
    annotations.remove_from_collection(session, row, require_unit(session, model, layer, index)["id"])
    session.commit()
    return back_to(request_urls(request).collection(collection_id))
