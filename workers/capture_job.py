"""Capture each unit's per-image maximum over a folder of images, into an .npz file.

A small, self-contained job: the full streaming examples pass (top-k, statistics, store
writes, resumable shards) builds on the same pieces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from precompute.capture import capture, unit_maxima
from precompute.errors import MicroscopeError
from precompute.registry import LoadedModel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def list_images(folder: Path) -> list[Path]:
    if not folder.exists():
        raise MicroscopeError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise MicroscopeError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MicroscopeError(f"{folder} holds no JPEG, PNG or WebP images")
    return files


def _batches(loaded: LoadedModel, files: list[Path], batch_size: int, skipped: list[str]) -> Iterator[tuple[list[int], torch.Tensor]]:
    indices, tensors = [], []
    for index, path in enumerate(files):
        try:
            with Image.open(path) as image:
                tensors.append(loaded.preprocess(image.convert("RGB")))
            indices.append(index)
        except (UnidentifiedImageError, OSError, ValueError) as error:
            skipped.append(f"{path}: {error}")
            continue
        if len(tensors) == batch_size:
            yield indices, torch.stack(tensors)
            indices, tensors = [], []
    if tensors:
        yield indices, torch.stack(tensors)


def capture_folder(loaded: LoadedModel, folder: Path, layers: list[str], out: Path, batch_size: int = 64) -> dict:
    specs = [loaded.spec.layer(name) for name in layers]  # unknown layers fail before any work
    files = list_images(folder)
    skipped: list[str] = []
    kept: list[int] = []
    maxima: dict[str, list[np.ndarray]] = {spec.name: [] for spec in specs}
    started = time.time()
    with tqdm(total=len(files), desc="capture", unit="img") as bar:
        for indices, batch in _batches(loaded, files, batch_size, skipped):
            activations = capture(loaded, batch, [spec.name for spec in specs])
            for spec in specs:
                maxima[spec.name].append(unit_maxima(activations[spec.name], spec)[0].float().cpu().numpy())
            kept.extend(indices)
            bar.update(len(indices))
    if not kept:
        raise MicroscopeError(f"none of the {len(files)} images in {folder} could be read")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        files=np.array([str(files[i].relative_to(folder)) for i in kept]),
        **{name: np.concatenate(chunks) for name, chunks in maxima.items()},
    )
    return {
        "images": len(kept),
        "skipped": len(skipped),
        "layers": {spec.name: spec.units for spec in specs},
        "seconds": round(time.time() - started, 2),
        "out": str(out),
    }
