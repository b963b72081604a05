"""Page arithmetic for ``dto.PageInfo``, and keyset cursors for lists too long to count or skip."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200
# Beyond any real listing, and far inside the 64-bit OFFSET the databases take (a larger page
# number overflowed into a 500).
MAX_PAGE = 10_000_000


@dataclass(frozen=True, slots=True)
class Page:
    page: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    def info(self, total: int) -> dict[str, Any]:
        total_pages = (total + self.page_size - 1) // self.page_size if total else 0
        return {
            "page": self.page,
            "page_size": self.page_size,
            "total": total,
            "total_pages": total_pages,
            "has_next": self.page < total_pages,
            "has_prev": self.page > 1,
        }


_CURSOR_TAG = "k1:"  # the token's format, so a later one can be told apart


def encode_cursor(position: str) -> str:
    """An opaque token for "the items after this one": ``position`` is the last listed item's
    sort key. Clients pass it back as it is and must not read it."""
    return base64.urlsafe_b64encode((_CURSOR_TAG + position).encode()).decode().rstrip("=")


def decode_cursor(token: str) -> str | None:
    """The position a token of :func:`encode_cursor` names, or None when it is not one."""
    if not token.isascii() or len(token) > 200:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return text[len(_CURSOR_TAG) :] if text.startswith(_CURSOR_TAG) else None


@dataclass(frozen=True, slots=True)
class KeysetPage:
    """What a list read by position knows of itself: ``page`` is None when it was reached by a
    cursor (a position, not a page number), ``total`` None when counting was skipped."""

    page: int | None
    page_size: int
    total: int | None
    has_next: bool
    has_prev: bool
    next_cursor: str | None

    def info(self) -> dict[str, Any]:
        total_pages = None
        if self.total is not None:
            total_pages = (self.total + self.page_size - 1) // self.page_size if self.total else 0
        return {
            "page": self.page,
            "page_size": self.page_size,
            "total": self.total,
            "total_pages": total_pages,
            "has_next": self.has_next,
            "has_prev": self.has_prev,
            "next_cursor": self.next_cursor,
        }
