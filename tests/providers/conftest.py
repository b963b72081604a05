"""Fixtures every provider test module shares."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The client session a provider sends through (the Router's, in the service)."""
    async with aiohttp.ClientSession() as session:
        yield session
