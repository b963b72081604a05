"""The ``comms`` command: serve | worker | migrate | status | tenant | apikey (create, revoke) | send."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from comms.config import Settings, load_settings_or_exit
from comms.errors import pydantic_message
from comms.kit.memory import freeze_startup_heap, limit_malloc_arenas

T = TypeVar("T")

app = typer.Typer(help="comms: bulk SMS and email with per-recipient logs.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
apikey_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(apikey_app, name="apikey")


def _settings(**overrides: Any) -> Settings:
    settings = load_settings_or_exit(**{k: v for k, v in overrides.items() if v is not None})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _in_transaction(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in one transaction of the migrated database the settings name (the CLI's
    one-shot writes: tenants, keys)."""
    from comms.kit.db import Database

    settings = _settings()
    _migrate(settings)

    async def _run() -> T:
        db = Database(settings.resolved_database_url)
        try:
            async with db.begin() as session:
                return await work(session)
        finally:
            await db.dispose()

    return asyncio.run(_run())


def _migrate(settings: Settings) -> None:
    from comms.migrations.runner import upgrade

    upgrade(settings.resolved_database_url)


@app.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    settings = _settings()
    _migrate(settings)
    typer.echo("database is up to date")


def _exit_after_drain(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    no_dispatcher: Annotated[bool, typer.Option("--no-dispatcher", help="API only (scale-out).")] = False,
) -> None:
    """Run the API (and, unless --no-dispatcher, an in-process dispatcher). Applies migrations first."""
    import uvicorn

    from comms.app import create_app
    from comms.kit.db import Database
    from comms.kit.logging import configure_logging
    from comms.tenants.bootstrap import bootstrap_demo_tenant

    limit_malloc_arenas()
    settings = _settings(host=host, port=port)
    configure_logging(settings.log_level, settings.log_json)
    _migrate(settings)

    async def _bootstrap() -> tuple[str, str] | None:
        db = Database(settings.resolved_database_url)
        try:
            return await bootstrap_demo_tenant(db)
        finally:
            await db.dispose()

    created = asyncio.run(_bootstrap())
    if created is not None:
        tenant_id, token = created
        typer.echo(
            f"\nCreated demo tenant {tenant_id}. Its API key (shown once, keep it):\n\n  {token}\n\n"
            f"Messages go to the outbox folder: {settings.resolved_outbox_dir}\n",
            err=True,
        )
    app_ = create_app(settings, dispatcher=not no_dispatcher, freeze_heap=True)
    # uvicorn drains on SIGTERM, then restores the handler it found and re-raises the signal
    # (cooperative signal handling, uvicorn >= 0.29). With the default handler that killed the
    # process after a clean drain (exit -15 / 143); with this one a drained stop exits 0.
    signal.signal(signal.SIGTERM, _exit_after_drain)
    uvicorn.run(
        app_,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
    )


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Batches in flight at once.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve GET /metrics, /healthz and /readyz on this port (host: COMMS_HOST)."),
    ] = None,
) -> None:
    """Run a dispatcher only (scale-out beside `comms serve --no-dispatcher`)."""
    from comms.compliance import wireless
    from comms.dispatch.dispatcher import Dispatcher
    from comms.dispatch.observe import serve_worker_metrics
    from comms.dispatch.routing import Router
    from comms.kit.db import Database, run_maintenance, try_sync_clock
    from comms.kit.logging import configure_logging
    from comms.kit.ratelimit import make_limiter
    from comms.kit.secretbox import SecretBox

    # Until the loop installs its own handler, a SIGTERM (nothing claimed yet) is a clean exit.
    signal.signal(signal.SIGTERM, _exit_after_drain)
    limit_malloc_arenas()
    settings = _settings(dispatch_concurrency=concurrency)
    configure_logging(settings.log_level, settings.log_json)
    _migrate(settings)
    wireless.use_list_file(settings.fcc_wireless_domains_file)

    async def _run() -> None:
        db = Database(settings.resolved_database_url)
        secrets = SecretBox(settings.resolved_secret_key)
        router = Router.from_settings(settings, db, secrets)
        limiter = make_limiter(settings.redis_url)
        dispatcher = Dispatcher(db, settings, secrets, router, limiter)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # The exporter first: a port that is taken stops the worker before it claims anything.
        port = metrics_port if metrics_port is not None else settings.worker_metrics_port
        exporter = await serve_worker_metrics(db, dispatcher, settings.host, port) if port else None
        await try_sync_clock(db)  # before the first claim: leases are on the database's clock
        dispatcher.start()
        freeze_startup_heap()
        maintenance = asyncio.create_task(run_maintenance(db, stop))
        await stop.wait()
        await dispatcher.stop()
        if exporter is not None:
            await exporter.cleanup()
        await maintenance
        await router.close()
        await limiter.close()
        await db.dispose()

    try:
        import uvloop

        uvloop.run(_run())
    except ImportError:  # pragma: no cover
        asyncio.run(_run())


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    top: Annotated[int, typer.Option(min=1, max=100, help="How many tenants with a backlog to list.")] = 10,
) -> None:
    """The queue across every tenant and worker: due now, due later, sending (per worker, with
    expired leases), unknown, and the tenants with the most due messages."""
    from rich.console import Console
    from rich.table import Table

    from comms.dispatch.status import QueueStatus, queue_status
    from comms.kit.clock import utcnow
    from comms.kit.db import Database, sync_clock

    settings = load_settings_or_exit()  # reads only: no data folder is made

    async def _run() -> QueueStatus:
        db = Database(settings.resolved_database_url)
        try:
            await sync_clock(db)  # lease times are the database server's
            async with db.read() as session:
                return await queue_status(session, utcnow(), top)
        finally:
            await db.dispose()

    try:
        found = asyncio.run(_run())
    except Exception as exc:  # a database that is away or not migrated: say so, no traceback
        typer.echo(
            f"error: cannot read the queue: {type(exc).__name__}: {str(exc).splitlines()[0]}", err=True
        )
        raise typer.Exit(1) from None
    data = found.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()
    age = data["oldest_due_seconds"]
    console.print(f"queue at {data['now']}")
    summary = Table(show_header=False)
    for label, value in (
        ("due now", f"{found.due:,}" + (f" (oldest waited {age:,.1f} s)" if age is not None else "")),
        ("due later", f"{found.later:,}"),
        (
            "sending",
            f"{found.sending:,}"
            + (f" ({data['expired_leases']:,} with expired leases)" if data["expired_leases"] else ""),
        ),
        ("unknown", f"{found.unknown:,}"),
    ):
        summary.add_row(label, value)
    console.print(summary)
    if found.workers:
        workers = Table(title="workers holding messages")
        for column in ("worker", "messages", "expired", "lease until"):
            workers.add_column(column)
        for w in data["workers"]:
            workers.add_row(w["worker"], f"{w['messages']:,}", f"{w['expired']:,}", w["lease_until"] or "")
        console.print(workers)
    if found.tenants:
        tenants = Table(title="tenants with messages due")
        for column in ("tenant", "name", "due"):
            tenants.add_column(column)
        for t in data["tenants"]:
            tenants.add_row(t["id"], t["name"], f"{t['due']:,}")
        console.print(tenants)


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Option(help="Tenant name.")],
    region: Annotated[str, typer.Option(help="Default region for national phone numbers.")] = "CN",
    sender: Annotated[
        list[str] | None, typer.Option(help="A sender identity (from-address or SMS id).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a tenant and print its id."""
    from comms.compliance.settings import unplanned_region
    from comms.tenants.service import create_tenant

    why = unplanned_region(region)
    if why is not None:
        typer.echo(f"error: --region: {why}", err=True)
        raise typer.Exit(2)

    async def create(session: AsyncSession) -> str:
        extra = {"sender_identities": list(sender)} if sender else None
        return (await create_tenant(session, name, region, extra)).id

    try:
        tenant_id = _in_transaction(create)
    except ValidationError as exc:
        fields = {"default_region": "--region", "sender_identities": "--sender"}
        for error in exc.errors():
            where = (
                fields.get(str(error["loc"][0]), ".".join(str(p) for p in error["loc"]))
                if error["loc"]
                else ""
            )
            typer.echo(f"error: {where}: {pydantic_message(error)}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"id": tenant_id}) if as_json else tenant_id)


@apikey_app.command("create")
def apikey_create(
    tenant: Annotated[str, typer.Option(help="Tenant id (tnt_...).")],
    scope: Annotated[
        list[str] | None, typer.Option(help="A scope; repeat for more. Default: all but pii:read.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API key and print its token once."""
    from comms.tenants.service import create_api_key

    async def create(session: AsyncSession) -> tuple[str, str]:
        key, token = await create_api_key(session, tenant, scope, name)
        return key.id, token

    try:
        key_id, token = _in_transaction(create)
    except (LookupError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"id": key_id, "token": token}) if as_json else token)


@apikey_app.command("revoke")
def apikey_revoke(
    key_id: Annotated[
        str, typer.Argument(help="The key's id (key_..., the part of the token after comms_).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Revoke an API key: every request with it is refused from now on (401)."""
    from comms.tenants.service import revoke_api_key

    async def revoke(session: AsyncSession) -> bool:
        return await revoke_api_key(session, key_id, actor="cli")

    try:
        revoked = _in_transaction(revoke)
    except LookupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    message = "revoked" if revoked else "already revoked"
    typer.echo(
        json.dumps({"id": key_id, "revoked": True, "message": message}) if as_json else f"{key_id}: {message}"
    )


def _read_recipients(path: Path) -> list[Any]:
    """A text file (one address per line), or a CSV with a header: `to` (else the first column) is
    the address and the other columns are that recipient's variables."""
    text = path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    if "," not in lines[0]:
        return [line.strip() for line in lines]
    rows = list(csv.DictReader(lines))
    if not rows:
        return []
    fields = list(rows[0].keys())
    to_field = "to" if "to" in fields else fields[0]
    recipients: list[Any] = []
    for row in rows:
        variables = {k: v for k, v in row.items() if k != to_field and k and v is not None}
        recipients.append({"to": row[to_field], "variables": variables} if variables else row[to_field])
    return recipients


@app.command()
def send(
    channel: Annotated[str, typer.Option(help="sms or email.")],
    recipients_file: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="CSV or text file.")],
    content: Annotated[str | None, typer.Option(help="Content template.")] = None,
    template: Annotated[str | None, typer.Option(help="Stored template code or id.")] = None,
    subject: Annotated[str | None, typer.Option(help="Email subject.")] = None,
    category: Annotated[
        str | None, typer.Option(help="verification|transactional|announcement|marketing")
    ] = None,
    var: Annotated[list[str] | None, typer.Option(help="A shared variable k=v; repeat for more.")] = None,
    url: Annotated[str, typer.Option(envvar="COMMS_API_URL", help="API base URL.")] = "http://127.0.0.1:8000",
    token: Annotated[str | None, typer.Option(envvar="COMMS_TOKEN", help="API key.")] = None,
    wait: Annotated[bool, typer.Option(help="Show progress until the batch is done.")] = True,
) -> None:
    """Bulk-send to the recipients in a file through the API, with a progress bar until done."""
    import httpx

    if not token:
        typer.echo("error: --token (or COMMS_TOKEN) is required", err=True)
        raise typer.Exit(2)
    variables: dict[str, str] = {}
    for item in var or []:
        key, sep, value = item.partition("=")
        if not sep:
            typer.echo(f"error: --var expects k=v, got {item!r}", err=True)
            raise typer.Exit(2)
        variables[key] = value
    body: dict[str, Any] = {"channel": channel, "recipients": _read_recipients(recipients_file)}
    for option, given in (
        ("content", content),
        ("template", template),
        ("subject", subject),
        ("category", category),
    ):
        if given is not None:
            body[option] = given
    if variables:
        body["variables"] = variables
    headers = {"Authorization": f"Bearer {token}"}
    try:
        _send_and_follow(url, headers, body, wait)
    except httpx.TransportError as exc:
        typer.echo(f"error: cannot reach the service at {url}: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None


def _send_and_follow(url: str, headers: dict[str, str], body: dict[str, Any], wait: bool) -> None:
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        answer = client.post("/communication/bulk", json=body)
        try:
            payload = answer.json()
        except ValueError:
            typer.echo(
                f"error: HTTP {answer.status_code} from {url}, not the comms API: {answer.text[:200]}",
                err=True,
            )
            raise typer.Exit(1) from None
        if answer.status_code != 202:
            typer.echo(json.dumps(payload, indent=2, ensure_ascii=False), err=True)
            raise typer.Exit(1)
        batch_id = payload["batch_id"]
        typer.echo(f"batch {batch_id}: {payload['total']} recipient(s) accepted {payload.get('counts')}")
        if not wait:
            return
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as progress:
            task = progress.add_task("sending", total=payload["total"])
            while True:
                data = client.get(f"/communication/batches/{batch_id}").json()["data"]
                done = round(data["progress"] * data["total"])
                progress.update(task, completed=done)
                if data["done"]:
                    break
                time.sleep(0.5)
        typer.echo(json.dumps(data["counts"]))
        _explain_unsent(client, batch_id, data["counts"])


UNSENT_STATUSES = ("rejected", "suppressed", "failed", "undelivered", "unknown")


def _explain_unsent(client: Any, batch_id: str, counts: dict[str, int]) -> None:
    """Which recipients did not go out, and why (masked, up to 20 per status)."""
    for status in UNSENT_STATUSES:
        if not counts.get(status):
            continue
        listed = client.get(
            "/communication/logs", params={"batch_id": batch_id, "status": status, "page_size": 20}
        ).json()
        for item in listed.get("items", []):
            typer.echo(f"  {status}: {item['recipient']}: {item.get('error') or ''}")
        more = counts[status] - len(listed.get("items", []))
        if more > 0:
            typer.echo(f"  ... {more} more: GET /communication/logs?batch_id={batch_id}&status={status}")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
