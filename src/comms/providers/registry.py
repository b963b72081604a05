"""The explicit registry of provider classes by name."""

from __future__ import annotations

from comms.providers.base import Provider
from comms.providers.email.smtp import SmtpProvider
from comms.providers.outbox import OutboxProvider
from comms.providers.webhook import WebhookProvider

PROVIDERS: dict[str, type[Provider]] = {
    OutboxProvider.name: OutboxProvider,
    WebhookProvider.name: WebhookProvider,
    SmtpProvider.name: SmtpProvider,
}
