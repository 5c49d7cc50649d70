"""HTML pages. Each renders the dict its JSON twin returns, plus a link to that twin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from app.routes import data
from app.store.session import get_session

router = APIRouter(include_in_schema=False)


def render(request: Request, template: str, page: dict[str, Any], json_url: str, status_code: int = 200) -> HTMLResponse:
    templates = request.app.state.templates
    context = {"data": page, "json_url": json_url}
    return templates.TemplateResponse(request, template, context, status_code=status_code)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, session: Session = Depends(get_session)) -> HTMLResponse:
    page = data.models_index(session, request.scope.get("root_path", ""))
    return render(request, "index.html", page, page["api_url"])


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(model_id: str, request: Request, session: Session = Depends(get_session)) -> HTMLResponse:
    page = data.model_detail(session, model_id, request.scope.get("root_path", ""))
    return render(request, "model.html", page, page["api_url"])
