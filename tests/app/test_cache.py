"""The page and vector cache: expiry, stamps, and one load per missing key."""

from __future__ import annotations

import threading
import time

from app.cache import TTLCache


def test_a_new_stamp_reloads_and_the_same_stamp_reuses() -> None:
    cache = TTLCache(None, 8)
    loads: list[str] = []

    def load(value: str):
        return lambda: loads.append(value) or value

    assert cache.get(("unit", 1), load("first"), stamp=(1, 10)) == "first"
    assert cache.get(("unit", 1), load("second"), stamp=(1, 10)) == "first"
    assert cache.get(("unit", 1), load("third"), stamp=(2, 11)) == "third"
    assert loads == ["first", "third"]


def test_entries_expire_after_their_lifetime() -> None:
    cache = TTLCache(0.05, 8)
    assert cache.get(("k",), lambda: 1) == 1
    assert cache.get(("k",), lambda: 2) == 1
    time.sleep(0.08)
    assert cache.get(("k",), lambda: 3) == 3


def test_concurrent_misses_of_one_key_load_it_once() -> None:
    cache = TTLCache(None, 8)
    calls: list[int] = []
    results: list[int] = []
    start = threading.Barrier(8)

    def slow_load() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 42

    def ask() -> None:
        start.wait()
        results.append(cache.get(("matrix", 7), slow_load))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [42] * 8
    assert len(calls) == 1


def test_a_failed_load_lets_the_next_caller_try_again() -> None:
    cache = TTLCache(None, 8)

    def broken() -> int:
        raise OSError("blob store unreachable")

    try:
        cache.get(("k",), broken)
    except OSError:
        pass
    assert cache.get(("k",), lambda: 5) == 5


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = TTLCache(None, 2)
    cache.get(("a",), lambda: "a")
    cache.get(("b",), lambda: "b")
    cache.get(("a",), lambda: "a2")  # touches a
    cache.get(("c",), lambda: "c")  # evicts b
    assert cache.get(("a",), lambda: "a3") == "a"
    assert cache.get(("b",), lambda: "b2") == "b2"
