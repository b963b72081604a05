"""The auth dependency: ``Authorization: Bearer <token>`` -> :class:`Principal`, scopes enforced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from comms.errors import Forbidden, RateLimited, Unauthorized
from comms.state import app_state
from comms.tenants.scopes import Scope
from comms.tenants.service import Principal, authenticate

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",  # the seed page's name for it
    description="An API key created with `comms apikey create`.",
)


async def current_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    state = app_state(request)
    async with state.db.read_one() as session:
        principal = await authenticate(session, credentials.credentials)
    wait = await state.limiter.acquire(
        f"api:{principal.tenant_id}", state.settings.rate_limit_per_second, state.settings.rate_limit_burst
    )
    if wait > 0:
        raise RateLimited("too many requests for this tenant; slow down", retry_after=wait)
    request.state.principal = principal
    return principal


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if scope.value not in principal.scopes:
            raise Forbidden(f"this API key lacks the '{scope.value}' scope")
        return principal

    return dependency


SendPrincipal = Annotated[Principal, Depends(require(Scope.SEND))]
LogsPrincipal = Annotated[Principal, Depends(require(Scope.LOGS_READ))]
TemplatesWritePrincipal = Annotated[Principal, Depends(require(Scope.TEMPLATES_WRITE))]
AnyPrincipal = Annotated[Principal, Depends(current_principal)]
