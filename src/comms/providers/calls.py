"""One ``send()`` that needs several vendor requests: how their failures settle.

The first request goes alone. If the vendor refuses it as a whole (bad credentials, an outage),
the error is raised and nothing else was tried, so the dispatcher can fail the whole chunk over
to the next account. Once one request went through, the rest go concurrently, and a refusal of
one of them only makes its own messages RETRY: the others were already sent and must not be
offered to a second account.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from comms.errors import ProviderError
from comms.providers.base import OutboundMessage, Outcome, SendResult

Call = TypeVar("Call")


async def send_calls(
    calls: Sequence[Call],
    execute: Callable[[Call], Awaitable[list[SendResult]]],
    messages_of: Callable[[Call], Sequence[OutboundMessage]],
    gate: asyncio.Semaphore,
) -> list[SendResult]:
    """Results of every call's messages (in call order); ``gate`` bounds the calls in flight."""
    if not calls:
        return []
    async with gate:
        first = await execute(calls[0])

    async def later(call: Call) -> list[SendResult]:
        async with gate:
            try:
                return await execute(call)
            except ProviderError as exc:
                return [
                    SendResult(m.id, Outcome.RETRY, error=exc.message, retry_after=exc.retry_after)
                    for m in messages_of(call)
                ]
            except Exception as exc:  # a fault of ours mid-call: it may have left, never re-send blindly
                error = f"request failed unexpectedly: {type(exc).__name__}: {exc}"
                return [SendResult(m.id, Outcome.UNKNOWN, error=error) for m in messages_of(call)]

    rest = await asyncio.gather(*(later(call) for call in calls[1:]))
    return [result for answer in (first, *rest) for result in answer]


__all__ = ["send_calls"]
