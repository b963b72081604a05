"""``create_app(settings)``: the FastAPI application, its lifespan and error handlers."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response

from comms import metrics, openapi
from comms.accounts.endpoints import router as accounts_router
from comms.compliance import wireless
from comms.compliance.endpoints import MAX_REPORT_BYTES, MAX_UNSUBSCRIBE_BODY
from comms.compliance.endpoints import public as unsubscribe_router
from comms.compliance.endpoints import router as compliance_router
from comms.config import Settings
from comms.dispatch.dispatcher import Dispatcher
from comms.dispatch.observe import database_problem, refresh_gauges
from comms.dispatch.routing import Router
from comms.errors import ApiError, RateLimited, pydantic_field, pydantic_message
from comms.events.endpoints import router as events_router
from comms.kit.bodylimit import BodyLimitMiddleware
from comms.kit.db import Database, run_maintenance, try_sync_clock
from comms.kit.http import reply
from comms.kit.logging import quiet_parameter_loggers
from comms.kit.memory import freeze_startup_heap
from comms.kit.nul import refuse_nul_characters
from comms.kit.ratelimit import make_limiter
from comms.kit.requestlog import RequestLogMiddleware, request_id_var
from comms.kit.secretbox import SecretBox
from comms.messages.endpoints import router as messages_router
from comms.messages.schemas import BulkSendRequest
from comms.receipts.endpoints import MAX_CALLBACK_BYTES
from comms.receipts.endpoints import router as receipts_router
from comms.state import AppState
from comms.templates.endpoints import router as templates_router

log = logging.getLogger("comms.api")


def create_app(
    settings: Settings | None = None, *, dispatcher: bool | None = None, freeze_heap: bool = False
) -> FastAPI:
    """``freeze_heap``: a server process (``comms serve``) hides its start-up objects from the
    garbage collector once started (see comms.kit.memory); tests that build many apps do not."""
    settings = settings or Settings()
    run_dispatcher = settings.dispatcher_enabled if dispatcher is None else dispatcher

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        quiet_parameter_loggers()
        wireless.use_list_file(settings.fcc_wireless_domains_file)
        db = Database(settings.resolved_database_url)
        secrets = SecretBox(settings.resolved_secret_key)
        limiter = make_limiter(settings.redis_url)
        state = AppState(settings=settings, db=db, secrets=secrets, limiter=limiter)
        app.state.comms = state
        worker: Dispatcher | None = None
        router = Router.from_settings(settings, db, secrets)
        await try_sync_clock(db)  # before anything is accepted or claimed: the database's time
        if run_dispatcher or settings.express_lane:
            worker = Dispatcher(db, settings, secrets, router, limiter)
            state.wake_dispatcher = worker.wake
            worker.start(express_only=not run_dispatcher)
        app.state.dispatcher = worker
        stop_maintenance = asyncio.Event()
        maintenance = asyncio.create_task(run_maintenance(db, stop_maintenance))
        if freeze_heap:
            freeze_startup_heap()
        try:
            yield
        finally:
            stop_maintenance.set()
            if worker is not None:
                await worker.stop()
            await maintenance
            await router.close()
            await limiter.close()
            await db.dispose()

    app = FastAPI(
        title="comms: Communication Service",
        version="0.1.0",
        description="Bulk SMS and email with per-recipient logs and built-in compliance "
        "(ePrivacy Directive 2002/58/EC, CAN-SPAM Act).",
        lifespan=lifespan,
        dependencies=[Depends(refuse_nul_characters)],
        # "/communication/logs/" is not found (an envelope), not a 307 with an empty body
        redirect_slashes=False,
    )
    _install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_request_bytes,
        limits={
            "/webhooks/": MAX_CALLBACK_BYTES,
            "/u/": MAX_UNSUBSCRIBE_BODY,
            "/communication/unsubscribe/mailto": MAX_REPORT_BYTES,
            "/communication/complaints/arf": MAX_REPORT_BYTES,
        },
    )
    app.add_middleware(
        RequestLogMiddleware,
        on_finish=lambda method, route, status: metrics.REQUESTS.labels(method, route, str(status)).inc(),
    )
    app.include_router(messages_router)
    app.include_router(templates_router)
    app.include_router(compliance_router)
    app.include_router(accounts_router)
    app.include_router(receipts_router)
    app.include_router(events_router)
    app.include_router(unsubscribe_router)

    @app.get("/healthz", tags=["Operations"])
    async def healthz() -> Any:
        """The process is alive."""
        return reply(200, "ok")

    @app.get("/readyz", tags=["Operations"])
    async def readyz(request: Request) -> Any:
        """The database answers, and takes writes (a read-only standby after a failover does not)."""
        state: AppState = request.app.state.comms
        problem = await database_problem(state.db)
        return reply(200, "ready") if problem is None else reply(503, problem)

    @app.get(
        "/metrics",
        tags=["Operations"],
        include_in_schema=True,
        response_class=PlainTextResponse,  # documented as the Prometheus text format, not JSON
    )
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus text format."""
        state: AppState = request.app.state.comms
        await refresh_gauges(state.db, request.app.state.dispatcher)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    openapi.install(app, [BulkSendRequest])
    return app


# SQLSTATE classes and codes of a server that cannot take work now (RFC-like: PostgreSQL's
# appendix A): 08 connection exceptions, 57 operator intervention (starting up, shutting down,
# an administrator's cancel), 53300 too many connections. The driver raises them as a plain
# DBAPIError, not as a lost connection; they are the database's outage as much as a refused socket.
_UNAVAILABLE_CLASSES = ("08", "57")
_UNAVAILABLE_CODES = frozenset({"53300"})


def _server_unavailable(exc: DBAPIError) -> bool:
    state = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
    return state.startswith(_UNAVAILABLE_CLASSES) or state in _UNAVAILABLE_CODES


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        extra: dict[str, Any] = {}
        headers: dict[str, str] | None = None
        if exc.errors:
            extra["errors"] = [{"field": e.field, "message": e.message} for e in exc.errors]
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}  # whole seconds, never early
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return reply(exc.status, exc.message, headers=headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return reply(400, "malformed JSON")  # CONTRACT.md: 400, as the bulk endpoint answers
        errors = []
        for err in exc.errors():
            loc = [p for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
            errors.append({"field": pydantic_field(loc) or "request", "message": pydantic_message(err)})
        message = f"{errors[0]['field']}: {errors[0]['message']}" if len(errors) == 1 else "invalid request"
        return reply(422, message, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return reply(exc.status_code, message, headers=getattr(exc, "headers", None))

    async def database_down(request: Request, exc: Exception) -> Response:
        # Registered for the error types a lost database raises (these handlers run inside the
        # app, so the client gets the envelope and nothing is re-raised to the server).
        if isinstance(exc, DBAPIError) and not (
            exc.connection_invalidated
            or isinstance(exc, OperationalError | InterfaceError)
            or _server_unavailable(exc)
        ):
            return await unexpected(request, exc)
        if isinstance(exc, OSError) and (exc.filename is not None or exc.filename2 is not None):
            return await unexpected(request, exc)  # a file of ours, not the database
        log.error("database unavailable: %s", type(exc).__name__)
        return reply(503, "the database is unavailable; try again shortly", headers={"Retry-After": "5"})

    for error_type in (DBAPIError, OSError, SQLAlchemyTimeoutError):
        app.add_exception_handler(error_type, database_down)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        request_id = request_id_var.get() or uuid.uuid4().hex[:16]
        log.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        return reply(500, f"internal error (request id {request_id})")
