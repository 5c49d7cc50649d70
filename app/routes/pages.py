"""HTML pages. Each renders the dict its JSON twin returns, plus a link to that twin.

Forms post here (labels, notes, collections, login, probe uploads) and answer with a 303 to
the page they came from, so everything works without JavaScript. Form posts need the login
cookie and the CSRF token the page embedded (see app.auth).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from app import auth, live
from app.ratelimit import limit_live
from app.routes import data
from app.routes.api import relabelled
from store import annotations, queries
from store.models import Collection
from app.dependencies import get_session

router = APIRouter(include_in_schema=False)

Page = Query(1, ge=1, le=100_000)
MAX_ID = 2**31 - 1  # INTEGER columns on both backends
UnitIndex = Annotated[int, Path(ge=0, le=MAX_ID)]
PerPage = Query(data.DEFAULT_PER_PAGE, ge=1, le=data.MAX_PER_PAGE)
COOKIE_AGE = 60 * 60 * 24 * 30


def base(request: Request) -> str:
    return request.scope.get("root_path", "")


def render(
    request: Request, template: str, page: dict[str, Any], json_url: str, status_code: int = 200,
    session: Session | None = None, **extra: Any,
) -> HTMLResponse:
    """Render a page with its data, the JSON twin's URL, and who is logged in.

    Every page carries a CSRF token for its forms; a visitor without the cookie gets one here.
    """
    templates = request.app.state.templates
    csrf = request.cookies.get(auth.CSRF_COOKIE)
    fresh_csrf = None
    if not csrf:
        csrf = fresh_csrf = auth.new_csrf()
    if "user" in extra:
        user = extra.pop("user")
    else:
        user = auth.page_user(request, session) if session is not None else None
    context = {"data": page, "json_url": json_url, "user": user, "csrf": csrf, "base": base(request), **extra}
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    if fresh_csrf:
        _set_cookie(request, response, auth.CSRF_COOKIE, fresh_csrf, http_only=False)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, *, http_only: bool) -> None:
    response.set_cookie(
        name, value, max_age=COOKIE_AGE, httponly=http_only, samesite="strict" if http_only else "lax",
        secure=request.app.state.settings.cookie_secure, path="/",
    )


def back_to(url: str, **params: Any) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(url + (("&" if "?" in url else "?") + query if query else ""), status_code=303)


def _safe_next(request: Request, target: str | None) -> str:
    """Only same-site paths: a login link must never bounce a visitor to another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{base(request)}/"


# -- reading pages -------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def index(request: Request, page: int = Page, per_page: int = Query(50, ge=1, le=data.MAX_PER_PAGE),
          session: Session = Depends(get_session)) -> HTMLResponse:
    payload = data.models_index(session, base(request), page, per_page)
    return render(request, "index.html", payload, payload["api_url"], session=session)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(model_id: str, request: Request, session: Session = Depends(get_session)) -> HTMLResponse:
    payload = data.model_detail(session, model_id, base(request))
    return render(request, "model.html", payload, payload["api_url"], session=session)


@router.get("/models/{model_id}/{layer}", response_class=HTMLResponse)
def layer_page(model_id: str, layer: str, request: Request, sort: str = Query("index", pattern="^(index|label|activation)$"),
               page: int = Page, per_page: int = PerPage, session: Session = Depends(get_session)) -> HTMLResponse:
    payload = data.layer_page(session, model_id, layer, base(request), sort=sort, page=page, per_page=per_page)
    return render(request, "layer.html", payload, payload["api_url"], session=session)


@router.get("/models/{model_id}/{layer}/{unit}", response_class=HTMLResponse)
def unit_page(model_id: str, layer: str, unit: UnitIndex, request: Request, session: Session = Depends(get_session)) -> HTMLResponse:
    payload = data.unit_page(session, request.app.state.vectors, model_id, layer, unit, base(request), request.app.state.unit_cache)
    user = auth.page_user(request, session)
    collections = queries.collections_page(session, 0, 200) if user else []
    return render(request, "unit.html", payload, payload["api_url"], session=session, user=user, my_collections=collections,
                  saved=request.query_params.get("saved"))


@router.get("/search", response_class=HTMLResponse)
def search_page(
    request: Request, q: str = Query("", max_length=200), prompt: str = Query("", max_length=200),
    model: str | None = Query(None, max_length=128), layer: str | None = Query(None, max_length=256),
    page: int = Page, per_page: int = PerPage, session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = data.search_page(session, base(request), q=q, model_id=model, layer=layer, page=page, per_page=per_page)
    prompt_result = None
    json_url = payload["api_url"]
    if prompt.strip():
        if not model:
            raise data.BadQuery("model-required", "choose a model to search by text prompt")
        limit_live(request)
        prompt_result = live.prompt_search(request, session, text=prompt, model_id=model, layer=layer or None, k=24)
        json_url = data.url(base(request), f"{data.API_PREFIX}/search/prompt", text=prompt.strip(), model=model, layer=layer)
    return render(request, "search.html", payload, json_url, session=session, prompt=prompt.strip(), prompt_result=prompt_result)


@router.get("/words", response_class=HTMLResponse)
def words_page(
    request: Request, q: str = Query("", max_length=200), model: str | None = Query(None, max_length=128),
    layer: str | None = Query(None, max_length=256), word_list: str | None = Query(None, max_length=128),
    k: int = Query(20, ge=1, le=100), session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = data.words_page(session, request.app.state.vectors, base(request), q=q, model_id=model, layer=layer,
                              word_list=word_list, k=k)
    return render(request, "words.html", payload, payload["api_url"], session=session)


@router.get("/collections", response_class=HTMLResponse)
def collections_page(request: Request, page: int = Page, per_page: int = PerPage, session: Session = Depends(get_session)) -> HTMLResponse:
    payload = data.collections_index(session, base(request), page, per_page)
    return render(request, "collections.html", payload, payload["api_url"], session=session)


@router.get("/collections/{collection_id}", response_class=HTMLResponse)
def collection_page(collection_id: str, request: Request, page: int = Page, per_page: int = PerPage,
                    session: Session = Depends(get_session)) -> HTMLResponse:
    payload = data.collection_detail(session, collection_id, base(request), page, per_page)
    return render(request, "collection.html", payload, payload["api_url"], session=session)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request, state: str | None = Query(None, pattern="^(pending|running|done|failed)$"),
    model: str | None = Query(None, max_length=128), kind: str | None = Query(None, max_length=64),
    page: int = Page, session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = data.jobs_page(session, base(request), state=state or None, model_id=model or None, kind=kind or None, page=page)
    return render(request, "jobs.html", payload, payload["api_url"], session=session)


@router.get("/probe", response_class=HTMLResponse)
def probe_page(
    request: Request, model: str | None = Query(None, max_length=128), layer: str | None = Query(None, max_length=256),
    dataset: str | None = Query(None, max_length=128), page: int = Page, session: Session = Depends(get_session),
) -> HTMLResponse:
    payload = data.probe_form(session, base(request), model_id=model, layer=layer, dataset=dataset, page=page,
                              limits=live.upload_limits_info(request))
    return render(request, "probe.html", payload, payload["api_url"], session=session, result=None)


@router.post("/probe", response_class=HTMLResponse)
def probe_submit(
    request: Request, model: str = Form(..., max_length=128), layer: str | None = Form(None, max_length=256),
    top_k: int = Form(12, ge=1, le=64), dataset: str | None = Form(None, max_length=128),
    position: int | None = Form(None, ge=0, le=MAX_ID), file: UploadFile | None = File(None), session: Session = Depends(get_session),
) -> HTMLResponse:
    # Probing writes nothing, so it needs no login or CSRF token; it is rate limited instead.
    limit_live(request)
    result = live.probe(request, session, model_id=model, layer=layer or None, top_k=top_k, upload=file, dataset=dataset or None,
                        position=position)
    form = data.probe_form(session, base(request), model_id=model, layer=result["layer"], dataset=dataset or None,
                           limits=live.upload_limits_info(request))
    return render(request, "probe.html", form, f"{base(request)}/docs#/probe", session=session, result=result)


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
    _set_cookie(request, response, auth.TOKEN_COOKIE, token.strip(), http_only=True)
    _set_cookie(request, response, auth.CSRF_COOKIE, auth.new_csrf(), http_only=False)  # a fresh one per login
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("", max_length=200)) -> Response:
    if not auth.csrf_matches(request, csrf_token):
        raise auth.AuthError(403, "csrf", "the form is stale; reload the page and try again")
    response = RedirectResponse(f"{base(request)}/", status_code=303)
    response.delete_cookie(auth.TOKEN_COOKIE, path="/")
    return response


# -- form writes ---------------------------------------------------------------------------------
def _unit(session: Session, model_id: str, layer: str, index: int) -> int:
    row = queries.unit_core(session, model_id, layer, index)
    if row is None:
        raise data.NotFound("unknown-unit", f"No unit {model_id}/{layer}/{index}.")
    return row["id"]


@router.post("/models/{model_id}/{layer}/{unit}/label")
def label_submit(model_id: str, layer: str, unit: UnitIndex, request: Request, text: str = Form("", max_length=2000),
                 csrf_token: str = Form("", max_length=200), session: Session = Depends(get_session)) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    target = queries.unit_core(session, model_id, layer, unit)
    if target is None:
        raise data.NotFound("unknown-unit", f"No unit {model_id}/{layer}/{unit}.")
    if text.strip():
        annotations.set_label(session, target["id"], text, writer.name)
    else:
        annotations.clear_label(session, target["id"])
    session.commit()
    relabelled(request, target["layer_id"])
    return back_to(f"{base(request)}{data.unit_path(model_id, layer, unit)}", saved="label")


@router.post("/models/{model_id}/{layer}/{unit}/notes")
def note_submit(model_id: str, layer: str, unit: UnitIndex, request: Request, text: str = Form("", max_length=2000),
                csrf_token: str = Form("", max_length=200), session: Session = Depends(get_session)) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    annotations.add_note(session, _unit(session, model_id, layer, unit), text, writer.name)
    session.commit()
    return back_to(f"{base(request)}{data.unit_path(model_id, layer, unit)}", saved="note")


@router.post("/annotations/{annotation_id}/delete")
def note_delete(annotation_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request, csrf_token: str = Form("", max_length=200),
                next: str = Form("", max_length=500), session: Session = Depends(get_session)) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    row = annotations.get_annotation(session, annotation_id)
    if row is None:
        raise data.NotFound("unknown-annotation", f"No annotation {annotation_id}.")
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
    unit_id = _unit(session, model_id, layer, unit)
    if new_id.strip():
        row = annotations.create_collection(session, new_id, new_title or new_id, "", writer.name)
    else:
        row = session.get(Collection, collection)
        if row is None:
            raise data.NotFound("unknown-collection", f"No collection named {collection!r}.")
    annotations.add_to_collection(session, row, unit_id, note)
    session.commit()
    return back_to(f"{base(request)}{data.unit_path(model_id, layer, unit)}", saved="collection")


@router.post("/collections")
def collection_create(
    request: Request, id: str = Form("", max_length=64), title: str = Form("", max_length=200),
    description: str = Form("", max_length=2000), csrf_token: str = Form("", max_length=200),
    session: Session = Depends(get_session),
) -> Response:
    writer = auth.form_writer(request, session, csrf_token)
    row = annotations.create_collection(session, id, title, description, writer.name)
    session.commit()
    return back_to(f"{base(request)}/collections/{row.id}")


@router.post("/collections/{collection_id}/edit")
def collection_edit(collection_id: str, request: Request, title: str = Form("", max_length=200),
                    description: str = Form("", max_length=2000), csrf_token: str = Form("", max_length=200),
                    session: Session = Depends(get_session)) -> Response:
    auth.form_writer(request, session, csrf_token)
    row = session.get(Collection, collection_id)
    if row is None:
        raise data.NotFound("unknown-collection", f"No collection named {collection_id!r}.")
    annotations.update_collection(session, row, title or None, description)
    session.commit()
    return back_to(f"{base(request)}/collections/{collection_id}")


@router.post("/collections/{collection_id}/remove")
def collection_remove(collection_id: str, request: Request, model: str = Form(..., max_length=128),
                      layer: str = Form(..., max_length=256), index: int = Form(..., ge=0, le=MAX_ID),
                      csrf_token: str = Form("", max_length=200), session: Session = Depends(get_session)) -> Response:
    auth.form_writer(request, session, csrf_token)
    row = session.get(Collection, collection_id)
    if row is None:
        raise data.NotFound("unknown-collection", f"No collection named {collection_id!r}.")
    annotations.remove_from_collection(session, row, _unit(session, model, layer, index))
    session.commit()
    return back_to(f"{base(request)}/collections/{collection_id}")
