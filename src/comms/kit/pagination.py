"""Page arithmetic for ``dto.PageInfo``."""

from __future__ import annotations

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
