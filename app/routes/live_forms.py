"""The posted forms of the live probes, read in one place for each HTML page and its JSON twin.

Each is a FastAPI dependency that parses the form (the API documents its fields from here) into
a request that `run`s the probe through app.live or app.live_typographic; an empty field means
"not given", as a browser posts one for every input of the form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import File, Form, Request, UploadFile
from sqlalchemy.orm import Session

from app import live, live_typographic
from app.live_typographic import AttackForm

MAX_ID = 2**31 - 1  # INTEGER columns on both backends
IMAGE = "PNG, JPEG, GIF, WebP or BMP."


@dataclass(frozen=True)
class ProbeRequest:
    model: str
    layer: str | None
    top_k: int
    dataset: str | None
    position: int | None
    file: UploadFile | None

    def run(self, request: Request, session: Session) -> dict[str, Any]:
        return live.probe(request, session, model_id=self.model, layer=self.layer, top_k=self.top_k, upload=self.file,
                          dataset=self.dataset, position=self.position)


def probe_request(
    model: str = Form(..., max_length=128),
    layer: str | None = Form(None, max_length=256),
    top_k: int = Form(12, ge=1, le=64),
    dataset: str | None = Form(None, max_length=128),
    position: int | None = Form(None, ge=0, le=MAX_ID),
    file: UploadFile | None = File(None, description=IMAGE),
) -> ProbeRequest:
    return ProbeRequest(model, layer or None, top_k, dataset or None, position, file)


@dataclass(frozen=True)
class TypographicRequest:
    model: str
    layer: str | None
    form: AttackForm
    dataset: str | None
    position: int | None
    upload_ref: str | None
    file: UploadFile | None

    def run(self, request: Request, session: Session) -> dict[str, Any]:
        return live_typographic.typographic_probe(request, session, model_id=self.model, layer=self.layer, form=self.form,
                                                  upload=self.file, dataset=self.dataset, position=self.position,
                                                  upload_ref=self.upload_ref)


def typographic_request(
    model: str = Form(..., max_length=128),
    layer: str | None = Form(None, max_length=256),
    text: str = Form("", max_length=1000, description="The attack text, 1 to 64 characters."),
    setup: str = Form("fixed", max_length=16, description="'fixed' (the article's automated setup) or 'custom'."),
    x: float = Form(0.5, description="custom: the text's centre, a fraction of the width (0 to 1)."),
    y: float = Form(0.5, description="custom: the text's centre, a fraction of the height (0 to 1)."),
    size: float = Form(0.17, description="custom: font size, a fraction of the shorter side."),
    color: str = Form("#ffffff", max_length=32),
    outline: str = Form("#000000", max_length=32, description="Outline colour; empty for none."),
    rotation: float = Form(0.0, description="custom: degrees, counter-clockwise."),
    labels: str | None = Form(None, max_length=64, description="A built-in label set (world-shapes, imagenet, ...)."),
    custom_labels: str | None = Form(None, max_length=64_000, description="Your own labels, one a line or comma separated."),
    silence: str = Form("", max_length=4000, description="'listed' to silence the listed units, or unit indices 1,2,3."),
    top_k: int = Form(5, ge=1, le=20),
    top_units: int = Form(8, ge=1, le=128),
    dataset: str | None = Form(None, max_length=128),
    position: int | None = Form(None, ge=0, le=MAX_ID),
    upload_ref: str | None = Form(None, max_length=64, description="The sha256 of an upload made moments ago."),
    file: UploadFile | None = File(None, description=IMAGE),
) -> TypographicRequest:
    form = AttackForm(text, setup, x, y, size, color, outline, rotation, labels or None, custom_labels, silence, top_k, top_units)
    return TypographicRequest(model, layer or None, form, dataset or None, position, upload_ref or None, file)
