"""Quiet hours: when a marketing (or announcement) SMS may reach a phone, in the phone's local time.

* US: 08:00-21:00 recipient-local (47 CFR 64.1200(c)(1); texts count as calls);
* China: promotional SMS only 08:00-20:00 Asia/Shanghai (carrier rule, Aliyun);
* elsewhere 08:00-20:00 by default; a tenant sets its own per country (for the US and China
  only within the legal window: a wider setting is refused by the API and held to it here).

The number's time zones come from phonenumbers' prefix data (US numbers: by area code). Where a
number may be in several zones, or its zone is unknown, the message waits until it is inside the
window in EVERY zone it may be in: the strictest window across them (COMPLIANCE.md S2).

* an ambiguous number (a toll-free +1 800 number is listed in every NANP zone from Guam to
  Samoa) is held to the zones of its own country among those (the 11 US ones);
* a number with no known zone is held to every zone of its country (the tz database's
  ``zone.tab``; without it, every zone of its calling code); one with no country at all (+881
  satellite phones, +882/+883 international networks) is held to every zone on earth, which
  share no moment of any window: it cannot get quiet-hours SMS;
* when those zones share no moment inside the window at all (a tenant's narrow window in a wide
  country), acceptance rejects the message and a queued one waits a day at a time, re-checked:
  it is never sent outside the window somewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time, timedelta
from functools import cache, lru_cache
from pathlib import Path
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones
from phonenumbers.tzdata import TIMEZONE_DATA

from comms.compliance.settings import TenantSettings
from comms.kit.clock import isoformat

# The legal windows (a tenant may narrow them, never widen): the TCPA's 8 a.m. to 9 p.m. (47 CFR
# 64.1200(c)(1)) holds in the US and its territories, which share +1 but are regions of their
# own (Puerto Rico, Guam, the US Virgin Islands, American Samoa, the Northern Mariana Islands).
_TCPA = "08:00-21:00"
DEFAULT_WINDOWS = {
    **dict.fromkeys(("US", "PR", "GU", "VI", "AS", "MP"), _TCPA),
    "CN": "08:00-20:00",
}
DEFAULT_WINDOW = "08:00-20:00"
QUIET_CATEGORIES = frozenset({"marketing", "announcement"})


def applies(channel: str, category: str) -> bool:
    return channel == "sms" and category in QUIET_CATEGORIES


def window_for(settings: TenantSettings, region: str | None) -> tuple[time, time]:
    """The window for a number of ``region``: the tenant's, held inside the legal one where the
    law or the carriers set it (US, CN: DEFAULT_WINDOWS), which a tenant may narrow, never widen."""
    legal = DEFAULT_WINDOWS.get(region or "")
    start, end = _window(settings.quiet_hours.get(region or "") or legal or DEFAULT_WINDOW)
    if legal is None:
        return start, end
    legal_start, legal_end = _window(legal)
    start, end = max(start, legal_start), min(end, legal_end)
    # A window across midnight, or one with no time left inside the legal one, cannot narrow it.
    return (start, end) if start < end else (legal_start, legal_end)


def widens_legal_window(region: str, window: str) -> str | None:
    """Why a tenant's ``quiet_hours[region]`` would reach outside the legal window, or None."""
    legal = DEFAULT_WINDOWS.get(region.upper())
    if legal is None:
        return None
    try:
        (start, end), (legal_start, legal_end) = _window(window), _window(legal)
    except (ValueError, OverflowError):  # OverflowError: hours past C's int (time(10**20, 0))
        return None  # not HH:MM-HH:MM: the settings' own validation says so
    if start < end and legal_start <= start and end <= legal_end:
        return None
    return f"{region.upper()}: the legal window is {legal}; a tenant may narrow it, not widen it"


def _window(text: str) -> tuple[time, time]:
    start, end = text.split("-")
    return _parse(start), _parse(end)


def _parse(hhmm: str) -> time:
    hours, minutes = (int(x) for x in hhmm.split(":"))
    return time(23, 59, 59) if hours == 24 else time(hours, minutes)


_UNKNOWN_ZONE = "Etc/Unknown"


@cache
def _zone_tab() -> dict[str, frozenset[str]]:
    """ISO region -> its zones, from the tz database's zone.tab ({} when there is none)."""
    paths = [Path(p) / "zone.tab" for p in TZPATH]
    try:
        from importlib.resources import files

        paths.append(Path(str(files("tzdata").joinpath("zoneinfo", "zone.tab"))))
    except ModuleNotFoundError:  # the tzdata package is optional
        pass
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        table: dict[str, set[str]] = {}
        for line in lines:
            if line.startswith("#") or not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) >= 3:
                table.setdefault(fields[0].upper(), set()).add(fields[2])
        return {region: frozenset(zones) for region, zones in table.items()}
    return {}


def country_zones(region: str | None, calling_code: int) -> frozenset[str]:
    """Every zone of a country; without zone.tab, every zone of its calling code (a superset)."""
    if region and region in _zone_tab():
        return _zone_tab()[region]
    return frozenset(n for n in TIMEZONE_DATA.get(str(calling_code), ()) if n != _UNKNOWN_ZONE)


@lru_cache(maxsize=65536)
def zones_for(e164: str) -> tuple[ZoneInfo, ...]:
    """Time zones a number may be in (cached per number): its own when phonenumbers knows them,
    narrowed to its country's when there are several, all its country's when there are none."""
    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return ()
    known = [n for n in phone_timezones.time_zones_for_number(number) if n != _UNKNOWN_ZONE]
    if len(known) != 1:
        code = number.country_code or 0
        region = phonenumbers.region_code_for_number(number) or phonenumbers.region_code_for_country_code(
            code
        )
        country = country_zones(region, code)
        inside = [n for n in known if n in country]
        # Zones of other countries that share the calling code are dropped; names the tz database
        # spells differently (aliases) are kept as they are.
        known = inside or known or sorted(country)
    zones = []
    for name in known:
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return tuple(zones)


def _inside(moment: datetime, zone: ZoneInfo, start: time, end: time) -> bool:
    local = moment.astimezone(zone).time()
    return start <= local < end if start < end else (local >= start or local < end)


class NoCommonWindow(Exception):
    """The zones share no moment inside the window (within three days)."""


def next_allowed(moment: datetime, zones: Sequence[ZoneInfo], start: time, end: time) -> datetime | None:
    """None when ``moment`` is inside the window in every zone; else the first moment that is.

    Raises :class:`NoCommonWindow` when no such moment comes within three days, and when no zone
    is known at all (a non-geographic number such as +881 satellite phones): the strictest
    window across every zone on earth has no moment in it."""
    if not zones:
        raise NoCommonWindow
    if all(_inside(moment, z, start, end) for z in zones):
        return None
    candidates = []
    for zone in zones:
        local = moment.astimezone(zone)
        for days in range(3):
            day = (local + timedelta(days=days)).date()
            opening = datetime.combine(day, start, zone)
            if opening > moment:
                candidates.append(opening)
    for candidate in sorted(candidates):
        if all(_inside(candidate, z, start, end) for z in zones):
            return candidate
    raise NoCommonWindow


def deferral(moment: datetime, e164: str, region: str | None, settings: TenantSettings) -> datetime | None:
    """When a quiet-hours SMS to ``e164`` sent at ``moment`` must wait, the time it may go.

    With no common window at all, a day later (to be checked again then): never now."""
    start, end = window_for(settings, region)
    try:
        return next_allowed(moment, zones_for(e164), start, end)
    except NoCommonWindow:
        return moment + timedelta(days=1)


def no_window_error(e164: str, region: str | None, settings: TenantSettings) -> str:
    """Why a number cannot be sent quiet-hours SMS at all (see :class:`NoCommonWindow`)."""
    start, end = window_for(settings, region)
    zones = zones_for(e164)
    if not zones:
        return (
            "quiet hours: this number's time zone is unknown (a non-geographic number), so no time "
            "is known to be inside the window; send it as a non-promotional category"
        )
    return (
        f"quiet hours: no time is inside {start:%H:%M}-{end:%H:%M} in all {len(zones)} time zones "
        f"this number may be in ({region or 'unknown region'}); widen quiet_hours or send it as a "
        "non-promotional category"
    )


def acceptance_verdict(
    moment: datetime, e164: str, region: str | None, settings: TenantSettings
) -> tuple[str, str, datetime | None] | None:
    """At acceptance: None (may go now), ``("deferred", error, until)`` or ``("rejected", error,
    None)`` when no moment is inside the window in every zone of the number."""
    start, end = window_for(settings, region)
    try:
        until = next_allowed(moment, zones_for(e164), start, end)
    except NoCommonWindow:
        return "rejected", no_window_error(e164, region, settings), None
    if until is None:
        return None
    return "deferred", f"quiet hours: deferred until {isoformat(until)}", until
