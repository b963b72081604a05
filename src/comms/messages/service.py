"""``submit_bulk``: everything between a decoded bulk request and the stored batch.

Order matters: every check that can fail the whole request (template, category, variables,
send_at, sender) runs before anything is written; recipients are then normalized, deduped and
gated one by one, and the batch plus one log item per unique recipient are written in the
caller's transaction. Nothing is sent here: the dispatcher picks the rows up after the commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncSession

from comms.compliance import quiet_hours
from comms.compliance.content import MessageDecorator
from comms.compliance.dns_auth import impersonated_provider
from comms.compliance.gates import AcceptanceGate
from comms.compliance.reputation import email_reputation, marketing_paused
from comms.compliance.settings import TenantSettings, load_settings
from comms.errors import FieldError, PayloadTooLarge, ValidationFailed
from comms.events.service import EVENT_STATUSES, subscribed_statuses, tell_changed_rows
from comms.kit.clock import NotRfc3339, parse_rfc3339, utcnow
from comms.kit.ids import new_id, new_ids
from comms.kit.secretbox import SecretBox
from comms.messages.recipients import (
    InvalidRecipient,
    normalize_email,
    normalize_phone,
    recipient_key,
    region_of_phone,
)
from comms.messages.repository import LogItemConstants, LogItemWriter
from comms.messages.schemas import CATEGORY_PRIORITY, BulkSendBody, Category, Channel, RecipientSpec
from comms.messages.views import BatchDisplay, log_item, secret_names_of
from comms.models import AuditEvent, Batch, Template
from comms.providers.sms.segments import count_segments
from comms.templates.rendering import (
    DEFAULT_SECRET_VARIABLES,
    CompiledTemplate,
    TemplateError,
    compile_template,
    redacted,
)
from comms.templates.repository import TemplateRepository
from comms.tenants.service import Principal

MAX_FIELD_ERRORS = 50
_DUE = frozenset({"queued", "scheduled"})

MAX_SCHEDULE_AHEAD = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    max_recipients: int
    page_size: int
    unmask: bool
    api_key_id: str | None
    ip: str | None


@dataclass(frozen=True, slots=True)
class Resolved:
    """The request after template defaults, category and variable checks."""

    channel: str
    category: str
    template: Template | None
    content: CompiledTemplate
    subject: CompiledTemplate | None
    html: CompiledTemplate | None
    required: frozenset[str]
    shared: dict[str, str]
    secret_names: frozenset[str]
    send_at: datetime | None
    sender: str | None
    settings: TenantSettings


class Accepted(NamedTuple):
    """One unique recipient after normalization: its log item's row as the writer takes it.

    A tuple, because 100,000 of them are made per bulk and they go to the database as they are.
    """

    id: str
    recipient: str
    key: str
    status: str
    error: str | None
    variables: dict[str, str] | None
    due_at: datetime | None = None  # only when it differs from the batch's (quiet hours)


@dataclass
class SubmitResult:
    batch_id: str | None
    total: int
    items: list[dict[str, Any]]
    counts: dict[str, int]


async def submit_bulk(
    session: AsyncSession,
    principal: Principal,
    body: BulkSendBody,
    secrets: SecretBox,
    options: SubmitOptions,
) -> SubmitResult:
    if len(body.recipients) > options.max_recipients:
        raise PayloadTooLarge(
            f"too many recipients: {len(body.recipients)} (the limit is {options.max_recipients})"
        )
    if not body.recipients:
        raise ValidationFailed.single("recipients", "at least one recipient is required")
    resolved = await _resolve(session, principal, body)
    _check_variables(body, resolved)
    _check_renders(body, resolved)
    gate = await AcceptanceGate.prepare(
        session,
        tenant_id=principal.tenant_id,
        salt=principal.tenant.hash_salt,
        settings=resolved.settings,
        channel=resolved.channel,
        category=resolved.category,
    )
    normalizer = _Normalizer(resolved, new_ids("log", len(body.recipients)))
    if not body.dry_run:
        gate.serialize_counts()
    if body.dry_run:
        items: list[Accepted] = []
        for chunk in _chunks(body.recipients):
            items.extend(await _gated(gate, resolved, normalizer.run(chunk)))
        return _dry_run_result(principal, body, resolved, items, options)
    return await _store(session, principal, body, resolved, gate, normalizer, secrets, options)


CHUNK = 10_000


# ORM-free: the batch row is written with a plain INSERT and never loaded in this transaction.
_SET_TOTAL = (
    update(Batch)
    .where(Batch.id == bindparam("batch_id"))
    .values(total=bindparam("count"))
    .execution_options(synchronize_session=False)
)


def _chunks(recipients: list[str | RecipientSpec]) -> Iterator[list[str | RecipientSpec]]:
    for start in range(0, len(recipients), CHUNK):
        yield recipients[start : start + CHUNK]


async def _gated(gate: AcceptanceGate, resolved: Resolved, items: list[Accepted]) -> list[Accepted]:
    """Apply suppression, consent and flow limits to the queued items; defer what quiet hours hold
    back; mark the rest scheduled when send_at is set."""
    await gate.load([a.key for a in items if a.status == "queued"])
    scheduled = resolved.send_at is not None
    quiet = quiet_hours.applies(resolved.channel, resolved.category)
    if not gate.needs_check and not scheduled and not quiet:
        return items
    with_region = (gate.needs_region or quiet) and resolved.channel == Channel.SMS
    send_time = resolved.send_at or utcnow()
    out: list[Accepted] = []
    for item in items:
        if item.status == "queued":
            region = region_of_phone(item.recipient) if with_region else None
            verdict = gate.check(item.key, region)
            held = (
                quiet_hours.acceptance_verdict(send_time, item.recipient, region, resolved.settings)
                if quiet and verdict is None
                else None
            )
            if verdict is not None:
                item = item._replace(status=verdict[0], error=verdict[1])
            elif held is not None:
                item = item._replace(status=held[0], error=held[1], due_at=held[2])
            elif scheduled:
                item = item._replace(status="scheduled")
        out.append(item)
    return out


async def _resolve(session: AsyncSession, principal: Principal, body: BulkSendBody) -> Resolved:
    errors: list[FieldError] = []
    try:
        channel = Channel(body.channel).value
    except ValueError:
        raise ValidationFailed.single("channel", "must be one of: sms, email") from None
    template: Template | None = None
    if body.template:
        template = await TemplateRepository(session, principal.tenant_id).find(body.template)
        if template is None:
            raise ValidationFailed.single("template", f"unknown template: {body.template}")
        if template.channel != channel:
            raise ValidationFailed.single(
                "template", f"template {template.code} is for {template.channel}, not {channel}"
            )
    category = _resolve_category(body.category, template)

    content_source = body.content or (template.content if template else "")
    if not content_source.strip():
        errors.append(FieldError("content", "content is required (or a template that supplies it)"))
    subject_source = body.subject or (template.subject if template else None)
    if channel == Channel.EMAIL and not (subject_source or "").strip():
        errors.append(FieldError("subject", "subject is required for email"))
    html_source = template.html if template and channel == Channel.EMAIL and not body.content else None

    compiled: dict[str, CompiledTemplate | None] = {}
    for name, source, html in (
        ("content", content_source, False),
        ("subject", subject_source, False),
        ("html", html_source, True),
    ):
        try:
            compiled[name] = compile_template(source, html) if source else None
        except TemplateError as exc:
            errors.append(FieldError("template" if name == "html" else name, str(exc)))
    if channel == Channel.EMAIL and subject_source and ("\r" in subject_source or "\n" in subject_source):
        errors.append(FieldError("subject", "subject must be a single line"))

    settings = load_settings(principal.tenant.settings)
    if channel == Channel.EMAIL and category == Category.MARKETING:
        _check_marketing_email(settings, compiled.get("subject"), errors)
        reputation = await email_reputation(session, principal.tenant_id, utcnow())
        if marketing_paused(reputation, settings):
            errors.append(
                FieldError(
                    "category",
                    f"marketing_paused: the spam complaint rate over the last 30 days is "
                    f"{reputation.rate:.2%}, at or above {settings.complaint_rate_threshold:.2%}; "
                    "transactional mail still goes out",
                )
            )
    send_at = _parse_send_at(body.send_at, errors)
    sender = _resolve_sender(channel, category, body.sender, settings, errors)
    if channel == Channel.EMAIL and not any(e.field == "sender" for e in errors):
        _check_from_domain(sender, category, settings, errors)
    if body.user_id is not None and len(body.user_id) > 200:
        errors.append(FieldError("user_id", "must be at most 200 characters"))
    if body.metadata:
        _check_metadata(body.metadata, errors)
    if errors:
        raise ValidationFailed(errors[0].message if len(errors) == 1 else "invalid request", errors)

    content = compiled["content"]
    assert content is not None
    required = content.variables
    for extra in (compiled["subject"], compiled["html"]):
        if extra is not None:
            required = required | extra.variables
    secret_names = _secret_names(template, category, required, body.variables)
    return Resolved(
        channel=channel,
        category=category,
        template=template,
        content=content,
        subject=compiled["subject"],
        html=compiled["html"],
        required=required,
        shared=dict(body.variables or {}),
        secret_names=secret_names,
        send_at=send_at,
        sender=sender,
        settings=settings,
    )


def _secret_names(
    template: Template | None, category: str, required: frozenset[str], shared: Mapping[str, str] | None
) -> frozenset[str]:
    """Whose values are encrypted at rest and shown as ******: the template's declared ones and
    the default names in any letter case (Code, OTP). A verification message that uses none of
    those has its code under another name ("pin", "token"): then every variable it uses is
    secret (COMPLIANCE.md P3: a code is never stored or shown in clear)."""
    names = set(secret_names_of(template.secret_variables if template else None))
    used = set(required) | set(shared or ())
    names |= {name for name in used if name.lower() in DEFAULT_SECRET_VARIABLES}
    if category == Category.VERIFICATION and names.isdisjoint(used):
        names |= used
    return frozenset(names)


def _check_marketing_email(
    settings: TenantSettings, subject: CompiledTemplate | None, errors: list[FieldError]
) -> None:
    """CAN-SPAM for commercial email: a physical postal address (C4) and a subject that says
    something of its own, not only what variables fill in (C2)."""
    if not settings.postal_address:
        errors.append(
            FieldError(
                "category",
                "marketing email needs the tenant's postal_address (CAN-SPAM): "
                "set it with PUT /communication/settings",
            )
        )
    if subject is not None and not subject.is_static and not subject.literal_text().strip(" \t-:|,.!?"):
        errors.append(
            FieldError("subject", "a marketing subject must not consist only of variables (CAN-SPAM)")
        )


# metadata rides on every log item of the batch, in every list of them: as SendGrid bounds its
# custom_args (10,000 bytes), so that a page of 200 items stays a few megabytes at most.
MAX_METADATA_KEYS = 50
MAX_METADATA_CHARACTERS = 10_000


def _check_metadata(metadata: dict[str, str], errors: list[FieldError]) -> None:
    if len(metadata) > MAX_METADATA_KEYS:
        errors.append(FieldError("metadata", f"at most {MAX_METADATA_KEYS} keys ({len(metadata)} given)"))
    elif (size := sum(len(k) + len(v) for k, v in metadata.items())) > MAX_METADATA_CHARACTERS:
        errors.append(
            FieldError(
                "metadata",
                f"at most {MAX_METADATA_CHARACTERS} characters of keys and values together ({size} given)",
            )
        )


def _resolve_category(requested: str | None, template: Template | None) -> str:
    template_category: str | None = None
    if template is not None:
        # A template flagged as carrying promotion is marketing, whatever it is labelled (C9).
        template_category = Category.MARKETING.value if template.contains_promo else template.category
    if requested is None:
        return template_category or Category.MARKETING.value
    try:
        category = Category(requested).value
    except ValueError:
        raise ValidationFailed.single(
            "category", "must be one of: verification, transactional, announcement, marketing"
        ) from None
    if template_category is not None and category != template_category:
        raise ValidationFailed.single(
            "category",
            f"category_mismatch: the template {template.code if template else ''} is {template_category}",
        )
    return category


def _parse_send_at(value: str | None, errors: list[FieldError]) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parse_rfc3339(value)
    except NotRfc3339 as exc:
        message = "must be an RFC 3339 timestamp, e.g. 2026-04-15T10:00:00Z"
        errors.append(
            FieldError("send_at", "must include a time zone offset or Z" if exc.missing_offset else message)
        )
        return None
    if parsed <= utcnow():
        errors.append(FieldError("send_at", "must be in the future"))
        return None
    if parsed > utcnow() + MAX_SCHEDULE_AHEAD:
        # Unsubscribe links are checked against the log item's creation time: scheduled further
        # ahead, a link would die too soon after the mail arrives (COMPLIANCE.md C5: >= 30 days).
        errors.append(FieldError("send_at", f"must be within {MAX_SCHEDULE_AHEAD.days} days"))
        return None
    return parsed


def _resolve_sender(
    channel: str, category: str, requested: str | None, settings: TenantSettings, errors: list[FieldError]
) -> str | None:
    """The request's sender, which must be a registered identity declared for this category's
    stream (K2: marketing and transactional mail from separate senders), else the first such one."""
    allowed = settings.email_senders() if channel == Channel.EMAIL else settings.sms_senders()
    if requested is None:
        for_stream = settings.senders_for(channel, category)
        if for_stream or not allowed:
            return for_stream[0] if for_stream else None
        errors.append(
            FieldError(
                "sender",
                f"no_sender_for_stream: none of the tenant's {channel} sender identities "
                f"({', '.join(allowed)}) is declared for {category}: add {category} to one's streams "
                "in sender_identities",
            )
        )
        return None
    streams = settings.streams_of(channel, requested)
    if streams is None:
        errors.append(
            FieldError(
                "sender",
                f"unverified_sender: {_quoted(requested)} is not one of the tenant's sender identities",
            )
        )
        return None
    if category not in streams:
        errors.append(
            FieldError(
                "sender",
                f"sender_stream_mismatch: {requested} is declared for {', '.join(streams)}, not {category}",
            )
        )
        return None
    return requested


def _check_from_domain(
    sender: str | None, category: str, settings: TenantSettings, errors: list[FieldError]
) -> None:
    """M5: no From on a mailbox provider's domain; marketing only from a domain whose SPF, DKIM
    and DMARC passed (unless the tenant turned ``require_dns_authentication`` off)."""
    domain = sender.rpartition("@")[2].lower() if sender else None
    provider = impersonated_provider(domain) if domain else None
    if provider is not None:
        errors.append(
            FieldError(
                "sender",
                f"mailbox_provider_domain: comms cannot send as {provider}: mail from a mailbox "
                "provider's domain sent through other servers fails its DMARC policy (and Gmail refuses "
                "bulk mail impersonating it); use an address on a domain of your own",
            )
        )
        return
    if category != Category.MARKETING or not settings.require_dns_authentication:
        return
    if domain is None:
        errors.append(
            FieldError(
                "sender",
                "unauthenticated_domain: marketing email needs a From address on a domain whose SPF, "
                "DKIM and DMARC are verified: add one to sender_identities",
            )
        )
        return
    checked = settings.email_domains.get(domain)
    if checked is not None and checked.verified:
        return
    how = f"POST /communication/settings/domains/{domain}/verify"
    if checked is None:
        message = f"{domain} has not been verified: publish SPF, DKIM and DMARC records, then {how}"
    else:
        records = {"SPF": checked.spf, "DKIM": checked.dkim, "DMARC": checked.dmarc}
        details = "; ".join(f"{name}: {records[name].detail}" for name in checked.missing())
        message = (
            f"{domain} is missing {', '.join(checked.missing())} (checked {checked.checked_at}: "
            f"{details}); fix the records, then {how}"
        )
    errors.append(FieldError("sender", f"unauthenticated_domain: marketing email from {message}"))


def _check_variables(body: BulkSendBody, resolved: Resolved) -> None:
    missing_shared = resolved.required - resolved.shared.keys()
    if not missing_shared:
        return
    errors: list[FieldError] = []
    missing_everywhere: set[str] = set()
    for index, spec in enumerate(body.recipients):
        own = spec.variables if isinstance(spec, RecipientSpec) else None
        missing = missing_shared - own.keys() if own else missing_shared
        if missing:
            missing_everywhere |= missing
            if len(errors) < MAX_FIELD_ERRORS:
                errors.append(
                    FieldError(f"recipients[{index}]", f"missing variables: {', '.join(sorted(missing))}")
                )
    if errors:
        raise ValidationFailed(f"missing template variables: {', '.join(sorted(missing_everywhere))}", errors)


# Directional formatting characters (RLO and the like): kept in a rejected address as it is shown,
# they would reorder the text around it in the log and in the tenant's own tools.
_BIDI_CONTROLS = dict.fromkeys([0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])


def _quoted(value: str, limit: int = 100) -> str:
    """A value of the request as an error message repeats it: at most ``limit`` characters."""
    return value if len(value) <= limit else value[:limit] + "..."


def _check_renders(body: BulkSendBody, resolved: Resolved) -> None:
    """One rendering at acceptance, of the shared variables with the first recipient's own: a
    template that cannot be rendered (a filter given a bad argument, a result past the length
    limit) or renders to nothing is a 422 now, instead of an accepted bulk whose every item fails
    (or goes out blank) at dispatch. Other recipients' own values are rendered at dispatch (one
    rendering per recipient here would cost a 100k bulk about a second)."""
    first = body.recipients[0]
    merged = dict(resolved.shared)
    own = isinstance(first, RecipientSpec) and bool(first.variables)
    if isinstance(first, RecipientSpec) and first.variables:
        merged.update(first.variables)
    # With values of its own, the first recipient's may be what fails: the error says so.
    field = "recipients[0]" if own else "template" if body.template else "content"
    rendered: dict[str, str] = {}
    for name, part in (("content", resolved.content), ("subject", resolved.subject), ("html", resolved.html)):
        if part is None:
            continue
        try:
            rendered[name] = part.render(merged)
        except TemplateError as exc:
            raise ValidationFailed.single(field if name == "content" or own else name, str(exc)) from None
    if not rendered["content"].strip() and not rendered.get("html", "").strip():
        raise ValidationFailed.single(field, "the message renders to nothing (an empty text)")
    subject = rendered.get("subject", "")
    if "\r" in subject or "\n" in subject:
        broken = (
            sorted(n for n in resolved.subject.variables if _multiline(merged.get(n)))
            if resolved.subject
            else []
        )
        where = field if own else f"variables.{broken[0]}" if broken else "subject"
        raise ValidationFailed.single(
            where, "the subject renders to more than one line (a header holds no line break)"
        )


def _multiline(value: str | None) -> bool:
    return value is not None and ("\r" in value or "\n" in value)


# A recipient whose own values would put a line break into the subject (_Normalizer.run).
_BROKEN_SUBJECT = "the subject would hold a line break from this recipient's variables"


class _Normalizer:
    """Normalizes and dedupes recipients chunk by chunk (dedupe spans the whole request).

    Invalid addresses become ``rejected`` items, not request errors; so does a recipient whose
    own values would put a line break into the subject (a header holds none: the message could
    not be built at dispatch), at one look-up per recipient with values of its own.
    """

    def __init__(self, resolved: Resolved, ids: list[str]) -> None:
        self.is_sms = resolved.channel == Channel.SMS
        self.region = resolved.settings.default_region
        self.seen: set[str] = set()
        self.ids = iter(ids)
        self.has_own_variables = False
        self.subject_names = resolved.subject.variables if resolved.subject is not None else frozenset()

    def run(self, recipients: list[str | RecipientSpec]) -> list[Accepted]:
        is_sms, region, seen, ids = self.is_sms, self.region, self.seen, self.ids
        accepted: list[Accepted] = []
        append = accepted.append
        make = Accepted
        for spec in recipients:
            if type(spec) is str:
                raw, own = spec, None
            else:
                assert isinstance(spec, RecipientSpec)
                raw, own = spec.to, spec.variables
                self.has_own_variables = self.has_own_variables or bool(own)
            try:
                normalized = normalize_phone(raw, region) if is_sms else normalize_email(raw)
            except InvalidRecipient as exc:
                # 319: its key "!" + shown must fit recipient_key's 320 (PostgreSQL enforces it).
                shown = raw.translate(_BIDI_CONTROLS).strip()[:319] or "(empty)"
                if ("!" + shown) not in seen:
                    seen.add("!" + shown)
                    append(make(next(ids), shown, "!" + shown, "rejected", exc.reason, own))
                continue
            key = normalized if is_sms else recipient_key("email", normalized)
            if key not in seen:
                seen.add(key)
                if own and any(_multiline(own.get(n)) for n in self.subject_names):
                    append(make(next(ids), normalized, key, "rejected", _BROKEN_SUBJECT, own))
                else:
                    append(make(next(ids), normalized, key, "queued", None, own))
        return accepted


def _with_secrets_encrypted(item: Accepted, secret_names: frozenset[str], box: SecretBox) -> Accepted:
    own = item.variables
    if not own or secret_names.isdisjoint(own):
        return item
    return item._replace(variables=_encrypt_secrets(own, secret_names, box))


def _encrypt_secrets(values: dict[str, str], secret_names: frozenset[str], box: SecretBox) -> dict[str, str]:
    if secret_names.isdisjoint(values):
        return values
    return {k: (box.encrypt(v) if k in secret_names else v) for k, v in values.items()}


async def _store(
    session: AsyncSession,
    principal: Principal,
    body: BulkSendBody,
    resolved: Resolved,
    gate: AcceptanceGate,
    normalizer: _Normalizer,
    secrets: SecretBox,
    options: SubmitOptions,
) -> SubmitResult:
    """Write the batch, then its log items chunk by chunk.

    While the database writes chunk k (SQLite and PostgreSQL both work outside the GIL), this
    thread normalizes chunk k+1: a 100k bulk costs about max(normalize, insert), not their sum.
    """
    now = utcnow()
    batch = Batch(
        id=new_id("bat"),
        tenant_id=principal.tenant_id,
        api_key_id=options.api_key_id,
        channel=resolved.channel,
        category=resolved.category,
        template_id=resolved.template.id if resolved.template else None,
        template_version=resolved.template.version if resolved.template else None,
        user_id=body.user_id,
        content=resolved.content.source,
        subject=resolved.subject.source if resolved.subject else None,
        html=resolved.html.source if resolved.html else None,
        variables=_encrypt_secrets(resolved.shared, resolved.secret_names, secrets),
        secret_variables=sorted(resolved.secret_names),
        provider_templates=resolved.template.provider_templates if resolved.template else {},
        metadata_=dict(body.metadata or {}),
        sender=resolved.sender,
        send_at=resolved.send_at,
        total=0,
        created_at=now,
    )
    # First, through the session: on PostgreSQL that statement opens the transaction, which the
    # items' COPY or INSERT (sent on the driver directly) then runs in. Its total comes after them.
    await batch.insert_into(session)
    writer = LogItemWriter(
        session,
        LogItemConstants(
            tenant_id=principal.tenant_id,
            batch_id=batch.id,
            channel=resolved.channel,
            category=resolved.category,
            user_id=body.user_id,
            template_id=batch.template_id,
            priority=CATEGORY_PRIORITY[Category(resolved.category)],
            created_at=now,
            due_at=resolved.send_at or now,
        ),
    )
    await writer.open()
    used = 0
    counts: Counter[str] = Counter()
    first: list[Accepted] = []
    told: list[Accepted] = []  # refused or held back at once: their events go out with the 202
    wanted: frozenset[str] | None = None  # what the tenant's webhook wants; read at the first refusal
    try:
        for chunk in _chunks(body.recipients):
            normalized = normalizer.run(chunk)
            await writer.wait()
            items = await _gated(gate, resolved, normalized)
            if normalizer.has_own_variables:
                items = [_with_secrets_encrypted(item, resolved.secret_names, secrets) for item in items]
            counts.update(item.status for item in items)
            if any(counts[status] for status in EVENT_STATUSES):
                # Only a tenant whose webhook wants these costs an event each (most have none).
                if wanted is None:
                    hooks = await subscribed_statuses(session, [principal.tenant_id])
                    wanted = hooks.get(principal.tenant_id, frozenset())
                if wanted:
                    told.extend(item for item in items if item.status in wanted)
            if len(first) < options.page_size:
                first.extend(items[: options.page_size - len(first)])
            used += len(items)
            await writer.start(items)
        await writer.wait()
    except BaseException:  # a fault part-way (the caller's transaction rolls back next)
        await writer.settle()
        raise
    batch.total = used
    await session.execute(_SET_TOTAL, {"batch_id": batch.id, "count": used})
    audit = AuditEvent(
        id=new_id("aud"),
        tenant_id=principal.tenant_id,
        actor=options.api_key_id,
        action="bulk.submitted",
        ip=options.ip,
        details={
            "batch_id": batch.id,
            "channel": resolved.channel,
            "category": resolved.category,
            "template_id": batch.template_id,
            "template_version": batch.template_version,
            "counts": dict(counts),
        },
        created_at=now,
    )
    await audit.insert_into(session)
    if told:
        b = batch  # no provider was involved in these: (provider, provider message id) are None
        rows = (
            (i.id, b.tenant_id, b.id, b.channel, b.category, i.recipient, i.status, i.error, None, None)
            for i in told
        )
        await tell_changed_rows(session, rows, now)

    display = BatchDisplay.of(batch)
    first_page = [
        log_item(
            id=item.id,
            tenant_id=principal.tenant_id,
            batch_id=batch.id,
            channel=resolved.channel,
            category=resolved.category,
            recipient=item.recipient,
            status=item.status,
            error=item.error,
            content=display.render(item.variables),
            user_id=body.user_id,
            template_id=batch.template_id,
            created_at=now,
            updated_at=now,
            unmask=options.unmask,
            metadata=display.metadata,
        )
        for item in first
    ]
    return SubmitResult(batch_id=batch.id, total=used, items=first_page, counts=dict(counts))


def _dry_run_result(
    principal: Principal,
    body: BulkSendBody,
    resolved: Resolved,
    items: list[Accepted],
    options: SubmitOptions,
) -> SubmitResult:
    """Render every recipient and count SMS segments, storing and sending nothing."""
    now = utcnow()
    counts: dict[str, int] = {}
    page: list[dict[str, Any]] = []
    # One rendering per distinct set of the recipients' own values, and one segment count per
    # rendering and region: a 100k dry run whose recipients share their values renders once (each
    # rendering of a long text is milliseconds, and the event loop waits for all of them).
    renders: dict[Any, tuple[str | None, str | None]] = {}
    segment_counts: dict[tuple[Any, str | None], int] = {}
    for item in items:
        counts[item.status] = counts.get(item.status, 0) + 1
        key = tuple(sorted(item.variables.items())) if item.variables else None
        if key not in renders:
            renders[key] = _dry_render(resolved, item.variables)
        text, render_error = renders[key]
        error = render_error or item.error
        segments = None
        if text is not None and resolved.channel == Channel.SMS:
            region = region_of_phone(item.recipient)
            if (key, region) not in segment_counts:
                # What will really be sent: with the signature and opt-out text added at dispatch.
                sent_text = MessageDecorator.sms_text(
                    text, category=resolved.category, region=region, settings=resolved.settings
                )
                segment_counts[key, region] = count_segments(sent_text).segments
            segments = segment_counts[key, region]
        if len(page) < options.page_size:
            merged = dict(resolved.shared)
            if item.variables:
                merged.update(item.variables)
            entry = log_item(
                id=None,
                tenant_id=principal.tenant_id,
                batch_id=None,
                channel=resolved.channel,
                category=resolved.category,
                recipient=item.recipient,
                status=item.status,
                error=error,
                content=resolved.content.render(redacted(merged, resolved.secret_names)) if text else None,
                user_id=body.user_id,
                template_id=resolved.template.id if resolved.template else None,
                created_at=now,
                updated_at=now,
                unmask=options.unmask,
                metadata=dict(body.metadata) if body.metadata else None,
                segments=segments,
            )
            page.append(entry)
    return SubmitResult(batch_id=None, total=len(items), items=page, counts=counts)


def _dry_render(resolved: Resolved, own: dict[str, str] | None) -> tuple[str | None, str | None]:
    """(the text, or None and why it cannot be rendered) with ``own`` over the shared values."""
    merged = {**resolved.shared, **own} if own else resolved.shared
    try:
        text = resolved.content.render(merged)
        if resolved.subject is not None:
            resolved.subject.render(merged)
    except TemplateError as exc:
        return None, str(exc)
    return text, None
