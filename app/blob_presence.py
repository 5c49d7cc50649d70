"""Whether the blob store still has an image a page links to, so a page can show a placeholder
(and its JSON twin `null`) for a blob that went missing, instead of a link that breaks.

Pages build their links with `app.urls.Urls.blob(uri)`, which knows no request; the
app's blob store reaches it through a context variable that `BlobPresenceScope` sets around
every request, so the page builders keep their signatures. Outside a request (a builder called
from a script or a test) nothing is checked and every link is kept.

Cost: a page may link fifty images. On a local disk (and fsspec's in-memory store) a check is
a stat, microseconds, so it is asked every time and a deleted or restored file shows at once.
On object storage a check is a round trip; there a name once seen stays "present" for
`seen_seconds` (blobs are immutable, so the only way to lose one is an operator deleting it,
and `/blobs/{name}` still answers 404 then) and a missing one is asked again after
`missing_seconds`, so a warm server renders a page of known images with no round trip at all.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any

from store.blobs import BlobStore

_CHEAP_PROTOCOLS = {"file", "local", "memory"}


class BlobPresence:
    def __init__(self, store: BlobStore, *, cached: bool | None = None, seen_seconds: float = 600.0,
                 missing_seconds: float = 10.0, max_entries: int = 100_000) -> None:
        self.store = store
        protocols = store.fs.protocol if isinstance(store.fs.protocol, tuple) else (store.fs.protocol,)
        self.cached = not set(protocols) & _CHEAP_PROTOCOLS if cached is None else cached
        self.seen_seconds = seen_seconds
        self.missing_seconds = missing_seconds
        self.max_entries = max_entries
        self._answers: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> bool:
        if not self.cached:
            return self.store.exists(name)
        now = time.monotonic()
        with self._lock:
            hit = self._answers.get(name)
        if hit is not None:
            checked_at, present = hit
            if now - checked_at < (self.seen_seconds if present else self.missing_seconds):
                return present
        present = self.store.exists(name)  # outside the lock: a round trip to the object store
        with self._lock:
            self._answers[name] = (now, present)
            self._answers.move_to_end(name)
            while len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)
        return present


_current: ContextVar[BlobPresence | None] = ContextVar("blob_presence", default=None)


def is_present(name: str) -> bool:
    """Whether the blob behind `name` is there, by the current request's store (True outside one)."""
    presence = _current.get()
    return True if presence is None else presence(name)


class BlobPresenceScope:
    """ASGI middleware: the app's blob presence check for everything one request runs, the
    page builders in the thread pool included (they inherit the request's context)."""

    def __init__(self, app: Any, presence: BlobPresence) -> None:
        self.app = app
        self.presence = presence

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        token = _current.set(self.presence)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)
