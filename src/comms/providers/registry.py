"""The explicit registry of provider classes by name."""

from __future__ import annotations

from comms.providers.base import Provider
from comms.providers.email.sendgrid import SendGridProvider
from comms.providers.email.ses import SesProvider
from comms.providers.email.smtp import SmtpProvider
from comms.providers.outbox import OutboxProvider
from comms.providers.sms.aliyun import AliyunProvider
from comms.providers.sms.kannel import KannelProvider
from comms.providers.sms.tencent import TencentProvider
from comms.providers.sms.twilio import TwilioProvider
from comms.providers.webhook import WebhookProvider

PROVIDERS: dict[str, type[Provider]] = {
    OutboxProvider.name: OutboxProvider,
    AliyunProvider.name: AliyunProvider,
    KannelProvider.name: KannelProvider,
    TwilioProvider.name: TwilioProvider,
    TencentProvider.name: TencentProvider,
    WebhookProvider.name: WebhookProvider,
    SmtpProvider.name: SmtpProvider,
    SendGridProvider.name: SendGridProvider,
    SesProvider.name: SesProvider,
}
