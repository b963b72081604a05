"""comms.kit helpers: time-ordered ids, page arithmetic, the secret box and ISO timestamps."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from comms.kit import clock, ids
from comms.kit.ids import id_has_prefix, new_id, new_ids
from comms.kit.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from comms.kit.secretbox import SecretBox

# --- ids -----------------------------------------------------------------------------------------

ID_RE = re.compile(r"^(?P<prefix>[a-z]+)_(?P<millis>[0-9a-f]{12})(?P<counter>[0-9a-f]{20})$")


def millis_of(value: str, prefix: str) -> int:
    """The Unix-milliseconds part of an id."""
    start = len(prefix) + 1
    return int(value[start : start + 12], 16)


def counter_of(value: str) -> int:
    return int(value[-20:], 16)


def freeze_ids(monkeypatch: pytest.MonkeyPatch, millis: int, start: int) -> None:
    """Make the next new_ids call see ``millis`` as the time and ``start`` as its random start."""
    monkeypatch.setattr(ids, "unix_time", lambda: (millis + 0.5) / 1000)
    monkeypatch.setattr(ids, "secrets", SimpleNamespace(randbits=lambda bits: start))


@pytest.mark.parametrize("prefix", ["log", "bat", "tpl", "x", "tenant"])
def test_new_id_shape(prefix: str) -> None:
    value = new_id(prefix)
    match = ID_RE.match(value)
    assert match is not None, value
    assert match["prefix"] == prefix
    assert len(value) == len(prefix) + 33
    assert id_has_prefix(value, prefix)


def test_new_ids_count_and_prefix() -> None:
    values = new_ids("log", 500)
    assert len(values) == 500
    assert len(set(values)) == 500
    assert all(id_has_prefix(v, "log") for v in values)


@pytest.mark.parametrize("count", [0, 1, 2, 1000])
def test_new_ids_returns_exactly_count(count: int) -> None:
    assert len(new_ids("log", count)) == count


def test_ids_are_strictly_increasing_within_a_call() -> None:
    values = new_ids("log", 1000)
    assert all(a < b for a, b in itertools.pairwise(values))
    # One call: one millisecond and a counter that counts up by one.
    assert len({millis_of(v, "log") for v in values}) == 1
    counters = [counter_of(v) for v in values]
    assert counters == list(range(counters[0], counters[0] + 1000))


def test_time_component_is_the_current_unix_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id("log")
    after = time.time_ns() // 1_000_000
    assert before <= millis_of(value, "log") <= after


@pytest.mark.parametrize(
    ("earlier_start", "later_start"),
    [
        (0, 0),
        ((1 << 79) - 1, 0),  # the earlier call drew the largest start, the later one the smallest
        (12345, 12344),
    ],
)
def test_ids_of_a_later_millisecond_sort_after_whatever_their_random_part(
    monkeypatch: pytest.MonkeyPatch, earlier_start: int, later_start: int
) -> None:
    millis = 1_700_000_000_000
    freeze_ids(monkeypatch, millis, earlier_start)
    earlier = new_ids("log", 100)
    freeze_ids(monkeypatch, millis + 1, later_start)
    later = new_ids("log", 100)
    assert millis_of(earlier[0], "log") == millis
    assert millis_of(later[0], "log") == millis + 1
    assert max(earlier) < min(later)
    assert sorted(later + earlier) == earlier + later


def test_ids_from_real_calls_sort_by_their_time_component() -> None:
    values = [new_id("log") for _ in range(200)]
    by_id = sorted(values)
    # Sorting by id never puts a later millisecond before an earlier one.
    stamps = [millis_of(v, "log") for v in by_id]
    assert stamps == sorted(stamps)


def test_the_counter_never_spills_into_the_time_component(monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_ids(monkeypatch, 1_700_000_000_000, (1 << 79) - 1)
    values = new_ids("log", 1000)
    assert {millis_of(v, "log") for v in values} == {1_700_000_000_000}
    assert all(ID_RE.match(v) for v in values)


def test_time_component_is_zero_padded(monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_ids(monkeypatch, 1, 1)
    assert new_id("log") == "log_" + "0" * 11 + "1" + "0" * 19 + "1"


@pytest.mark.parametrize(
    ("value", "prefix", "expected"),
    [
        ("log_" + "0" * 32, "log", True),
        ("log_" + "0" * 31, "log", False),  # too short
        ("log_" + "0" * 33, "log", False),  # too long
        ("bat_" + "0" * 32, "log", False),  # another type
        ("log" + "0" * 33, "log", False),  # no separator
        ("logs_" + "0" * 31, "log", False),
        ("", "log", False),
    ],
)
def test_id_has_prefix(value: str, prefix: str, expected: bool) -> None:
    assert id_has_prefix(value, prefix) is expected


def test_new_id_output_satisfies_id_has_prefix_only_for_its_own_prefix() -> None:
    value = new_id("bat")
    assert id_has_prefix(value, "bat")
    assert not id_has_prefix(value, "log")
    assert not id_has_prefix(value, "ba")


# --- pagination ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "page_size", "total", "total_pages", "has_next", "has_prev"),
    [
        # Nothing at all.
        (1, 20, 0, 0, False, False),
        (2, 20, 0, 0, False, True),
        # Fewer than one page.
        (1, 20, 1, 1, False, False),
        (1, 20, 19, 1, False, False),
        # Exact multiples.
        (1, 20, 20, 1, False, False),
        (1, 20, 40, 2, True, False),
        (2, 20, 40, 2, False, True),
        # One over a multiple: a last, partial page.
        (1, 20, 41, 3, True, False),
        (2, 20, 41, 3, True, True),
        (3, 20, 41, 3, False, True),
        # Past the last page.
        (5, 20, 41, 3, False, True),
        # Page size 1.
        (1, 1, 3, 3, True, False),
        (3, 1, 3, 3, False, True),
        # Large sizes.
        (1, 200, 1000, 5, True, False),
        (5, 200, 1000, 5, False, True),
        (1, 200, 1001, 6, True, False),
    ],
)
def test_page_info(
    page: int, page_size: int, total: int, total_pages: int, has_next: bool, has_prev: bool
) -> None:
    assert Page(page, page_size).info(total) == {
        "page": page,
        "page_size": page_size,
        "total": total,
        "total_pages": total_pages,
        "has_next": has_next,
        "has_prev": has_prev,
    }


@pytest.mark.parametrize(
    ("page", "page_size", "offset"),
    [(1, 20, 0), (2, 20, 20), (3, 20, 40), (1, 1, 0), (7, 1, 6), (4, 200, 600)],
)
def test_page_offset(page: int, page_size: int, offset: int) -> None:
    assert Page(page, page_size).offset == offset


def test_pages_walk_every_item_exactly_once() -> None:
    total, size = 47, 10
    seen: list[int] = []
    page = Page(1, size)
    while True:
        seen.extend(range(total)[page.offset : page.offset + size])
        if not page.info(total)["has_next"]:
            break
        page = Page(page.page + 1, size)
    assert seen == list(range(total))
    assert page.page == page.info(total)["total_pages"] == 5


def test_page_constants_and_immutability() -> None:
    assert DEFAULT_PAGE_SIZE == 20
    assert MAX_PAGE_SIZE == 200
    page = Page(1, 20)
    with pytest.raises(AttributeError):
        page.page = 2  # type: ignore[misc]


# --- secretbox -----------------------------------------------------------------------------------


@pytest.fixture
def box() -> SecretBox:
    return SecretBox("test-secret-key")


@pytest.mark.parametrize("plaintext", ["123456", "", "p@ss w0rd!", "验证码 ✓ 😀", "x" * 10_000])
def test_round_trip(box: SecretBox, plaintext: str) -> None:
    encrypted = box.encrypt(plaintext)
    assert encrypted.startswith("enc:v1:")
    assert box.is_encrypted(encrypted)
    assert plaintext not in encrypted or plaintext == ""
    assert box.decrypt(encrypted) == plaintext


def test_a_new_box_with_the_same_key_decrypts(box: SecretBox) -> None:
    assert SecretBox("test-secret-key").decrypt(box.encrypt("123456")) == "123456"


def test_each_encryption_is_different(box: SecretBox) -> None:
    first, second = box.encrypt("123456"), box.encrypt("123456")
    assert first != second
    assert box.decrypt(first) == box.decrypt(second) == "123456"


@pytest.mark.parametrize("other_key", ["another-key", "test-secret-key ", "TEST-SECRET-KEY", ""])
def test_a_different_key_fails_with_value_error(box: SecretBox, other_key: str) -> None:
    encrypted = box.encrypt("123456")
    with pytest.raises(ValueError, match=r"could not be decrypted \(was COMMS_SECRET_KEY changed\?\)"):
        SecretBox(other_key).decrypt(encrypted)


def test_tampered_ciphertext_fails_with_value_error(box: SecretBox) -> None:
    encrypted = box.encrypt("123456")
    body = encrypted[len("enc:v1:") :]
    middle = len(body) // 2
    flipped = "A" if body[middle] != "A" else "B"
    tampered = "enc:v1:" + body[:middle] + flipped + body[middle + 1 :]
    with pytest.raises(ValueError):
        box.decrypt(tampered)


@pytest.mark.parametrize("garbage", ["enc:v1:", "enc:v1:not-a-token", "enc:v1:gAAAAA"])
def test_prefixed_garbage_fails_with_value_error(box: SecretBox, garbage: str) -> None:
    with pytest.raises(ValueError):
        box.decrypt(garbage)


@pytest.mark.parametrize("value", ["123456", "", "plain text", "enc:v2:something", "ENC:V1:x", " enc:v1:x"])
def test_values_without_the_prefix_pass_through(box: SecretBox, value: str) -> None:
    assert not SecretBox.is_encrypted(value)
    assert box.decrypt(value) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [("enc:v1:anything", True), ("enc:v1:", True), ("enc:v1", False), ("123456", False), ("", False)],
)
def test_is_encrypted(value: str, expected: bool) -> None:
    assert SecretBox.is_encrypted(value) is expected


# --- clock ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        # Naive values are taken as UTC.
        (datetime(2024, 5, 1, 12, 30, 45), "2024-05-01T12:30:45Z"),
        (datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC), "2024-05-01T12:30:45Z"),
        # Offsets are converted to UTC, across a day boundary too.
        (datetime(2024, 5, 1, 8, 0, 0, tzinfo=timezone(timedelta(hours=8))), "2024-05-01T00:00:00Z"),
        (datetime(2024, 5, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=8))), "2024-04-30T18:00:00Z"),
        (datetime(2024, 12, 31, 20, 0, 0, tzinfo=timezone(timedelta(hours=-5))), "2025-01-01T01:00:00Z"),
        (
            datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2024-05-01T06:30:00Z",
        ),
        # Second precision: microseconds are dropped, not rounded.
        (datetime(2024, 5, 1, 12, 30, 45, 999_999, tzinfo=UTC), "2024-05-01T12:30:45Z"),
        # Zero-padded fields.
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05Z"),
    ],
)
def test_isoformat(value: datetime | None, expected: str | None) -> None:
    assert clock.isoformat(value) == expected


def test_isoformat_shape() -> None:
    text = clock.isoformat(datetime.now(UTC))
    assert text is not None
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", text)


def test_isoformat_round_trips_through_fromisoformat() -> None:
    value = datetime(2024, 5, 1, 12, 30, 45, tzinfo=timezone(timedelta(hours=-3)))
    text = clock.isoformat(value)
    assert text is not None
    assert datetime.fromisoformat(text) == value


@pytest.fixture
def restore_clock() -> Iterator[None]:
    followed = clock._anchor
    yield
    clock.set_clock(None)
    clock._anchor = followed


def test_a_followed_clock_reads_the_reference_plus_monotonic_time_since(restore_clock: None) -> None:
    clock.unfollow()
    assert not clock.following() and clock.offset() == 0.0
    behind = datetime.now(UTC) - timedelta(minutes=10)  # a database server 10 minutes behind us
    offset = clock.follow(behind, time.monotonic())
    assert clock.following()
    assert 599.9 < offset < 600.1 and 599.9 < clock.offset() < 600.1
    for now in (clock.utcnow(), clock.service_now()):
        assert abs((now - behind).total_seconds()) < 0.1
        assert now.utcoffset() == timedelta(0)
    assert abs(clock.unix_time() - behind.timestamp()) < 0.1
    # ids carry the followed clock too (created_at and the ids' time must agree)
    made = ids.id_time(ids.new_id("log"), "log")
    assert made is not None and abs((made - behind).total_seconds()) < 0.1
    # a test's fixed clock still answers utcnow, but not the time vendors check signatures by
    fixed = datetime(2030, 1, 1, tzinfo=UTC)
    clock.set_clock(lambda: fixed)
    assert clock.utcnow() == fixed
    assert abs((clock.service_now() - behind).total_seconds()) < 0.1
    clock.unfollow()
    assert abs(clock.unix_time() - time.time()) < 0.1


def test_following_a_naive_time_is_refused(restore_clock: None) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.follow(datetime(2030, 1, 1), time.monotonic())


def test_set_clock_moves_utcnow_and_none_restores_it(restore_clock: None) -> None:
    fixed = datetime(2030, 1, 1, tzinfo=UTC)
    clock.set_clock(lambda: fixed)
    assert clock.utcnow() == fixed
    clock.set_clock(None)
    now = clock.utcnow()
    assert now != fixed
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def _read_or_make_key(directory: str) -> str:
    from comms.config import _data_dir_key

    return _data_dir_key(Path(directory) / "secret.key")


def test_processes_started_together_share_one_generated_key(tmp_path: Path) -> None:
    """Without COMMS_SECRET_KEY each process reads the data dir's key or writes one: started
    together, all of them end with the same complete key, in one private file."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(6) as pool:
        keys = set(pool.map(_read_or_make_key, [str(tmp_path)] * 12))
    assert len(keys) == 1 and len(keys.pop()) >= 64
    assert os.listdir(tmp_path) == ["secret.key"]
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600


def test_json_log_lines_carry_the_request_id() -> None:
    """COMMS_LOG_JSON: one JSON object per line, with the request id of the request it ran in."""
    import json
    import logging

    from comms.kit.logging import JsonFormatter, RequestIdFilter
    from comms.kit.requestlog import request_id_var

    record = logging.LogRecord("comms.dispatch", logging.WARNING, __file__, 1, "claim failed", None, None)
    record.batch_id = "bat_1"
    token = request_id_var.set("rid-42")
    try:
        assert RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    event = json.loads(line)
    assert (
        event["event"] == "claim failed"
        and event["level"] == "warning"
        and event["logger"] == "comms.dispatch"
    )
    assert event["request_id"] == "rid-42" and event["batch_id"] == "bat_1"


async def test_body_limit_streams_up_to_the_limit_and_answers_413_past_it() -> None:
    """A body sent in chunks without a Content-Length is counted as it comes, against its path's
    limit: past it the answer is 413 in the envelope and the app never runs; within it the app
    reads the body as sent, then the client's disconnect; a client gone mid-body is a disconnect
    to the app, not half a body. Only the bulk send, which streams its own, is left alone."""
    from comms.kit.bodylimit import BodyLimitMiddleware

    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run(
        chunks: list[bytes], path: str = "/communication/templates", gone: bool = False
    ) -> list[dict[str, Any]]:
        incoming: list[dict[str, Any]] = [
            {"type": "http.request", "body": c, "more_body": gone or i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        incoming.append({"type": "http.disconnect"})
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": []}
        await BodyLimitMiddleware(app, limit=10, limits={"/webhooks/": 4})(scope, receive, send)
        return sent

    over = await run([b"123456", b"789012"])
    assert over[0]["status"] == 413 and b'"code":413' in over[1]["body"] and seen == []
    within = await run([b"12345", b"67890"])
    assert within[0]["status"] == 204
    assert seen == [
        {"type": "http.request", "body": b"1234567890", "more_body": False},
        {"type": "http.disconnect"},
    ]
    seen.clear()
    callback = await run([b"12345"], path="/webhooks/aliyun/acc_x/status")  # its own, smaller limit
    assert callback[0]["status"] == 413 and seen == []
    await run([b"12345"], gone=True)
    assert seen[0] == {"type": "http.disconnect"}
    seen.clear()
    own = await run([b"123456", b"789012"], path="/communication/bulk")  # streams its own, with its own limit
    assert own[0]["status"] == 204 and seen[0]["body"] == b"123456"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-04-15T10:00:00Z", datetime(2026, 4, 15, 10, tzinfo=UTC)),
        ("2026-04-15t10:00:00z", datetime(2026, 4, 15, 10, tzinfo=UTC)),
        ("2026-04-15 10:00:00+08:00", datetime(2026, 4, 15, 2, tzinfo=UTC)),
        ("2026-04-15T10:00:00.123456789Z", datetime(2026, 4, 15, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-04-15T10:00:00.5-01:30", datetime(2026, 4, 15, 11, 30, 0, 500000, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),  # a leap second: the next instant
    ],
)
def test_rfc3339_date_times_are_read_in_utc(value: str, expected: datetime) -> None:
    assert clock.parse_rfc3339(value) == expected


@pytest.mark.parametrize(
    ("value", "missing_offset"),
    [
        ("2026-04-15", False),
        ("20260415T100000Z", False),
        ("2026-02-30T10:00:00Z", False),
        ("9999-12-31T23:59:59-01:00", False),  # past year 9999 in UTC
        ("\uff12\uff10\uff12\uff16-04-15T10:00:00Z", False),  # fullwidth digits
        ("2026-04-15T10:00:00", True),
        ("2026-04-15T10:00:60Z", False),  # a leap second is 23:59:60 only
    ],
)
def test_other_date_times_are_refused(value: str, missing_offset: bool) -> None:
    with pytest.raises(clock.NotRfc3339) as refused:
        clock.parse_rfc3339(value)
    assert refused.value.missing_offset is missing_offset
