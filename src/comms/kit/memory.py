"""Keeping the resident set of a long-running process close to what it uses.

A 100k-recipient request allocates ~100 MB of short-lived objects. glibc keeps freed memory in
per-thread arenas (up to 8 per core) and returns little of it to the system, so every database
or executor thread can pin its own high-water mark. Two arenas and a trim after each big request
keep the API's peak RSS near one request's worth. Both are no-ops where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

_M_ARENA_MAX = -8
_libc: ctypes.CDLL | None = None
try:
    _name = ctypes.util.find_library("c")
    _libc = ctypes.CDLL(_name) if _name else None
    if _libc is not None and not hasattr(_libc, "malloc_trim"):
        _libc = None
except OSError:  # pragma: no cover - no C library to talk to
    _libc = None


def limit_malloc_arenas(count: int = 2) -> None:
    """Call once at start-up, before threads exist."""
    if _libc is not None:
        try:
            _libc.mallopt(_M_ARENA_MAX, count)
        except AttributeError:  # pragma: no cover
            logging.getLogger("comms").debug("mallopt unavailable")


def release_free_memory() -> None:
    """Give freed heap pages back to the system (after a large request)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def freeze_startup_heap() -> None:
    """Call once start-up is done: what lives as long as the process (modules, the ORM's mappers,
    the routes and their validators) moves out of the garbage collector's sight.

    A full collection otherwise walks all of it, ~100 ms each time on a worker, several times a
    second while a bulk is dispatching (measured with bench/dispatch.py --steps); after the freeze
    it walks only what batches and requests allocated since.
    """
    gc.collect()
    gc.freeze()
