"""Rate limits by GCRA (the generic cell rate algorithm): one number per key, no timers.

A key allows ``rate`` units per second with bursts of up to ``burst`` units. The state is the
"theoretical arrival time" of the next unit; a request of ``cost`` units is allowed when that
time, pushed by ``cost / rate``, is not more than ``burst / rate`` ahead of now.

:class:`LocalLimiter` keeps the state in-process (the embedded default, one process);
:class:`RedisLimiter` keeps it in Redis with an atomic Lua script, so every API and worker
process on every machine shares one limit per key. Both answer the same question: how long to
wait before this request would be allowed (0.0: allowed now, and counted).

When Redis cannot be reached (or fails), :class:`RedisLimiter` answers from an in-process
limiter instead of failing, and asks Redis again after REDIS_RETRY seconds: the API keeps
answering and workers keep sending, with each process enforcing the limits on its own (N
processes allow up to N times a limit) until Redis answers again. A rate limit is a guard rail,
not a reason to stop the service.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from comms import metrics

log = logging.getLogger("comms.ratelimit")
REDIS_TIMEOUT = 0.5  # seconds: connect or answer, before a request falls back to local limits
REDIS_RETRY = 5.0  # seconds after a failure during which Redis is not asked (a hung one costs 0.5 s)
WARN_EVERY = 30.0  # seconds between two warnings while Redis stays away


class RateLimiter(Protocol):
    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float: ...

    async def close(self) -> None: ...


class LocalLimiter:
    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        now = time.monotonic()
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + cost / rate
        allow_at = new_tat - max(burst, cost) / rate
        if allow_at > now:
            return allow_at - now
        self._tat[key] = new_tat
        return 0.0

    async def close(self) -> None:
        return None


# KEYS[1] = key; ARGV = rate (units/s), burst (units), cost (units). Uses the server's clock so
# that processes on machines with skewed clocks still share one limit.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local per_unit = 1000000 / rate
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * per_unit
local allow_at = new_tat - math.max(burst, cost) * per_unit
if allow_at > now then
  return tostring((allow_at - now) / 1000000)
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return '0'
"""


class RedisLimiter:
    def __init__(self, url: str, prefix: str = "comms:rl:") -> None:
        self._redis: Any = aioredis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self._script = self._redis.register_script(_GCRA)
        self._prefix = prefix
        self._fallback = LocalLimiter()
        self._warned_at: float | None = None
        self._retry_at = 0.0  # monotonic time before which Redis is not asked again

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        now = time.monotonic()
        if now < self._retry_at:
            metrics.RATE_LIMIT_FALLBACKS.inc()
            return await self._fallback.acquire(key, rate, burst, cost)
        try:
            answer = await self._script(keys=[self._prefix + key], args=[rate, burst, cost])
        except (RedisError, OSError, TimeoutError) as exc:
            metrics.RATE_LIMIT_FALLBACKS.inc()
            now = time.monotonic()
            self._retry_at = now + REDIS_RETRY
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "Redis failed: rate limits are enforced per process until it answers again",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
            return await self._fallback.acquire(key, rate, burst, cost)
        if self._warned_at is not None:
            self._warned_at = None
            log.info("Redis answers again: rate limits are shared again")
        return float(answer)

    async def close(self) -> None:
        await self._redis.aclose()


def make_limiter(redis_url: str | None) -> RateLimiter:
    return RedisLimiter(redis_url) if redis_url else LocalLimiter()
