"""A small thread-safe LRU cache whose entries expire, for what the pages read often and the
precompute jobs change rarely (per-layer vector matrices, a unit's precomputed results).

An entry can also carry a stamp: a fingerprint of the store that every server process reads
(see store.queries.results_generation). A reader passing a different stamp than the entry was
stored under gets a fresh load, so a write seen by one process is seen by all of them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = object()


class TTLCache:
    def __init__(self, ttl: float | None, max_entries: int) -> None:
        self.ttl = ttl  # None: entries never expire (content-addressed keys)
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[float, Hashable, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, load: Callable[[], T], ttl: float | None = -1.0, stamp: Hashable = None) -> T:
        """The cached value, or `load()` stored under `key`. `ttl` overrides the cache's own
        (None: never expires); an entry stored under another `stamp` counts as expired.

        Read the stamp before calling: what `load` reads is then at least as new as the stamp
        it is stored under. Threads asking for the same missing key wait for one load rather
        than all loading it (a cold layer's matrix takes a while, and a page burst asks at once)."""
        ttl = self.ttl if ttl == -1.0 else ttl
        with self._lock:
            value = self._fresh(key, ttl, stamp)
            if value is not _MISSING:
                return value
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                value = self._fresh(key, ttl, stamp)  # loaded by the thread we waited for
            if value is not _MISSING:
                return value
            now = time.monotonic()
            try:
                value = load()  # outside the cache's lock: loading may read the database or many blobs
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._entries[key] = (now, stamp, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                self._loading.pop(key, None)
            return value

    def _fresh(self, key: tuple, ttl: float | None, stamp: Hashable) -> Any:
        hit = self._entries.get(key)
        if hit is not None and hit[1] == stamp and (ttl is None or time.monotonic() - hit[0] < ttl):
            self._entries.move_to_end(key)
            return hit[2]
        return _MISSING

    def invalidate(self, key_prefix: tuple = ()) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[: len(key_prefix)] == key_prefix]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
