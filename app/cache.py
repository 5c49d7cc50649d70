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


class TTLCache:
    def __init__(self, ttl: float | None, max_entries: int) -> None:
        self.ttl = ttl  # None: entries never expire (content-addressed keys)
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[float, Hashable, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], T], ttl: float | None = -1.0, stamp: Hashable = None) -> T:
        """The cached value, or `load()` stored under `key`. `ttl` overrides the cache's own
        (None: never expires); an entry stored under another `stamp` counts as expired.

        Read the stamp before calling: what `load` reads is then at least as new as the stamp
        it is stored under."""
        ttl = self.ttl if ttl == -1.0 else ttl
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[1] == stamp and (ttl is None or now - hit[0] < ttl):
                self._entries.move_to_end(key)
                return hit[2]
        value = load()  # outside the lock: loading may read the database or many blobs
        with self._lock:
            self._entries[key] = (now, stamp, value)
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
