"""The pure rules of the acceptance gates (compliance/gates.py; COMPLIANCE.md sections 0 and E):
which consent policy applies to a region, whether a suppression applies to a category, and
whether a consent record satisfies a policy."""

from __future__ import annotations

from typing import Any

import pytest

from comms.compliance.gates import (
    DEFAULT_CONSENT_POLICY,
    EEA_AND_UK,
    _consent_ok,
    consent_policy_for,
    suppression_applies,
)
from comms.compliance.settings import TenantSettings
from comms.models import Consent


def tenant(**kwargs: Any) -> TenantSettings:
    return TenantSettings(**kwargs)


def consent(
    status: str = "opted_in",
    basis: str | None = "opt_in",
    source: str | None = None,
    collected_with_optout: bool = False,
    written: bool = False,
) -> Consent:
    return Consent(
        channel="email",
        address_hash="0" * 64,
        status=status,
        basis=basis,
        source=source,
        collected_with_optout=collected_with_optout,
        written=written,
    )


# --- consent_policy_for --------------------------------------------------------------------------


def test_default_policy_table() -> None:
    assert DEFAULT_CONSENT_POLICY == {"EU": "soft_opt_in", "CN": "opt_in", "*": "none"}


def test_eea_and_uk_membership() -> None:
    # EU 27 + IS, LI, NO + GB, and 7 regions of the EU with numbers of their own (outermost: GP GF
    # MQ RE YT MF; and AX, Aland, part of Finland)
    assert len(EEA_AND_UK) == 31 + 7
    assert {"DE", "FR", "GB", "NO", "IS", "LI", "IE", "SE", "GR", "RE", "GP", "AX"} <= EEA_AND_UK
    # Overseas countries and territories (not EU territory) and the Crown Dependencies are not
    assert EEA_AND_UK.isdisjoint({"PF", "NC", "BL", "PM", "WF", "GL", "AW", "CW", "GI", "IM", "JE", "GG"})
    assert EEA_AND_UK.isdisjoint({"CH", "US", "CN", "UK", "EU", "TR", "RU"})


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ("DE", "soft_opt_in"),
        ("FR", "soft_opt_in"),
        ("GB", "soft_opt_in"),
        ("NO", "soft_opt_in"),
        ("IS", "soft_opt_in"),
        ("CN", "opt_in"),
        ("US", "none"),
        ("CH", "none"),  # not in the EEA
        ("JP", "none"),
        ("EU", "soft_opt_in"),
        ("de", "soft_opt_in"),  # the region is matched case-insensitively
        ("cn", "opt_in"),
    ],
)
def test_defaults_apply_when_the_tenant_set_nothing(region: str, expected: str) -> None:
    assert consent_policy_for(tenant(), region) == expected


@pytest.mark.parametrize("region", sorted(EEA_AND_UK))
def test_every_eea_and_uk_member_falls_under_the_eu_default(region: str) -> None:
    assert consent_policy_for(tenant(), region) == "soft_opt_in"


@pytest.mark.parametrize("region", sorted(EEA_AND_UK))
def test_every_eea_and_uk_member_follows_the_tenants_eu_entry(region: str) -> None:
    assert consent_policy_for(tenant(consent_policy={"EU": "opt_in"}), region) == "opt_in"


@pytest.mark.parametrize(
    ("policy", "region", "expected"),
    [
        # An explicit region beats the tenant's EU entry and every default.
        ({"DE": "opt_in", "EU": "none"}, "DE", "opt_in"),
        (
            {"DE": "none"},
            "DE",
            "soft_opt_in",
        ),  # weaker than the law: the law's floor (stored before PUT refused it)
        ({"CN": "soft_opt_in"}, "CN", "opt_in"),  # likewise
        ({"US": "opt_in"}, "US", "opt_in"),
        ({"GB": "opt_in"}, "GB", "opt_in"),
        # The tenant's EU entry covers members without their own entry...
        ({"DE": "opt_in", "EU": "opt_in"}, "FR", "opt_in"),
        ({"DE": "opt_in", "EU": "none"}, "FR", "soft_opt_in"),  # never under the law's floor
        ({"EU": "opt_in"}, "NO", "opt_in"),
        # ...but not non-members.
        ({"EU": "opt_in"}, "CH", "none"),
        ({"EU": "opt_in"}, "CN", "opt_in"),  # CN default
        ({"EU": "none"}, "US", "none"),
        # A region only the defaults know keeps its default even when the tenant has a "*".
        ({"*": "none"}, "CN", "opt_in"),
        ({"*": "none"}, "DE", "soft_opt_in"),
        ({"*": "opt_in"}, "FR", "soft_opt_in"),
        # The tenant's "*" covers the rest of the world.
        ({"*": "opt_in"}, "US", "opt_in"),
        ({"*": "soft_opt_in"}, "JP", "soft_opt_in"),
        ({"*": "none"}, "US", "none"),
        # Entries for other regions do not leak.
        ({"FR": "opt_in"}, "DE", "soft_opt_in"),
        ({"JP": "opt_in"}, "US", "none"),
    ],
)
def test_tenant_policy(policy: dict[str, str], region: str, expected: str) -> None:
    assert consent_policy_for(tenant(consent_policy=policy), region) == expected


@pytest.mark.parametrize(
    ("default_region", "policy", "expected"),
    [
        ("CN", {}, "opt_in"),
        ("DE", {}, "soft_opt_in"),
        ("GB", {}, "soft_opt_in"),
        ("US", {}, "none"),
        ("US", {"US": "opt_in"}, "opt_in"),
        ("FR", {"EU": "opt_in"}, "opt_in"),
        ("JP", {"*": "soft_opt_in"}, "soft_opt_in"),
        ("cn", {}, "opt_in"),  # TenantSettings upper-cases default_region
    ],
)
@pytest.mark.parametrize("region", [None, ""])
def test_no_region_uses_the_tenants_default_region(
    default_region: str, policy: dict[str, str], expected: str, region: str | None
) -> None:
    settings = tenant(default_region=default_region, consent_policy=policy)
    assert consent_policy_for(settings, region) == expected


def test_tenant_settings_default_region_is_cn() -> None:
    assert consent_policy_for(tenant(), None) == "opt_in"


def test_an_explicit_region_beats_the_default_region() -> None:
    settings = tenant(default_region="CN")
    assert consent_policy_for(settings, "US") == "none"


# The region argument is upper-cased but the tenant's policy keys are stored as given, so a
# tenant who writes {"de": "opt_in"} or {"eu": "opt_in"} silently gets the weaker EU default
# (soft_opt_in) instead. TenantSettings accepts such keys (and any other string) without complaint.
@pytest.mark.parametrize(("key", "region"), [("de", "DE"), ("eu", "FR"), ("us", "US")])
def test_lower_case_policy_keys_are_honoured_or_refused(key: str, region: str) -> None:
    try:
        settings = tenant(consent_policy={key: "opt_in"})
    except ValueError:
        return  # refusing the key at validation is an acceptable fix
    assert consent_policy_for(settings, region) == "opt_in"


# --- suppression_applies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "scope", "applies"),
    [
        # verification must reach the user: never suppressed.
        ("verification", "all", False),
        ("verification", "marketing", False),
        # transactional: only hard-bounce/complaint suppressions, which are scope "all".
        ("transactional", "all", True),
        ("transactional", "marketing", False),
        # announcement and marketing: always.
        ("announcement", "all", True),
        ("announcement", "marketing", True),
        ("marketing", "all", True),
        ("marketing", "marketing", True),
    ],
)
def test_suppression_applies_per_category_and_scope(category: str, scope: str, applies: bool) -> None:
    assert suppression_applies(category, scope) is applies


@pytest.mark.parametrize("scope", ["all", "marketing", "", "other"])
def test_unknown_category_fails_closed(scope: str) -> None:
    assert suppression_applies("newsletter", scope) is True


@pytest.mark.parametrize("scope", ["", "other", "ALL"])
def test_transactional_needs_exactly_scope_all(scope: str) -> None:
    assert suppression_applies("transactional", scope) is False


# --- _consent_ok ---------------------------------------------------------------------------------

SALE_SOFT = {"basis": "soft_opt_in", "source": "sale", "collected_with_optout": True}


@pytest.mark.parametrize(
    ("record", "opt_in", "soft_opt_in"),
    [
        # No record at all.
        (None, False, False),
        # Affirmative consent satisfies both policies.
        ({"basis": "opt_in"}, True, True),
        ({"basis": "written"}, True, True),
        ({"basis": "opt_in", "written": True}, True, True),
        # Soft opt-in only under soft_opt_in, and only from a sale with an opt-out offered.
        (SALE_SOFT, False, True),
        ({**SALE_SOFT, "source": "signup_form"}, False, False),
        ({**SALE_SOFT, "source": None}, False, False),
        ({**SALE_SOFT, "source": "Sale"}, False, False),
        ({**SALE_SOFT, "collected_with_optout": False}, False, False),
        ({"basis": "soft_opt_in", "source": None, "collected_with_optout": False}, False, False),
        # An opted-in record with no or an unknown basis proves nothing.
        ({"basis": None}, False, False),
        ({"basis": "implied"}, False, False),
        ({"basis": "none", "source": "sale", "collected_with_optout": True}, False, False),
        # Opted out: never, whatever the basis.
        ({"status": "opted_out", "basis": "opt_in"}, False, False),
        ({"status": "opted_out", "basis": "written", "written": True}, False, False),
        ({"status": "opted_out", **SALE_SOFT}, False, False),
        ({"status": "opted_out", "basis": None}, False, False),
        # Any status other than opted_in does not count.
        ({"status": "pending", "basis": "opt_in"}, False, False),
        ({"status": "OPTED_IN", "basis": "opt_in"}, False, False),
    ],
)
def test_consent_ok_per_policy(record: dict[str, Any] | None, opt_in: bool, soft_opt_in: bool) -> None:
    value = None if record is None else consent(**record)
    assert _consent_ok(value, "opt_in") is opt_in
    assert _consent_ok(value, "soft_opt_in") is soft_opt_in
    # Policy "none" needs no consent at all, even an opt-out record.
    assert _consent_ok(value, "none") is True


def test_soft_opt_in_refuses_a_record_whose_optout_flag_was_never_set() -> None:
    # A Consent built without collected_with_optout leaves it None (the column default applies on
    # insert): that must read as "no opt-out was offered". _consent_ok then returns the flag itself
    # (None, not False), so only its truth value is checked here.
    record = Consent(status="opted_in", basis="soft_opt_in", source="sale")
    assert record.collected_with_optout is None
    assert not _consent_ok(record, "soft_opt_in")


def test_the_strictest_policy_is_never_weaker_than_a_looser_one() -> None:
    records: list[Consent | None] = [
        None,
        consent(),
        consent(basis="written"),
        consent(**SALE_SOFT),
        consent(basis=None),
        consent(status="opted_out"),
    ]
    for record in records:
        if _consent_ok(record, "opt_in"):
            assert _consent_ok(record, "soft_opt_in")
        if _consent_ok(record, "soft_opt_in"):
            assert _consent_ok(record, "none")
