"""A small thread-safe LRU cache whose entries expire, for what the pages read often and the
precompute jobs change rarely (per-layer vector matrices, a unit's precomputed results)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class TTLCache:
    def __init__(self, ttl: float | None, max_entries: int) -> None:
        self.ttl = ttl  # None: entries never expire (content-addressed keys)
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], T], ttl: float | None = -1.0) -> T:
        """The cached value, or `load()` stored under `key`. `ttl` overrides the cache's own
        (None: never expires)."""
        ttl = self.ttl if ttl == -1.0 else ttl
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and (ttl is None or now - hit[0] < ttl):
                self._entries.move_to_end(key)
                return hit[1]
        value = load()  # outside the lock: loading may read the database or many blobs
        with self._lock:
            self._entries[key] = (now, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def invalidate(self, key_prefix: tuple = ()) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[: len(key_prefix)] == key_prefix]:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
