"""Sending-domain authentication (COMPLIANCE.md M5): SPF, DKIM and DMARC looked up in DNS.

Gmail and Yahoo require all three of bulk senders, with DMARC at least ``p=none``. The check reads:

* SPF: exactly one TXT record ``v=spf1 ...`` at the domain (RFC 7208 4.5: two are an error), not
  ending in ``+all`` (which lets anyone send as the domain);
* DKIM: a TXT record at ``<selector>._domainkey.<domain>`` with a non-empty base64 ``p=`` (an empty
  one is a revoked key, RFC 6376 3.6.1), for at least one of the tenant's selectors;
* DMARC: one ``v=DMARC1`` TXT record at ``_dmarc.<domain>`` or, failing that, at a parent domain
  (the DNS tree walk of DMARCbis, which for the usual sub-domain finds the organizational domain's
  record; there its ``sp=`` applies when given), with ``p`` (``sp``) of none, quarantine or reject.

Alignment follows: the DKIM key is looked up at the From domain itself, so a signature with it is
aligned. The resolver is the system's, or ``COMMS_DNS_NAMESERVER`` (``host`` or ``host:port``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from comms.compliance.settings import DomainAuthentication, RecordCheck
from comms.kit.clock import isoformat

LOOKUP_SECONDS = 5.0
_MAX_TREE_WALK = 8
DMARC_POLICIES = frozenset({"none", "quarantine", "reject"})

# Mailbox providers' own domains: their DMARC policies make mail "from" them sent through anyone
# else's servers fail (Gmail: "don't impersonate Gmail From: headers"). Sub-domains included.
MAILBOX_PROVIDER_DOMAINS = frozenset(
    """gmail.com googlemail.com yahoo.com yahoo.co.uk yahoo.co.jp yahoo.fr yahoo.de ymail.com
    rocketmail.com aol.com aim.com outlook.com hotmail.com hotmail.co.uk live.com msn.com icloud.com
    me.com mac.com gmx.com gmx.de gmx.net web.de yandex.ru yandex.com mail.ru proton.me protonmail.com
    zoho.com qq.com foxmail.com 163.com 126.com yeah.net sina.com sohu.com naver.com""".split()  # noqa: SIM905
)


class DnsUnavailable(Exception):
    """The DNS could not be asked (timeout, every server failing): no verdict either way."""


def impersonated_provider(domain: str) -> str | None:
    """The mailbox provider's domain that ``domain`` is or is under, else None."""
    labels = domain.lower().rstrip(".").split(".")
    for start in range(len(labels) - 1):
        candidate = ".".join(labels[start:])
        if candidate in MAILBOX_PROVIDER_DOMAINS:
            return candidate
    return None


def parse_nameserver(value: str) -> tuple[str, int]:
    """``"10.0.0.53"``, ``"127.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` -> (address, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, "53"
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"not a nameserver: {value!r} (expected host or host:port)")
    return host, int(port)


def make_resolver(nameserver: str | None) -> dns.asyncresolver.Resolver:
    """The system's resolver, or one that asks only ``nameserver``. Caches nothing: a tenant who
    just published a record is checked against what the DNS says now."""
    try:
        if nameserver:
            try:
                host, port = parse_nameserver(nameserver)
            except ValueError as exc:
                raise DnsUnavailable(f"COMMS_DNS_NAMESERVER is invalid: {exc}") from None
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = port
        else:
            resolver = dns.asyncresolver.Resolver()
    except dns.resolver.NoResolverConfiguration as exc:
        raise DnsUnavailable(f"no DNS resolver configured ({exc})") from None
    resolver.lifetime = LOOKUP_SECONDS
    resolver.timeout = LOOKUP_SECONDS / 2
    return resolver


async def txt_records(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    """The TXT records at ``name`` (each one's strings joined); [] when there are none."""
    return (await txt_lookup(resolver, name))[1]


async def txt_lookup(resolver: dns.asyncresolver.Resolver, name: str) -> tuple[str, list[str]]:
    """(the name the records were found at after following CNAMEs, the TXT records there)."""
    try:
        answer = await resolver.resolve(name, "TXT", raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return name, []
    except dns.exception.Timeout:
        raise DnsUnavailable(f"DNS lookup of {name} timed out") from None
    except dns.resolver.NoNameservers:
        raise DnsUnavailable(f"no DNS server answered for {name} (SERVFAIL or refused)") from None
    except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
        return name, []
    except (dns.exception.SyntaxError, dns.name.IDNAException):
        # A name no DNS query can carry (a stray backslash, a label IDNA refuses), here taken
        # from another record (an SPF include or redirect): no records there, so a permerror.
        return name, []
    if answer.rrset is None:
        return name, []
    canonical = answer.canonical_name.to_text(omit_final_dot=True).lower()
    return canonical, [
        b"".join(rdata.strings).decode("utf-8", "replace")
        for rdata in answer.rrset
        if hasattr(rdata, "strings")
    ]


def _tags(record: str) -> dict[str, str]:
    """``"v=DMARC1; p=none"`` -> {"v": "DMARC1", "p": "none"} (names lower-cased)."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), "".join(value.split()))
    return tags


async def _spf_record(resolver: dns.asyncresolver.Resolver, domain: str) -> tuple[str | None, str | None]:
    """(the one SPF record at ``domain``, None) or (None, why there is not exactly one)."""
    found = [
        r
        for r in await txt_records(resolver, domain)
        if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")
    ]
    if not found:
        return None, f'no SPF record (TXT "v=spf1 ...") at {domain}'
    if len(found) > 1:
        return None, f"{len(found)} SPF records at {domain}: exactly one is allowed (RFC 7208)"
    return found[0], None


SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4: more DNS-querying terms than this is a permerror
_SPF_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})


def _spf_term_name(term: str) -> str:
    """``-include:_spf.example`` -> ``include``; ``a/24`` -> ``a``; ``~all`` -> ``all``."""
    return re.split(r"[:/=]", term.lstrip("+-~?"), maxsplit=1)[0]


async def _spf_all(
    resolver: dns.asyncresolver.Resolver, domain: str, seen: list[str], lookups: list[int]
) -> tuple[str | None, str | None]:
    """(the ``all`` that ends the evaluation of ``domain``'s record, following ``redirect=``;
    None for none) or an error: a record missing behind include/redirect, a loop, or more than
    SPF_LOOKUP_LIMIT lookups, each of which receivers treat as a permanent error."""
    if domain in seen:
        return None, f"SPF loop: {' -> '.join([*seen, domain])}"
    record, problem = await _spf_record(resolver, domain)
    if record is None:
        return None, problem
    terms = record.lower().split()[1:]
    lookups[0] += sum(1 for t in terms if _spf_term_name(t) in _SPF_LOOKUP_TERMS)
    if lookups[0] > SPF_LOOKUP_LIMIT:
        return None, f"SPF needs more than {SPF_LOOKUP_LIMIT} DNS lookups (RFC 7208 permerror)"
    for term in terms:
        if _spf_term_name(term) == "include" and ":" in term:
            _, included_problem = await _spf_all(resolver, term.split(":", 1)[1], [*seen, domain], lookups)
            if included_problem is not None:
                return None, f"include of {domain}: {included_problem}"
    ending = next((t for t in terms if _spf_term_name(t) == "all"), None)
    if ending is not None:
        return ending, None
    redirect = next((t.split("=", 1)[1] for t in terms if t.startswith("redirect=")), None)
    if redirect is not None:
        return await _spf_all(resolver, redirect, [*seen, domain], lookups)
    return None, None


async def check_spf(resolver: dns.asyncresolver.Resolver, domain: str) -> RecordCheck:
    record, problem = await _spf_record(resolver, domain)
    if record is None:
        return RecordCheck(ok=False, detail=problem or f"no SPF record at {domain}")
    ending, problem = await _spf_all(resolver, domain, [], [0])
    if problem is not None:
        return RecordCheck(ok=False, detail=problem, record=record)
    if ending in ("+all", "all"):
        return RecordCheck(
            ok=False, detail=f"the SPF record of {domain} allows any sender (+all)", record=record
        )
    return RecordCheck(ok=True, detail=f"SPF record at {domain}", record=record)


@dataclass(frozen=True, slots=True)
class DkimSigners:
    """Who signs the tenant's mail for a domain, as the DKIM check must find it published.

    ``keys``: selector -> (who, public key in base64 DER) for keys comms itself signs with (an
    ``smtp`` account's): the key at that selector must be that one, or its signatures fail.
    ``hosted``: who -> the DNS domains under which that vendor publishes the keys it signs the
    tenant's mail with (SendGrid's and SES's domain authentication: the tenant's selector is a
    CNAME into them): one of the selectors must lead there, or the vendor signs with a key of its
    own domain, which is not aligned with the From domain and does not pass DMARC."""

    keys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    hosted: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


async def check_dkim(
    resolver: dns.asyncresolver.Resolver,
    domain: str,
    selectors: list[str],
    signers: DkimSigners | None = None,
) -> RecordCheck:
    """A usable key at one of the selectors at least, and for every signer in ``signers``, the
    key it signs with (see :class:`DkimSigners`). Selectors a signer uses are looked at even when
    the tenant did not name them."""
    signers = signers or DkimSigners()
    problems: list[str] = []
    usable: dict[str, tuple[str, str, str]] = {}  # selector -> (name, name after CNAMEs, record)
    for selector in [*selectors, *(s for s in signers.keys if s not in selectors)]:
        name = f"{selector}._domainkey.{domain}"
        canonical, records = await txt_lookup(resolver, name)
        if not records:
            problems.append(f"no TXT record at {name}")
            continue
        for record in records:
            problem = _key_problem(name, record, signers.keys.get(selector))
            if problem is None:
                usable[selector] = (name, canonical, record)
                break
            problems.append(problem)
    unhosted = [
        f"no selector leads to {who}'s keys (a CNAME from <selector>._domainkey.{domain} to "
        f"{' or '.join(hosts)}, from its domain authentication)"
        for who, hosts in signers.hosted.items()
        if not any(_is_under(canonical, hosts) for _, canonical, _ in usable.values())
    ]
    unsigned = [s for s in signers.keys if s not in usable]  # their problem is in `problems`
    if not usable or unsigned or unhosted:
        return RecordCheck(ok=False, detail="; ".join(problems + unhosted) or "no DKIM selector given")
    names = [
        name if name == canonical else f"{name} (-> {canonical})" for name, canonical, _ in usable.values()
    ]
    return RecordCheck(
        ok=True, detail="DKIM key at " + ", ".join(names), record=next(iter(usable.values()))[2]
    )


def _key_problem(name: str, record: str, signed_with: tuple[str, str] | None) -> str | None:
    """What is wrong with a DKIM key record, or None. ``signed_with``: (who, key) must match."""
    tags = _tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        return f"{name}: v= is not DKIM1"
    if "p" not in tags:
        return f"{name}: no p= (public key)"
    if not tags["p"]:
        return f"{name}: empty p= (the key is revoked)"
    if not _is_base64(tags["p"]):
        return f"{name}: p= is not base64"
    if signed_with is not None and "".join(tags["p"].split()) != signed_with[1]:
        return f"{name}: not the key {signed_with[0]} signs with"
    return None


def _is_under(name: str, domains: tuple[str, ...]) -> bool:
    return any(name == d or name.endswith("." + d) for d in domains)


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


# RFC 7489 6.3: "v=DMARC1" must be the first tag, exactly; receivers discard anything else (a
# record that begins "p=none; v=DMARC1" is no DMARC record at all).
_DMARC_VERSION = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")


async def check_dmarc(resolver: dns.asyncresolver.Resolver, domain: str) -> RecordCheck:
    labels = domain.split(".")
    for start in range(min(len(labels) - 1, _MAX_TREE_WALK)):
        at = ".".join(labels[start:])
        name = f"_dmarc.{at}"
        found = [r for r in await txt_records(resolver, name) if _DMARC_VERSION.match(r)]
        if not found:
            continue
        if len(found) > 1:
            return RecordCheck(
                ok=False, detail=f"{len(found)} DMARC records at {name}: exactly one is allowed"
            )
        record = found[0]
        tags = _tags(record)
        inherited = at != domain
        policy = (tags.get("sp") or tags.get("p", "")) if inherited else tags.get("p", "")
        policy = policy.lower()
        if policy not in DMARC_POLICIES:
            return RecordCheck(
                ok=False,
                detail=f"the DMARC record at {name} has no valid p= (none, quarantine or reject)",
                record=record,
            )
        where = f"{name} (applies to {domain})" if inherited else name
        return RecordCheck(ok=True, detail=f"DMARC p={policy} at {where}", record=record)
    return RecordCheck(
        ok=False, detail=f'no DMARC record (TXT "v=DMARC1; p=none|quarantine|reject") at _dmarc.{domain}'
    )


async def authenticate_domain(
    resolver: dns.asyncresolver.Resolver,
    domain: str,
    selectors: list[str],
    now: datetime,
    signers: DkimSigners | None = None,
) -> DomainAuthentication:
    """Look the three records up (concurrently). Raises :class:`DnsUnavailable`."""
    spf, dkim, dmarc = await asyncio.gather(
        check_spf(resolver, domain),
        check_dkim(resolver, domain, selectors, signers),
        check_dmarc(resolver, domain),
    )
    return DomainAuthentication(
        verified=spf.ok and dkim.ok and dmarc.ok,
        spf=spf,
        dkim=dkim,
        dmarc=dmarc,
        dkim_selectors=selectors,
        checked_at=isoformat(now),
    )
