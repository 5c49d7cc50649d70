"""JSON twins of the pages, under /api/v1."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session

from app.routes import data
from app.routes.schemas import ErrorBody, ModelDetail, ModelList
from app.store.session import get_session

router = APIRouter(prefix=data.API_PREFIX, tags=["models"])


def _base(request: Request) -> str:
    return request.scope.get("root_path", "")


@router.get("/models", response_model=ModelList, summary="Registered models")
def list_models(request: Request, session: Session = Depends(get_session)) -> dict[str, Any]:
    return data.models_index(session, _base(request))


@router.get(
    "/models/{model_id}",
    response_model=ModelDetail,
    responses={404: {"model": ErrorBody, "description": "No model with this id."}},
    summary="One model with its layers",
)
def get_model(model_id: str, request: Request, session: Session = Depends(get_session)) -> dict[str, Any]:
    return data.model_detail(session, model_id, _base(request))
