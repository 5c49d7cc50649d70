"""Datasets of the world: in memory for training, on disk for browsing.

On disk a dataset is ``images/{index:07d}.png`` plus ``captions.jsonl`` and a
small ``world.json`` recording the seed and config. Writing is resumable: a
killed run re-run with the same arguments ends with exactly the files an
uninterrupted run would have written.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .render import WorldConfig, generate

CAPTIONS = "captions.jsonl"
MANIFEST = "world.json"


def generate_batch(
    seed: int, start: int, count: int, config: WorldConfig = WorldConfig()
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Samples ``start .. start+count-1`` as a uint8 array [N, H, W, 3] with
    their captions and metadata: the fast path for training sets that fit in
    memory (100k pictures at 64 px are ~1.2 GB)."""
    S = config.image_size
    images = np.empty((count, S, S, 3), dtype=np.uint8)
    captions: list[str] = []
    metas: list[dict] = []
    for j in range(count):
        s = generate(seed, start + j, config)
        images[j] = np.asarray(s.image)
        captions.append(s.caption)
        metas.append(s.meta)
    return images, captions, metas


def _manifest(seed: int, config: WorldConfig) -> dict:
    return {"seed": int(seed), "config": json.loads(json.dumps(dataclasses.asdict(config)))}


def _index_of(entry: dict) -> int:
    return int(Path(entry["file"]).stem)


def _read_entries(path: Path) -> dict[int, str]:
    """Valid lines of captions.jsonl keyed by index. A torn last line (the run
    was killed mid-write) is dropped; a repeated index keeps its last line."""
    entries: dict[int, str] = {}
    if not path.exists():
        return entries
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entries[_index_of(json.loads(line))] = line
            except (ValueError, KeyError, TypeError):
                continue
    return entries


def _write_entries(path: Path, entries: dict[int, str]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in sorted(entries):
            f.write(entries[i] + "\n")
    os.replace(tmp, path)


PARALLEL_FROM = 1_000  # fewer images are written in this process: starting workers costs more
CHUNK = 250  # images a worker writes before it reports back


def write_dataset(
    out_dir, count: int, seed: int, config: WorldConfig = WorldConfig(), start: int = 0,
    progress: bool = True, workers: int | None = None,
) -> Path:
    """Write samples ``start .. start+count-1`` of world ``seed`` under ``out_dir``.

    An index counts as done when both its line and its PNG exist; everything
    else is (re)generated, which is safe because samples are deterministic.
    captions.jsonl is rewritten sorted at the start (dropping torn lines) and at
    the end, so its final content never depends on how often the run was
    interrupted. One writer per folder at a time.

    Drawing and encoding a picture is pure Python and Pillow, so a large dataset is
    written by `workers` processes (default: one per CPU core), each a chunk of indices
    at a time; a chunk's captions are appended once its pictures are on disk.
    """
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(seed, config)
    mpath = out / MANIFEST
    if mpath.exists():
        old = json.loads(mpath.read_text())
        if old != manifest:
            raise ValueError(
                f"{out} holds a dataset of another world ({old}); refusing to mix it with {manifest}"
            )
    else:
        mpath.write_text(json.dumps(manifest, indent=1) + "\n")

    cap_path = out / CAPTIONS
    entries = _read_entries(cap_path)
    entries = {i: l for i, l in entries.items() if (img_dir / f"{i:07d}.png").exists()}
    _write_entries(cap_path, entries)
    todo = [i for i in range(start, start + count) if i not in entries]
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))

    with open(cap_path, "a", encoding="utf-8") as f, tqdm(
        total=count, initial=count - len(todo), desc=f"world seed {seed}", unit="img",
        disable=not progress,
    ) as bar:
        def record(lines: list[tuple[int, str]]) -> None:
            for i, line in lines:
                f.write(line + "\n")
                entries[i] = line
            f.flush()
            bar.update(len(lines))

        chunks = [todo[k:k + CHUNK] for k in range(0, len(todo), CHUNK)]
        if workers == 1 or len(todo) < PARALLEL_FROM:
            for chunk in chunks:
                record(write_samples(img_dir, seed, chunk, config))
        else:
            context = multiprocessing.get_context("spawn")  # the caller may hold torch's threads
            with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context) as pool:
                futures = [pool.submit(write_samples, img_dir, seed, chunk, config) for chunk in chunks]
                try:
                    for future in as_completed(futures):
                        record(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    _write_entries(cap_path, entries)
    return out


def write_samples(img_dir: Path, seed: int, indices: list[int], config: WorldConfig) -> list[tuple[int, str]]:
    """Write the PNGs of `indices` (each through a temporary file, so a killed writer leaves
    no torn picture) and return their caption lines."""
    lines = []
    for i in indices:
        s = generate(seed, i, config)
        name = f"{i:07d}.png"
        tmp = img_dir / (name + ".tmp")
        s.image.save(tmp, format="PNG")
        os.replace(tmp, img_dir / name)
        lines.append((i, json.dumps({"file": f"images/{name}", "caption": s.caption, **s.meta})))
    return lines
