"""Turning stored rows into ``dto.CommunicationLogResponse`` items.

Before a message is sent its ``content`` is shown rendered from the batch's snapshot with every
secret variable redacted; once sent, the redacted rendering recorded at send time is shown.
Recipients are masked unless the caller may and asks to see them (COMPLIANCE.md P1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comms.compliance.addresses import scrub_address
from comms.kit.clock import isoformat
from comms.kit.masking import ANONYMIZED_KEY_PREFIX, mask_recipient
from comms.models import Batch, Message
from comms.templates.rendering import (
    DEFAULT_SECRET_VARIABLES,
    REDACTED,
    CompiledTemplate,
    TemplateError,
    compile_template,
    redacted,
)


def secret_names_of(declared: list[str] | None) -> frozenset[str]:
    return frozenset(DEFAULT_SECRET_VARIABLES) | frozenset(declared or ())


@dataclass
class BatchDisplay:
    """What is needed to show a batch's items: its content template and redacted variables."""

    content: CompiledTemplate
    shared_variables: dict[str, str]
    secret_names: frozenset[str]
    metadata: dict[str, str] | None
    _cache: dict[Any, str] = field(default_factory=dict)

    @classmethod
    def of(cls, batch: Batch) -> BatchDisplay:
        secrets = secret_names_of(batch.secret_variables)
        try:
            compiled = compile_template(batch.content)
        except TemplateError:
            compiled = CompiledTemplate(batch.content, frozenset(), True, None)
        return cls(
            content=compiled,
            shared_variables=redacted(batch.variables or {}, secrets),
            secret_names=secrets,
            metadata=batch.metadata_ or None,
        )

    def render(self, own_variables: dict[str, str] | None) -> str:
        cache_key = tuple(sorted(own_variables.items())) if own_variables else None
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        merged = dict(self.shared_variables)
        if own_variables:
            merged.update(redacted(own_variables, self.secret_names))
        try:
            text = self.content.render(merged)
        except TemplateError:
            text = self.content.source
        if len(self._cache) < 1024:
            self._cache[cache_key] = text
        return text


def log_item(
    *,
    id: str | None,
    tenant_id: str,
    batch_id: str | None,
    channel: str,
    category: str,
    recipient: str,
    status: str,
    error: str | None,
    content: str | None,
    user_id: str | None,
    template_id: str | None,
    created_at: datetime,
    updated_at: datetime,
    unmask: bool,
    metadata: dict[str, str] | None = None,
    provider: str | None = None,
    response: str | None = None,
    sent_at: datetime | None = None,
    delivered_at: datetime | None = None,
    provider_message_id: str | None = None,
    attempts: int = 0,
    segments: int | None = None,
    possible_duplicate: bool = False,
) -> dict[str, Any]:
    shown = recipient
    if not unmask:
        # Provider answers and errors may quote the address: masked there as well.
        shown = mask_recipient(channel, recipient)
        error = scrub_address(error, channel, recipient, shown)
        response = scrub_address(response, channel, recipient, shown)
    return {
        "id": id,
        "tenant_id": tenant_id,
        "batch_id": batch_id,
        "channel": channel,
        "category": category,
        "recipient": shown,
        "status": status,
        "error": error,
        "content": content,
        "user_id": user_id,
        "template_id": template_id,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "response": response,
        "attempts": attempts,
        "segments": segments,
        "possible_duplicate": possible_duplicate,
        "metadata": metadata,
        "created_at": isoformat(created_at),
        "updated_at": isoformat(updated_at),
        "sent_at": isoformat(sent_at),
        "delivered_at": isoformat(delivered_at),
    }


# Items whose content is shown as it will be sent, rendered from the batch: it is stored when
# sent. A finished item without content has none to show: never sent, or purged after
# content_retention_days (the batch's own content is not purged, so rendering it again would
# undo the purge).
_NOT_SENT_YET = frozenset({"scheduled", "queued", "deferred", "sending"})


def message_item(message: Message, display: BatchDisplay | None, unmask: bool) -> dict[str, Any]:
    content = message.content
    if content is None and display is not None and message.status in _NOT_SENT_YET:
        content = display.render(message.variables)
    return log_item(
        id=message.id,
        tenant_id=message.tenant_id,
        batch_id=message.batch_id,
        channel=message.channel,
        category=message.category,
        recipient=message.recipient,
        status=message.status,
        error=message.error,
        content=content,
        user_id=message.user_id,
        template_id=message.template_id,
        created_at=message.created_at,
        updated_at=message.updated_at,
        # Past log retention the stored recipient is its masked form already: shown as it is.
        unmask=unmask or message.recipient_key.startswith(ANONYMIZED_KEY_PREFIX),
        metadata=display.metadata if display else None,
        provider=message.provider,
        response=message.response,
        sent_at=message.sent_at,
        delivered_at=message.delivered_at,
        provider_message_id=message.provider_message_id,
        attempts=message.attempts,
        segments=message.segments,
        possible_duplicate=message.possible_duplicate,
    )


__all__ = ["REDACTED", "BatchDisplay", "log_item", "message_item", "secret_names_of"]
