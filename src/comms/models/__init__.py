"""SQLAlchemy tables, one module each; importing this package registers them all on ``Base.metadata``."""

from comms.models.api_key import ApiKey
from comms.models.audit_event import AuditEvent
from comms.models.base import Base
from comms.models.batch import Batch
from comms.models.consent import Consent
from comms.models.contact_link import ContactLink
from comms.models.event_webhook import DELIVERY_DUE_SQL, EventDelivery, EventWebhook
from comms.models.idempotency_key import IdempotencyKey
from comms.models.message import CLAIMABLE, CLAIMABLE_SQL, SENDING_SQL, Message
from comms.models.provider_account import ProviderAccount
from comms.models.receipt_event import ReceiptEvent
from comms.models.suppression import Suppression
from comms.models.template import Template
from comms.models.tenant import Tenant

__all__ = [
    "CLAIMABLE",
    "CLAIMABLE_SQL",
    "DELIVERY_DUE_SQL",
    "SENDING_SQL",
    "ApiKey",
    "AuditEvent",
    "Base",
    "Batch",
    "Consent",
    "ContactLink",
    "EventDelivery",
    "EventWebhook",
    "IdempotencyKey",
    "Message",
    "ProviderAccount",
    "ReceiptEvent",
    "Suppression",
    "Template",
    "Tenant",
]
