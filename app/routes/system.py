"""Health check and blob serving: the routes that are about the server, not the models."""

from __future__ import annotations

import mimetypes
import os

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from alembic.runtime.migration import MigrationContext
from app.crops import crop_maker, placeholder
from app.routes.schemas import Health
from precompute.crop_boxes import CropBox
from precompute.errors import Problem
from store.blobs import BLOB_NAME, BlobStore, MissingBlob
from app.dependencies import get_session

router = APIRouter(tags=["system"])

# Blob names are content hashes: the bytes behind a name can never change.
IMMUTABLE = "public, max-age=31536000, immutable"


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(request: Request, session: Session = Depends(get_session)) -> JSONResponse:
    """Round-trips to the database and checks its schema is at the shipped migration head,
    so a container orchestrator holds traffic (and the worker) until `db upgrade` has run."""
    expected = request.app.state.schema_head
    try:
        session.execute(text("SELECT 1")).scalar_one()
        revision = MigrationContext.configure(session.connection()).get_current_revision()
    except SQLAlchemyError as exc:
        body = Health(status="error", database=f"unreachable: {type(exc).__name__}", schema_revision=None, expected_revision=expected)
        return JSONResponse(body.model_dump(), status_code=503)
    ok = revision == expected
    body = Health(
        status="ok" if ok else "error",
        database="ok" if ok else "schema not current; run `microscope db upgrade`",
        schema_revision=revision,
        expected_revision=expected,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/blobs/crop/{model_id}/{box}/{name}", include_in_schema=False)
def crop(model_id: str, box: str, name: str, request: Request) -> Response:
    """The crop `box` of the stored image `name` as `model_id` saw it, cut on first request
    (app.crops); a placeholder when it cannot be cut."""
    if not BLOB_NAME.match(name):
        raise Problem(404, "not-a-blob-name", f"{name!r} is not a blob name (the sha256 of the bytes, then a suffix).")
    try:
        crop_box = CropBox.parse(box)
    except ValueError as error:
        raise Problem(404, "not-a-crop-box", str(error)) from None
    body = crop_maker(request.app.state).png(model_id, crop_box, name)
    if body is None:
        return Response(placeholder(), status_code=404, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})
    etag = f'"{name.split(".", 1)[0][:32]}-{model_id}-{crop_box.text()}"'
    return Response(body, media_type="image/png", headers={"Cache-Control": IMMUTABLE, "ETag": etag})


@router.get("/blobs/{name}", include_in_schema=False)
def blob(name: str, request: Request) -> Response:
    if not BLOB_NAME.match(name):
        raise Problem(404, "not-a-blob-name", f"{name!r} is not a blob name (the sha256 of the bytes, then a suffix).")
    store: BlobStore = request.app.state.blobs
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {"Cache-Control": IMMUTABLE, "ETag": f'"{name.split(".", 1)[0]}"'}
    missing = Problem(404, "missing-blob", f"The blob store has no blob {name}: it was deleted, or never copied to where the store is now.")
    if store.is_local:
        path = store.path_for(name)
        if not os.path.isfile(path):
            raise missing
        return FileResponse(path, media_type=media_type, headers=headers)
    try:
        body = store.get(name)
    except MissingBlob:
        raise missing from None
    return Response(body, media_type=media_type, headers=headers)
