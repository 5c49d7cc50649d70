"""One model service per process: the only part of the web app that runs models.

Live features (/probe, the text-prompt search) hand it work; a single worker thread loads
registered models lazily (a few at most, least recently used evicted), keeps them on the
best device, and batches whatever requests for the same model and layer are waiting, so ten
people probing at once cost one forward pass of ten images rather than ten passes. The queue
is bounded: when it is full `submit` raises ServiceBusy at once, which is answered with 503
and Retry-After, instead of letting requests pile up behind a slow model.

torch and precompute's models are imported by the worker thread on first use, never at app import.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from precompute.errors import Problem, RetryLater

log = logging.getLogger(__name__)

MAX_TOP_UNITS = 64
MAX_SILENCE_UNITS = 128  # the typographic probe lists (and silences) up to this many


# A model that failed to load or to run may be back after a while (a file restored, memory freed).
RETRY_BROKEN_MODEL = 30


class ServiceBusy(RetryLater):
    """The queue is full or the model is slow: 503, and come back in `retry_after` seconds."""

    def __init__(self, retry_after: int, detail: str = "the model service is busy; try again shortly") -> None:
        super().__init__(503, "busy", detail, retry_after)


@dataclass
class _Work:
    kind: str  # a key of _COMPUTE
    model_id: str
    layer: str | None
    payload: Any
    options: dict[str, Any] = field(default_factory=dict)
    future: Future = field(default_factory=Future)


class ModelService:
    def __init__(
        self,
        load: Callable[[str], Any],
        *,
        max_queue: int = 16,
        max_batch: int = 8,
        max_models: int = 2,
        retry_after: int = 5,
        timeout: float = 120.0,
    ) -> None:
        self._load = load
        self._queue: queue.Queue[_Work | None] = queue.Queue(maxsize=max_queue)
        self.max_batch = max_batch
        self.max_models = max_models
        self.retry_after = retry_after
        self.timeout = timeout
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches_run = 0  # for tests and /healthz-like introspection

    # -- lifecycle ---------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="model-service", daemon=True)
                self._thread.start()

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=1)
        except queue.Full:
            pass
        thread.join(timeout=10)
        self._thread = None
        self._models.clear()

    @property
    def loaded_models(self) -> list[str]:
        return list(self._models)

    # -- submitting --------------------------------------------------------------------------
    def submit(self, kind: str, model_id: str, layer: str | None, payload: Any, **options: Any) -> Future:
        work = _Work(kind, model_id, layer, payload, options)
        self._ensure_started()
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            raise ServiceBusy(self.retry_after) from None
        return work.future

    def _wait(self, future: Future) -> Any:
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()
            raise ServiceBusy(self.retry_after, "the model took too long to answer; try again shortly") from None

    def probe(self, model_id: str, layer: str, image: Any, top_k: int = 12) -> dict[str, Any]:
        """The units of `layer` that fire most on a PIL RGB image, with their spatial maps."""
        return self._wait(self.submit("probe", model_id, layer, image, top_k=min(max(top_k, 1), MAX_TOP_UNITS)))

    def typographic(self, model_id: str, layer: str, item: Any, labels: Any, *, top_k: int = 5, top_units: int = 8) -> dict[str, Any]:
        """Top classes of a picture before and after a typographic attack, the units the attack
        raised most, and the classes with units silenced (`item`: a precompute.typographic.ProbeItem)."""
        return self._wait(self.submit("typographic", model_id, layer, item, labels=labels, top_k=min(max(top_k, 1), 20),
                                      top_units=min(max(top_units, 1), MAX_SILENCE_UNITS)))

    def discover(self, model_id: str, image: Any, request: Any) -> dict[str, Any]:
        """Concepts, segmentation and zero-shot prediction of a PIL picture, before and after the
        request's ablations (`request`: a precompute.discovery.DiscoverRequest)."""
        return self._wait(self.submit("discover", model_id, None, image, request=request))

    def cues(self, model_id: str, request: Any) -> dict[str, Any]:
        """Spurious cues for a class pair, verified on the world where it can be
        (`request`: a precompute.discovery.CuesRequest)."""
        return self._wait(self.submit("cues", model_id, None, request))

    def encode_text(self, model_id: str, text: str) -> Any:
        """The unit-length text embedding (numpy float32) of `text` in the joint space."""
        return self._wait(self.submit("text", model_id, None, text))

    def encode_class_name(self, model_id: str, name: str) -> Any:
        """The unit-length embedding (numpy float32) of `name` read as the zero-shot classifier
        reads a class name: the mean of its prompts (precompute.discovery.class_embedding)."""
        return self._wait(self.submit("class-name", model_id, None, name))

    # -- the worker --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # keep the stop signal for the outer loop
                    break
                batch.append(item)
            groups: dict[tuple[str, str, str | None], list[_Work]] = {}
            for work in batch:
                if work.future.set_running_or_notify_cancel():
                    key = (work.kind, work.model_id, work.layer)
                    if work.kind == "typographic":  # one batch per label set and list length
                        key = (*key, work.options["labels"].id, work.options["top_k"], work.options["top_units"])
                    groups.setdefault(key, []).append(work)
            for (kind, model_id, layer, *_), works in groups.items():
                try:
                    loaded = self._model(model_id)
                    results = _COMPUTE[kind](loaded, layer, works)
                    self.batches_run += 1
                except Exception as error:  # each waiting request learns why
                    if not isinstance(error, Problem):
                        log.exception("model service failed on %s %s %s", kind, model_id, layer)
                        error = RetryLater(503, "model-failed", f"the model service failed: {error}", RETRY_BROKEN_MODEL)
                    for work in works:
                        work.future.set_exception(error)
                    continue
                for work, result in zip(works, results):
                    if isinstance(result, Exception):
                        work.future.set_exception(result)
                    else:
                        work.future.set_result(result)

    def _model(self, model_id: str) -> Any:
        if model_id in self._models:
            self._models.move_to_end(model_id)
            return self._models[model_id]
        try:
            loaded = self._load(model_id)
        except Problem:
            raise
        except Exception as error:
            raise RetryLater(
                503, "model-unavailable", f"model {model_id!r} could not be loaded: {error}", RETRY_BROKEN_MODEL
            ) from None
        self._models[model_id] = loaded
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return loaded


# -- the computations (worker thread only) -------------------------------------------------------
def _model_input_png(tensor: Any, cfg: dict[str, Any]) -> bytes:
    """What the model saw (after resizing and cropping), un-normalised, as PNG bytes."""
    import numpy as np
    from PIL import Image

    mean = np.asarray(cfg.get("mean", (0.0, 0.0, 0.0)), dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.get("std", (1.0, 1.0, 1.0)), dtype=np.float32).reshape(3, 1, 1)
    pixels = tensor.detach().cpu().float().numpy() * std + mean
    array = np.clip(np.rint(pixels.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    # Fast compression: the picture is small and goes inline into one answer, where encoding
    # time is latency and a few kilobytes more are not.
    Image.fromarray(array).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _probe(loaded: Any, layer_name: str | None, works: list[_Work]) -> list[Any]:
    import torch

    from precompute.capture import capture, spatial_maps, unit_maxima
    from precompute.errors import UnknownLayerError

    try:
        spec = loaded.spec.layer(layer_name)
    except UnknownLayerError as error:
        raise Problem(404, "unknown-layer", str(error)) from None
    inputs = torch.stack([loaded.preprocess(work.payload) for work in works])
    activation = capture(loaded, inputs, [spec.name])[spec.name]
    values, positions = unit_maxima(activation, spec)
    maps = spatial_maps(activation, spec)
    results: list[Any] = []
    for i, work in enumerate(works):
        k = min(work.options.get("top_k", 12), values.shape[1])
        top = torch.topk(values[i].float(), k)
        units = []
        for activation_value, unit in zip(top.values.tolist(), top.indices.tolist()):
            entry: dict[str, Any] = {"unit": int(unit), "activation": float(activation_value)}
            if positions is not None:
                entry["position"] = int(positions[i, unit])
            if maps is not None:
                entry["map"] = [[round(float(v), 5) for v in row] for row in maps[i, unit].float().cpu().tolist()]
            units.append(entry)
        results.append(
            {
                "units": units,
                "spatial": list(spec.spatial) if maps is not None and spec.spatial else None,
                "unit_count": int(values.shape[1]),
                "mean_activation": float(values[i].float().mean()),
                "input_png": _model_input_png(inputs[i], loaded.preprocess_cfg),
            }
        )
    return results


def _encode(loaded: Any, _layer: str | None, works: list[_Work]) -> list[Any]:
    import torch

    from precompute.errors import MicroscopeError

    tokenizer = loaded.tokenizer
    results: list[Any] = [None] * len(works)
    texts: list[tuple[int, str]] = []
    for i, work in enumerate(works):
        unknown = tokenizer.unknown_words(work.payload) if hasattr(tokenizer, "unknown_words") else []
        if unknown:
            vocabulary = getattr(tokenizer, "vocabulary", [])
            results[i] = Problem(
                422,
                "unknown-words",
                f"{loaded.model_id} does not know the word{'s' if len(unknown) > 1 else ''} {', '.join(sorted(set(unknown)))}",
                unknown_words=sorted(set(unknown)),
                vocabulary_size=len(vocabulary),
            )
        else:
            texts.append((i, work.payload))
    if texts:
        try:
            tokens = tokenizer([text for _, text in texts])
        except MicroscopeError as error:
            raise Problem(422, "no-text-tower", str(error)) from None
        with torch.inference_mode():
            embeddings = loaded.model.encode_text(tokens.to(loaded.device)).float()
            embeddings = torch.nn.functional.normalize(embeddings, dim=-1).cpu().numpy()
        for (i, _), vector in zip(texts, embeddings):
            results[i] = vector
    return results


def _typographic(loaded: Any, layer_name: str | None, works: list[_Work]) -> list[Any]:
    from precompute.errors import UnknownLayerError
    from precompute.typographic import attack_readout

    try:
        loaded.spec.layer(layer_name)
    except UnknownLayerError as error:
        raise Problem(404, "unknown-layer", str(error)) from None
    options = works[0].options
    results = attack_readout(loaded, layer_name, [work.payload for work in works], options["labels"], top_k=options["top_k"],
                             top_units=options["top_units"], cache=_TEXT_FEATURES)
    for result in results:
        clean, attacked = result.pop("pixels")
        result["input_png"] = _model_input_png(clean, loaded.preprocess_cfg)
        result["attacked_png"] = _model_input_png(attacked, loaded.preprocess_cfg)
    return results


class _LazyTextFeatures:
    """The service's caches of text embeddings (precompute.zeroshot), made on first use: class
    embeddings per label set, and, apart so that they never evict a label set, the single texts
    a live request encodes again and again (a class name to segment)."""

    def __init__(self) -> None:
        self._sets: Any = None
        self._texts: Any = None

    def _made(self) -> None:
        if self._sets is None:
            from precompute.zeroshot import TextFeatureCache

            self._sets, self._texts = TextFeatureCache(), TextFeatureCache(256)

    def get(self, loaded: Any, labels: Any) -> Any:
        self._made()
        return self._sets.get(loaded, labels)

    def get_keyed(self, loaded: Any, name: Any, build: Any) -> Any:
        self._made()
        return self._texts.get_keyed(loaded, name, build)


_TEXT_FEATURES = _LazyTextFeatures()
def _discover(loaded: Any, _layer: str | None, works: list[_Work]) -> list[Any]:
    from precompute.discovery import analyse

    results = analyse(loaded, [work.payload for work in works], [work.options["request"] for work in works],
                      cache=_TEXT_FEATURES)
    for result in results:
        result["input_png"] = _model_input_png(result.pop("pixels"), loaded.preprocess_cfg)
    return results


def _cues(loaded: Any, _layer: str | None, works: list[_Work]) -> list[Any]:
    from precompute.discovery import find_cues

    return [find_cues(loaded, work.payload, cache=_TEXT_FEATURES) for work in works]


def _encode_class_names(loaded: Any, _layer: str | None, works: list[_Work]) -> list[Any]:
    from precompute.discovery import cached_class_embedding
    from precompute.errors import MicroscopeError

    results: list[Any] = []
    for work in works:  # one bad name (an unknown word) answers its own request only
        try:
            results.append(cached_class_embedding(loaded, work.payload, _TEXT_FEATURES).numpy().copy())  # the cache keeps its own
        except Problem as error:
            results.append(error)
        except MicroscopeError as error:
            results.append(Problem(422, "no-text-tower", str(error)))
    return results


_COMPUTE = {"probe": _probe, "text": _encode, "class-name": _encode_class_names, "typographic": _typographic,
            "discover": _discover, "cues": _cues}
