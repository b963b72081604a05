"""Provider accounts made of the contract's config fields alone (CONTRACT.md, "Provider account
config fields"), for the vendors whose callbacks a secret token in the URL authenticates (Aliyun,
Tencent, Kannel: they sign nothing they push).

The contract names no token among their fields, yet says an account's ``callback_urls`` are "the
exact URLs ... with any secret token, to paste into the vendor's console". So comms generates the
token when the account is created without one, keeps it (encrypted, write-only) across updates
that leave it out, and shows it only inside ``callback_urls``; a callback with it is accepted, one
without it or with another is 401.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from comms.models import ProviderAccount, ReceiptEvent
from tests.conftest import Service, TenantKeys, make_tenant, statuses, wait_until
from tests.providers.test_kannel import PASSWORD, USERNAME, KannelVendor
from tests.providers.test_tencent import receipt_body

PUBLIC = "https://comms.test"


def _aliyun_receipt() -> bytes:
    return json.dumps(
        [
            {
                "phone_number": "13800138000",
                "send_time": "2026-11-26 16:00:00",
                "report_time": "2026-11-26 16:00:05",
                "success": True,
                "err_code": "DELIVERED",
                "err_msg": "用户接收成功",
                "sms_size": "1",
                "biz_id": "900619746936498440^0",
                "out_id": "log_00000000000000000000000000000001",
            }
        ]
    ).encode()


def _aliyun_inbound() -> bytes:
    return json.dumps(
        [
            {
                "phone_number": "13800138000",
                "send_time": "2026-11-26 16:01:00",
                "content": "hello",
                "sign_name": "Acme",
                "dest_code": "1234",
                "sequence_id": 1234567,
            }
        ]
    ).encode()


def _tencent_inbound() -> bytes:
    reply = {"mobile": "13800138000", "nationcode": "86", "text": "hello", "sign": "Acme", "time": 1}
    return json.dumps(reply).encode()


@dataclass(frozen=True)
class Vendor:
    """A provider: the contract's config fields, a field a PUT may change, and its callbacks."""

    provider: str
    config: dict[str, Any]  # exactly the contract's fields
    change: dict[str, Any]  # another field, for an update
    receipt: Callable[[], bytes]
    inbound: Callable[[], bytes]
    # Kannel calls its dlr-url and get-url (GET, the parameters in the query): the callback body
    # is then the query, appended to the pasted URL. The others POST a JSON body to it.
    by_get: bool = False


VENDORS = {
    "aliyun": Vendor(
        "aliyun",
        {
            "access_key_id": "LTAI5tTestKeyId0001",
            "access_key_secret": "test-access-key-secret-0123456789",
            "sign_name": "Acme",
            "endpoint": "https://dysmsapi.aliyuncs.com/",
        },
        {"sign_name": "Acme Two"},
        _aliyun_receipt,
        _aliyun_inbound,
    ),
    "tencent": Vendor(
        "tencent",
        {
            "secret_id": "AKIDcommstest0123456789abcdefEXAMPLE",
            "secret_key": "commstestsecretkey0123456789abcd",
            "sdk_app_id": "1400006666",
            "sign_name": "Acme",
            "region": "ap-guangzhou",
            "endpoint": "https://sms.tencentcloudapi.com",
        },
        {"sign_name": "Acme Two"},
        lambda: receipt_body("2019:538884*F1", "+8613800138000", delivered=True),
        _tencent_inbound,
    ),
    "kannel": Vendor(
        "kannel",
        {
            "sendsms_url": "http://127.0.0.1:13013/cgi-bin/sendsms",
            "username": USERNAME,
            "password": PASSWORD,
            "from": "10690000",
            "dlr_mask": 3,
        },
        {"dlr_mask": 31},
        lambda: (
            b"id=log_00000000000000000000000000000001&type=1&smsc=smsc1&ts=1795717008"
            b"&answer=&to=%2B8613800138000"
        ),
        lambda: b"from=%2B8613800138000&to=10086&text=hello&id=5e69b209-1659-4d52-a301-24b848838fb8&ts=1",
        by_get=True,
    ),
}

PROVIDERS = pytest.mark.parametrize("vendor", list(VENDORS.values()), ids=list(VENDORS))


async def create(service: Service, tenant: TenantKeys, vendor: Vendor, **config: Any) -> httpx.Response:
    body = {
        "channel": "sms",
        "provider": vendor.provider,
        "name": vendor.provider,
        "priority": 1,
        "config": {**vendor.config, **config},
    }
    return await service.client.post("/communication/providers", json=body, headers=tenant.headers())


def token_of(account: dict[str, Any]) -> str:
    """The token both callback URLs carry (and nothing else in their query)."""
    queries = [parse_qs(urlsplit(url).query) for url in account["callback_urls"].values()]
    assert all(set(q) == {"token"} and len(q["token"]) == 1 for q in queries), account["callback_urls"]
    tokens = {q["token"][0] for q in queries}
    assert len(tokens) == 1
    return tokens.pop()


def with_token(url: str, token: str | None) -> str:
    """``url`` (a callback URL as shown) with its token replaced, or removed when None."""
    path = url.removeprefix(PUBLIC).split("?")[0]
    return path if token is None else f"{path}?token={token}"


async def call(service: Service, vendor: Vendor, url: str, body: bytes) -> httpx.Response:
    """The vendor's callback to ``url`` (the path and query the vendor was given)."""
    if vendor.by_get:
        separator = "&" if "?" in url else "?"
        return await service.client.get(f"{url}{separator}{body.decode()}")
    return await service.client.post(url, content=body, headers={"Content-Type": "application/json"})


async def stored_events(service: Service, account_id: str) -> int:
    async with service.db.read() as session:
        count = await session.scalar(
            select(func.count()).select_from(ReceiptEvent).where(ReceiptEvent.account_id == account_id)
        )
    return int(count or 0)


async def stored_config(service: Service, account_id: str) -> dict[str, Any]:
    async with service.db.read() as session:
        row = await session.get(ProviderAccount, account_id)
    assert row is not None
    return dict(row.config)


@PROVIDERS
async def test_the_contracts_fields_alone_make_an_account_whose_callbacks_work(
    service: Service, tenant: TenantKeys, vendor: Vendor
) -> None:
    created = await create(service, tenant, vendor)
    assert created.status_code == 201, created.text
    account = created.json()["data"]
    token = token_of(account)
    assert len(token) >= 40  # secrets.token_urlsafe(32): 256 random bits
    base = f"{PUBLIC}/webhooks/{vendor.provider}/{account['id']}"
    assert account["callback_urls"] == {
        "status": f"{base}/status?token={token}",
        "inbound": f"{base}/inbound?token={token}",
    }
    assert "callback_token" in account["secret_fields_set"]
    # Stored as a secret: encrypted at rest, like the vendor credentials.
    stored = await stored_config(service, account["id"])
    assert stored["callback_token"].startswith("enc:v1:") and token not in json.dumps(stored)

    status, inbound = account["callback_urls"]["status"], account["callback_urls"]["inbound"]
    receipt, reply = vendor.receipt(), vendor.inbound()
    for url in (status, inbound):
        for refused in (
            with_token(url, None),
            with_token(url, token[:-1] + ("A" if token[-1] != "A" else "B")),
            with_token(url, "x" + token),
            with_token(url, ""),
        ):
            answer = await call(service, vendor, refused, receipt if url == status else reply)
            assert answer.status_code == 401, (refused, answer.text)
    assert await stored_events(service, account["id"]) == 0  # a refused callback changes nothing

    accepted = await call(service, vendor, with_token(status, token), receipt)
    assert accepted.status_code == 200, accepted.text
    assert await stored_events(service, account["id"]) == 1
    replied = await call(service, vendor, with_token(inbound, token), reply)
    assert replied.status_code == 200, replied.text
    assert await stored_events(service, account["id"]) == 2


@PROVIDERS
async def test_an_update_keeps_the_token_and_a_tenant_may_set_its_own(
    service: Service, tenant: TenantKeys, vendor: Vendor
) -> None:
    h = tenant.headers()
    account = (await create(service, tenant, vendor)).json()["data"]
    token, urls = token_of(account), account["callback_urls"]
    box = service.app.state.comms.secrets
    stored_before = (await stored_config(service, account["id"]))["callback_token"]
    assert box.decrypt(stored_before) == token
    path = f"/communication/providers/{account['id']}"

    for change in (vendor.change, {}):  # another field, then a config of nothing new
        updated = await service.client.put(path, json={"config": change}, headers=h)
        assert updated.status_code == 200, updated.text
        assert updated.json()["data"]["callback_urls"] == urls
        for field, value in change.items():
            assert updated.json()["data"]["config"][field] == value
    renamed = await service.client.put(path, json={"name": "renamed"}, headers=h)
    assert renamed.json()["data"]["callback_urls"] == urls
    fetched = await service.client.get(path, headers=h)
    assert fetched.json()["data"]["callback_urls"] == urls
    # The secret stored at creation (encrypted afresh by each update), not one generated again.
    stored_after = (await stored_config(service, account["id"]))["callback_token"]
    assert stored_after.startswith("enc:v1:") and box.decrypt(stored_after) == token
    answer = await call(service, vendor, with_token(urls["status"], token), vendor.receipt())
    assert answer.status_code == 200, answer.text

    own = "tenants-own-token-0123456789"
    mine = await service.client.put(path, json={"config": {"callback_token": own}}, headers=h)
    assert mine.status_code == 200, mine.text
    assert token_of(mine.json()["data"]) == own
    refused = await call(service, vendor, with_token(urls["inbound"], token), vendor.inbound())
    assert refused.status_code == 401  # the generated token no longer holds
    again = await call(service, vendor, with_token(urls["inbound"], own), vendor.inbound())
    assert again.status_code == 200, again.text

    chosen = await create(service, tenant, vendor, callback_token=own)
    assert chosen.status_code == 201, chosen.text
    assert token_of(chosen.json()["data"]) == own


@PROVIDERS
async def test_the_token_is_shown_only_inside_callback_urls(
    service: Service, tenant: TenantKeys, vendor: Vendor
) -> None:
    h = tenant.headers()
    created = (await create(service, tenant, vendor)).json()["data"]
    token = token_of(created)
    one = (await service.client.get(f"/communication/providers/{created['id']}", headers=h)).json()
    listed = (await service.client.get("/communication/providers", headers=h)).json()
    [item] = [a for a in listed["items"] if a["id"] == created["id"]]
    for shown in (created, one["data"], item):
        assert shown["callback_urls"] == created["callback_urls"]
        assert "callback_token" not in shown["config"]
        assert "callback_token" in shown["secret_fields_set"]  # set, as the other secrets are shown
        rest = {k: v for k, v in shown.items() if k != "callback_urls"}
        assert token not in json.dumps(rest)
    for answer in (one, listed):
        assert json.dumps(answer).count(token) == 2  # the status and the inbound URL, nothing else


async def test_two_accounts_get_different_tokens(service: Service, tenant: TenantKeys) -> None:
    first = (await create(service, tenant, VENDORS["tencent"])).json()["data"]
    second = (await create(service, tenant, VENDORS["tencent"])).json()["data"]
    assert token_of(first) != token_of(second)


async def test_an_aliyun_account_stored_without_a_token_gets_one_on_its_next_update(
    service: Service, tenant: TenantKeys
) -> None:
    """An Aliyun account created before comms generated tokens refused every callback; it still
    loads, and any update of its config gives it a token (an update never replaces one)."""
    h = tenant.headers()
    vendor = VENDORS["aliyun"]
    account = (await create(service, tenant, vendor)).json()["data"]
    async with service.db.begin() as session:
        row = await session.get(ProviderAccount, account["id"])
        assert row is not None
        row.config = {k: v for k, v in row.config.items() if k != "callback_token"}
    path = f"/communication/providers/{account['id']}"
    legacy = (await service.client.get(path, headers=h)).json()["data"]
    assert (
        "?" not in legacy["callback_urls"]["status"] and "callback_token" not in legacy["secret_fields_set"]
    )
    refused = await call(service, vendor, legacy["callback_urls"]["status"], vendor.receipt())
    assert refused.status_code == 401
    updated = (await service.client.put(path, json={"config": {}}, headers=h)).json()["data"]
    token = token_of(updated)
    answer = await call(
        service, vendor, with_token(updated["callback_urls"]["status"], token), vendor.receipt()
    )
    assert answer.status_code == 200, answer.text


# ---- Kannel's sender: the contract's ``from`` ----------------------------------------------------


async def test_kannel_takes_from_and_shows_it_under_that_name(service: Service, tenant: TenantKeys) -> None:
    h = tenant.headers()
    vendor = VENDORS["kannel"]
    account = (await create(service, tenant, vendor)).json()["data"]
    assert account["config"]["from"] == "10690000" and "from_number" not in account["config"]
    assert (await stored_config(service, account["id"]))["from"] == "10690000"
    both = await create(service, tenant, vendor, from_number="10690001")
    assert both.status_code == 422, both.text  # one sender, under either name
    path = f"/communication/providers/{account['id']}"
    changed = await service.client.put(path, json={"config": {"from": "10690002"}}, headers=h)
    assert changed.status_code == 200, changed.text
    assert changed.json()["data"]["config"]["from"] == "10690002"


async def test_a_kannel_account_stored_with_from_number_keeps_working(
    service: Service, tenant: TenantKeys
) -> None:
    """Accounts stored before the field took the contract's name: it loads, is shown as ``from``,
    and an update under either name replaces it."""
    h = tenant.headers()
    vendor = VENDORS["kannel"]
    account = (await create(service, tenant, vendor, callback_token="stored-kannel-token-0123")).json()[
        "data"
    ]
    async with service.db.begin() as session:
        row = await session.get(ProviderAccount, account["id"])
        assert row is not None
        config = dict(row.config)
        config["from_number"] = config.pop("from")
        row.config = config
    path = f"/communication/providers/{account['id']}"
    shown = (await service.client.get(path, headers=h)).json()["data"]
    assert shown["config"]["from"] == "10690000" and "from_number" not in shown["config"]
    assert token_of(shown) == "stored-kannel-token-0123"  # the stored token still holds
    answer = await call(
        service,
        vendor,
        with_token(shown["callback_urls"]["status"], "stored-kannel-token-0123"),
        vendor.receipt(),
    )
    assert answer.status_code == 200, answer.text
    for update, expected in (({"from": "10690003"}, "10690003"), ({"from_number": "10690004"}, "10690004")):
        changed = await service.client.put(path, json={"config": update}, headers=h)
        assert changed.status_code == 200, changed.text
        assert changed.json()["data"]["config"]["from"] == expected
        assert "from_number" not in changed.json()["data"]["config"]
        assert token_of(changed.json()["data"]) == "stored-kannel-token-0123"
    other = await service.client.put(path, json={"config": {"dlr_mask": 1}}, headers=h)
    assert other.json()["data"]["config"]["from"] == "10690004"


async def test_a_send_through_kannel_goes_from_the_accounts_from(live_service: Service) -> None:
    """With no SMS sender identity of the tenant's, a message goes from the account's ``from``;
    the dlr-url carries the generated token, and the report Kannel makes of it is applied."""
    tenant = await make_tenant(live_service.db, name="NoSmsSender", sender_identities=["news@acme.example"])
    h = tenant.headers()
    async with KannelVendor() as kannel:
        config = {**VENDORS["kannel"].config, "sendsms_url": f"{kannel.url}/cgi-bin/sendsms"}
        created = await live_service.client.post(
            "/communication/providers",
            json={"channel": "sms", "provider": "kannel", "name": "kannel", "config": config},
            headers=h,
        )
        assert created.status_code == 201, created.text
        account = created.json()["data"]
        kannel.token = token_of(account)
        answer = await live_service.client.post(
            "/communication/bulk",
            json={
                "channel": "sms",
                "category": "transactional",
                "content": "Parcel {{ p }} is on its way",
                "variables": {"p": "PX-1"},
                "recipients": ["13800100000"],
            },
            headers=h,
        )
        assert answer.status_code == 202, answer.text
        batch = answer.json()["batch_id"]

        async def sent() -> bool:
            return await statuses(live_service, batch) == {"sent": 1}

        await wait_until(sent)
        request = kannel.request_for("+8613800100000")
        assert request["from"] == "10690000" and request["dlr-mask"] == "3"
        assert kannel.problems == []  # among them: a dlr-url without the account's token
        dlr_url = request["dlr-url"]
        assert parse_qs(urlsplit(dlr_url).query)["token"] == [kannel.token]
        report = dlr_url.replace("%d", "1").replace("%i", "smsc1").replace("%T", "1795717008")
        report = report.replace("%A", "").replace("%p", "%2B8613800100000")
        delivered = await live_service.client.get(report.removeprefix(PUBLIC))
        assert delivered.status_code == 200, delivered.text

        async def applied() -> bool:
            return await statuses(live_service, batch) == {"delivered": 1}

        await wait_until(applied)


async def test_the_account_list_is_paged_in_the_order_accounts_are_tried(
    service: Service, tenant: TenantKeys
) -> None:
    for priority, name in ((3, "c"), (1, "a"), (2, "b")):
        created = await service.client.post(
            "/communication/providers",
            json={
                "channel": "sms",
                "provider": "webhook",
                "name": name,
                "priority": priority,
                "config": {"url": "http://127.0.0.1:9/send", "secret": "s3cret-s3cret-s3cret"},
            },
            headers=tenant.headers(),
        )
        assert created.status_code == 201, created.text
    pages = [
        (
            await service.client.get(
                f"/communication/providers?page={n}&page_size=2", headers=tenant.headers()
            )
        ).json()
        for n in (1, 2, 3)
    ]
    assert [[i["name"] for i in p["items"]] for p in pages] == [["a", "b"], ["c"], []]
    assert {p["total"] for p in pages} == {3}
    assert pages[0]["pagination"]["has_next"] is True and pages[1]["pagination"]["has_next"] is False
    bad = await service.client.get("/communication/providers?page_size=-1", headers=tenant.headers())
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "page_size"


async def create_account(service: Service, tenant: TenantKeys, body: dict[str, Any]) -> httpx.Response:
    return await service.client.post("/communication/providers", json=body, headers=tenant.headers())


async def test_keys_and_certificates_a_library_cannot_read_are_422_naming_config(
    service: Service, tenant: TenantKeys
) -> None:
    """A key of an algorithm the crypto library does not know, or a certificate that is not text
    it can read, is the request's fault: a 422 in the envelope (never a 500), the value unquoted."""
    import base64

    unknown_algorithm = base64.b64encode(
        bytes.fromhex("300e300506032a030403050001020304")  # SPKI, OID 1.2.3.4
    ).decode()
    for body in (
        {"channel": "email", "provider": "sendgrid", "name": "sg",
         "config": {"api_key": "SG.x", "webhook_public_key": unknown_algorithm}},
        {"channel": "email", "provider": "smtp", "name": "relay",
         "config": {"host": "relay.example", "ca_certificate": "\u00e9"}},
    ):  # fmt: skip
        answer = await create_account(service, tenant, body)
        assert answer.status_code == 422 and answer.json()["code"] == 422, answer.text
        assert answer.json()["errors"][0]["field"].startswith("config"), answer.text
        assert unknown_algorithm not in answer.text
    listed = await service.client.get("/communication/providers", headers=tenant.headers())
    assert listed.json()["total"] == 0


async def test_secrets_stored_under_another_secret_key_are_reported_and_can_be_given_again(
    service: Service, tenant: TenantKeys
) -> None:
    """After COMMS_SECRET_KEY changed, an account's stored secrets cannot be decrypted: the answer
    lists them (`secrets_unreadable`), an update that does not give them again is a 422 naming
    them, and one that does gives a working account again (it was a 500)."""
    from comms.kit.secretbox import SecretBox

    created = await create_account(
        service,
        tenant,
        {"channel": "sms", "provider": "webhook", "name": "gw",
         "config": {"url": "https://gw.example/send", "secret": "old-secret-0123456789"}},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    account = created.json()["data"]
    assert account["secrets_unreadable"] == []
    state = service.app.state.comms
    original = state.secrets
    state.secrets = SecretBox("a-rotated-key-that-differs-from-the-old-one")
    try:
        path = f"/communication/providers/{account['id']}"
        shown = await service.client.get(path, headers=tenant.headers())
        assert shown.status_code == 200 and shown.json()["data"]["secrets_unreadable"] == ["secret"]
        renamed = await service.client.put(
            path, json={"config": {"url": "https://gw2.example/send"}}, headers=tenant.headers()
        )
        assert renamed.status_code == 422, renamed.text
        assert renamed.json()["errors"][0]["field"] == "config.secret"
        given = await service.client.put(
            path, json={"config": {"secret": "fresh-secret-0123456789"}}, headers=tenant.headers()
        )
        assert given.status_code == 200, given.text
        assert given.json()["data"]["secrets_unreadable"] == []
    finally:
        state.secrets = original
