"""Settings: environment variables with the prefix ``COMMS_`` (and an optional ``.env``).

With no environment at all the service runs on embedded defaults: a SQLite file under
``./var``, an in-process dispatcher and the ``outbox`` provider writing to ``./var/outbox``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from functools import cached_property
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from comms.kit.urls import http_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMMS_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    redis_url: str | None = None  # shared rate limits across processes; in-process limits without it
    rate_limit_per_second: float = Field(
        default=50.0, gt=0, allow_inf_nan=False, description="API requests per tenant"
    )
    rate_limit_burst: float = Field(default=100.0, ge=1, allow_inf_nan=False)
    outbox_dir: Path | None = None
    secret_key: str | None = None
    public_url: str | None = None
    # The DNS server that sending-domain checks (SPF, DKIM, DMARC) ask: "host" or "host:port";
    # unset, the system's resolver (/etc/resolv.conf).
    dns_nameserver: str | None = None
    # A copy of the FCC's Wireless Domain Names list (one domain per line): marketing email to
    # them needs express prior authorization (compliance/wireless.py has the major ones built in).
    fcc_wireless_domains_file: Path | None = None
    # Event webhooks may post to private, loopback and link-local addresses (an on-premises
    # deployment); off, only to public ones (kit/netguard.py).
    event_webhook_allow_private: bool = False
    # Provider endpoints (an in-house gateway, Kannel, an SMTP relay) are often on the private
    # network, so they may be by default; a deployment whose tenants are not trusted with the
    # servers' network turns this off (kit/netguard.py, docs/deploy.md).
    provider_allow_private: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    max_recipients: int = Field(default=100_000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Every other JSON body (templates, settings, providers, consents, ...): kit/bodylimit.py
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    dispatcher_enabled: bool = True
    # An API process without a dispatcher still sends the verification codes it accepts (the
    # express lane); false leaves all sending to `comms worker` processes.
    express_lane: bool = True
    # `comms worker` serves GET /metrics on this port (on COMMS_HOST) when set.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    dispatch_batch_size: int = Field(default=500, ge=1, le=10_000)
    dispatch_concurrency: int = Field(default=4, ge=1, le=256)
    # Finite: a lease or a wait of inf seconds is no setting (timedelta refuses it mid-run).
    lease_seconds: float = Field(default=60.0, gt=0, le=86_400, allow_inf_nan=False)
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=3_600, allow_inf_nan=False)
    max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=2.0, gt=0, le=86_400, allow_inf_nan=False)
    retry_max_seconds: float = Field(default=600.0, gt=0, le=7 * 86_400, allow_inf_nan=False)

    log_json: bool = False
    log_level: str = "INFO"

    @field_validator("public_url")
    @classmethod
    def _public_url_is_a_url(cls, value: str | None) -> str | None:
        # Callback URLs, unsubscribe links and signatures are built on it: a value no client can
        # use would break all of them quietly.
        return None if value is None else http_url(value)

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            # Set but empty (a deploy template's variable left blank): taken as unset, each machine
            # would make a key of its own and none could read the others' encrypted credentials.
            raise ValueError("is set but empty: give the key shared by every process, or unset it")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_is_a_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError("must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return level

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'comms.db').resolve()}"

    @cached_property
    def resolved_outbox_dir(self) -> Path:
        return (self.outbox_dir or self.data_dir / "outbox").resolve()

    @cached_property
    def resolved_secret_key(self) -> str:
        """The key that signs unsubscribe tokens and encrypts provider credentials.

        Generated once into the data dir when unset, so a restart keeps old tokens valid.
        """
        if self.secret_key:
            return self.secret_key
        return _data_dir_key(self.data_dir / "secret.key")

    @cached_property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


def _data_dir_key(path: Path) -> str:
    """The key in ``path``, written there first if there is none. Processes started together
    race here: the key is written to a private temporary file and linked into place, so a reader
    never sees a half-written (or empty) key, and the process that loses the race takes the
    winner's key."""
    for _ in range(50):
        try:
            key = path.read_text().strip()
        except FileNotFoundError:
            key = None
        if key:
            return key
        if key is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Mode 0600 from the start (no moment where others may read it). Several machines must
            # share one COMMS_SECRET_KEY instead: see docs/deploy.md.
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            try:
                os.link(temporary, path)  # fails if another process linked its key first
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: create it in place instead
                with contextlib.suppress(FileExistsError):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as handle:  # a reader seeing it empty reads again
                        handle.write(temporary.read_text())
            finally:
                temporary.unlink()
            continue
        time.sleep(0.01)  # an empty file: written by an older version right now
    raise RuntimeError(f"{path} stays empty: remove it, or set COMMS_SECRET_KEY")


def load_settings_or_exit(**overrides: object) -> Settings:
    """Settings from the environment, or one line per bad variable on stderr and exit status 2."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            name = "COMMS_" + str(error["loc"][0]).upper() if error["loc"] else "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"error: {name}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
