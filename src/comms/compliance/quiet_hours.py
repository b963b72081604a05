"""Quiet hours: when a marketing (or announcement) SMS may reach a phone, in the phone's local time.

* US: 08:00-21:00 recipient-local (47 CFR 64.1200(c)(1); texts count as calls);
* China: promotional SMS only 08:00-20:00 Asia/Shanghai (carrier rule, Aliyun);
* elsewhere 08:00-20:00 by default; a tenant sets its own per country.

The number's time zones come from phonenumbers' prefix data; where a number may be in several
zones (unknown area, a country spanning zones), the message waits until it is inside the window
in EVERY one of them: the strictest reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

from comms.compliance.settings import TenantSettings

DEFAULT_WINDOWS = {"US": "08:00-21:00", "CN": "08:00-20:00"}
DEFAULT_WINDOW = "08:00-20:00"
QUIET_CATEGORIES = frozenset({"marketing", "announcement"})


def applies(channel: str, category: str) -> bool:
    return channel == "sms" and category in QUIET_CATEGORIES


def window_for(settings: TenantSettings, region: str | None) -> tuple[time, time]:
    text = settings.quiet_hours.get(region or "") or DEFAULT_WINDOWS.get(region or "", DEFAULT_WINDOW)
    start, end = text.split("-")
    return _parse(start), _parse(end)


def _parse(hhmm: str) -> time:
    hours, minutes = (int(x) for x in hhmm.split(":"))
    return time(23, 59, 59) if hours == 24 else time(hours, minutes)


@lru_cache(maxsize=65536)
def zones_for(e164: str) -> tuple[ZoneInfo, ...]:
    """Time zones a number may be in (cached per number)."""
    try:
        names = phone_timezones.time_zones_for_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return ()
    zones = []
    for name in names:
        try:
            zones.append(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return tuple(zones)


def _inside(moment: datetime, zone: ZoneInfo, start: time, end: time) -> bool:
    local = moment.astimezone(zone).time()
    return start <= local < end if start < end else (local >= start or local < end)


def next_allowed(moment: datetime, zones: Sequence[ZoneInfo], start: time, end: time) -> datetime | None:
    """None when ``moment`` is inside the window in every zone; else the first moment that is."""
    if not zones or all(_inside(moment, z, start, end) for z in zones):
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
    return None  # no common window within three days: leave the decision to the next check


def deferral(moment: datetime, e164: str, region: str | None, settings: TenantSettings) -> datetime | None:
    """When a quiet-hours SMS to ``e164`` sent at ``moment`` must wait, the time it may go."""
    start, end = window_for(settings, region)
    return next_allowed(moment, zones_for(e164), start, end)
