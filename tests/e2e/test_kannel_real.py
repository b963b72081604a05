"""End to end with Debian's real Kannel: `comms serve` -> smsbox -> bearerbox -> fakesmsc, and the
delivery reports back from Kannel to comms over HTTP.

Kannel's ``fake`` SMSC (gw/smsc/smsc_fake.c) hands each message to the connected ``fakesmsc``
client as a line of text and then, when the message's dlr-mask asks for them, produces the
delivery reports itself: type 8 ("delivered to SMSC", answer ``ACK/``) once the line is written
and type 1 ("delivered to phone") right after. smsbox calls our dlr-url for each, so every message
ends ``delivered`` without anything faked on our side. ``fakesmsc`` runs in its interactive mode:
a line written to its stdin is a mobile-originated SMS, which smsbox hands to our inbound URL
through an ``sms-service`` get-url.

Needs the Debian packages ``kannel`` (bearerbox, smsbox) and ``kannel-extras`` (fakesmsc); .ci/run
installs them. Without them the test skips, or fails when COMMS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import unquote_to_bytes

import httpx
import pytest
from bench._server import BIN, cli, free_port

from tests.conftest import REQUIRE_SERVICES

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("kannel")]

T = TypeVar("T")

BEARERBOX = Path("/usr/sbin/bearerbox")
SMSBOX = Path("/usr/sbin/smsbox")
FAKESMSC = Path("/usr/lib/kannel/test/fakesmsc")  # kannel-extras

SMSC_ID = "fake1"
SENDER = "ACME"
COUNT = 20
ADMIN_PASSWORD = "kannel-admin-" + secrets.token_hex(4)
DEADLINE = 45.0  # seconds for the whole test, well inside a minute


def need_kannel() -> None:
    missing = [str(p) for p in (BEARERBOX, SMSBOX, FAKESMSC) if not os.access(p, os.X_OK)]
    if missing:
        message = f"Kannel is not installed ({', '.join(missing)}): apt-get install kannel kannel-extras"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (COMMS_REQUIRE_SERVICES=1)")
        pytest.skip(message)


def wait_for(check: Callable[[], T | None], what: str, timeout: float, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Processes:
    """Every subprocess this test started, stopped (by its own pid) in reverse order."""

    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)
    files: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(log, "wb")  # noqa: SIM115 - closed in stop_all
        self.files.append(out)
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        self.started.append((name, process))
        self.logs[name] = log
        return process

    def check_alive(self) -> None:
        for name, process in self.started:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            if process.stdin is not None:
                process.stdin.close()
        for out in self.files:
            out.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


def kannel_conf(
    tmp: Path, *, admin: int, box: int, fake: int, sendsms: int, username: str, password: str, get_url: str
) -> str:
    return f"""\
group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = {ADMIN_PASSWORD}
status-password = {ADMIN_PASSWORD}
smsbox-port = {box}
box-allow-ip = 127.0.0.1
dlr-storage = internal
log-file = "{tmp}/bearerbox.log"
log-level = 0
access-log = "{tmp}/bearerbox-access.log"

group = smsc
smsc = fake
smsc-id = {SMSC_ID}
port = {fake}
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {box}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
log-file = "{tmp}/smsbox.log"
log-level = 0
access-log = "{tmp}/smsbox-access.log"

group = sendsms-user
username = {username}
password = {password}
max-messages = 5
concatenation = true

group = sms-service
keyword = default
catch-all = yes
max-messages = 0
get-url = "{get_url}"
"""


def bearerbox_status(admin: int) -> str | None:
    try:
        answer = httpx.get(
            f"http://127.0.0.1:{admin}/status.txt", params={"password": ADMIN_PASSWORD}, timeout=1
        )
    except httpx.HTTPError:
        return None
    return answer.text if answer.status_code == 200 else None


def fakesmsc_lines(log: Path) -> list[tuple[str, str, str]]:
    """(sender, receiver, text) of each message the fake SMSC handed to fakesmsc."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if "Got message" not in line:
            continue
        payload = line.split(": <", 1)[1].rstrip(">")
        sender, receiver, kind, data = payload.split(" ", 3)
        if kind == "text":
            text = data
        elif kind == "ucs-2":  # UTF-16BE, url-encoded (a space byte as "+")
            text = unquote_to_bytes(data.replace("+", " ")).decode("utf-16-be")
        else:  # "data" (8-bit) or "udh ..." (one part of a long message)
            text = unquote_to_bytes(data.split(" ")[-1].replace("+", " ")).decode("utf-8", errors="replace")
        out.append((sender, receiver, text))
    return out


def start_comms(tmp: Path, processes: Processes) -> tuple[httpx.Client, dict[str, str]]:
    """`comms serve` (with its dispatcher) on a free port whose URL is COMMS_PUBLIC_URL, so the
    callback URLs handed to Kannel reach it; a tenant with sender ACME and an API key."""
    data_dir = tmp / "comms"
    data_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
    env.update(
        {
            "COMMS_DATA_DIR": str(data_dir),
            "COMMS_SECRET_KEY": "kannel-e2e-secret",
            "COMMS_PUBLIC_URL": url,
            "PYTHONUNBUFFERED": "1",
        }
    )
    tenant_id = json.loads(cli(["tenant", "create", "--name", "Acme", "--json", "--sender", SENDER], env))[
        "id"
    ]
    token = json.loads(cli(["apikey", "create", "--tenant", tenant_id, "--json"], env))["token"]
    processes.start(
        "comms", [str(BIN / "comms"), "serve", "--port", str(port)], data_dir / "server.log", env=env, cwd=tmp
    )

    def ready() -> bool:
        processes.check_alive()
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, "comms serve to be ready", timeout=30)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return client, env


def test_bulk_through_real_kannel_until_every_message_is_delivered(
    tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_kannel()
    started = time.monotonic()
    monkeypatch.chdir(tmp_path)  # no .env from the checkout reaches the CLI
    client, _ = start_comms(tmp_path, processes)

    admin, box, fake, sendsms = (free_port() for _ in range(4))
    assert len({admin, box, fake, sendsms}) == 4
    username, password = "comms", secrets.token_urlsafe(12)
    callback_token = secrets.token_urlsafe(24)
    created = client.post(
        "/communication/providers",
        json={
            "channel": "sms",
            "provider": "kannel",
            "name": "kannel",
            "priority": 1,
            "config": {
                "sendsms_url": f"http://127.0.0.1:{sendsms}/cgi-bin/sendsms",
                "username": username,
                "password": password,
                "smsc": SMSC_ID,
                "callback_token": callback_token,
                "timeout_seconds": 10,
            },
        },
    )
    assert created.status_code == 201, created.text
    callback_urls = created.json()["data"]["callback_urls"]
    assert callback_urls["status"].startswith(str(client.base_url))
    # The inbound URL the API shows carries the token; Kannel's get-url adds its escapes to it.
    assert callback_urls["inbound"].endswith(f"/inbound?token={callback_token}")
    get_url = callback_urls["inbound"] + "&from=%p&to=%P&text=%a&id=%I&ts=%t&smsc=%i"

    conf = tmp_path / "kannel.conf"
    conf.write_text(
        kannel_conf(
            tmp_path,
            admin=admin,
            box=box,
            fake=fake,
            sendsms=sendsms,
            username=username,
            password=password,
            get_url=get_url,
        )
    )
    processes.start("bearerbox", [str(BEARERBOX), str(conf)], tmp_path / "bearerbox.out", cwd=tmp_path)

    def bearerbox_up() -> bool:
        processes.check_alive()
        return bearerbox_status(admin) is not None

    wait_for(bearerbox_up, "bearerbox's admin port", timeout=15)
    processes.start("smsbox", [str(SMSBOX), str(conf)], tmp_path / "smsbox.out", cwd=tmp_path)
    # Interactive mode: it prints what the SMSC gets and sends each stdin line as an MO message.
    fakesmsc = processes.start(
        "fakesmsc",
        [str(FAKESMSC), "-H", "127.0.0.1", "-r", str(fake)],
        tmp_path / "fakesmsc.log",
        stdin=subprocess.PIPE,
        cwd=tmp_path,
    )

    def kannel_ready() -> bool:
        processes.check_alive()
        status = bearerbox_status(admin) or ""
        fake_line = next((line for line in status.splitlines() if line.strip().startswith(SMSC_ID)), "")
        return "smsbox:" in status and "(online" in fake_line

    try:
        wait_for(kannel_ready, "smsbox and fakesmsc to connect to bearerbox", timeout=15)
    except AssertionError:
        raise AssertionError(f"{bearerbox_status(admin)}\n{processes.tail('bearerbox')}") from None

    # ---- 20 recipients, half of them with a name outside the GSM alphabet (sent as UCS-2)
    names = {i: (f"李雷{i}" if i % 2 else f"Ann {i}") for i in range(COUNT)}
    bulk = client.post(
        "/communication/bulk",
        json={
            "channel": "sms",
            "category": "transactional",
            "content": "Hi {{ name }}, parcel {{ p }} ships today.",
            "variables": {"p": "PX-7"},
            "recipients": [{"to": f"1380013{i:04d}", "variables": {"name": names[i]}} for i in range(COUNT)],
        },
    )
    assert bulk.status_code == 202, bulk.text
    batch_id = bulk.json()["batch_id"]
    last: dict[str, Any] = {}

    def all_delivered() -> bool:
        processes.check_alive()
        data = client.get(f"/communication/batches/{batch_id}").json()["data"]
        last.update(data)
        return bool(data["counts"] == {"delivered": COUNT})

    try:
        wait_for(
            all_delivered, "every message to be delivered", timeout=DEADLINE - (time.monotonic() - started)
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; counts {last.get('counts')}\n--- smsbox\n{processes.tail('smsbox')}\n"
            f"--- comms\n{processes.tail('comms')}"
        ) from None

    # ---- what the SMSC got: each recipient once, from ACME, the rendered text in the right coding
    expected = {f"+861380013{i:04d}": i for i in range(COUNT)}  # to_format "plus", the default
    fakesmsc_log = tmp_path / "fakesmsc.log"

    # fakesmsc prints what it reads about once a second in interactive mode (the reports do not
    # wait for it: the fake SMSC makes them as soon as it has written the line).
    def printed() -> list[tuple[str, str, str]] | None:
        processes.check_alive()
        lines = fakesmsc_lines(fakesmsc_log)
        return lines if len(lines) >= COUNT else None

    seen = wait_for(printed, "fakesmsc to print every message", timeout=10)
    assert Counter(receiver for _, receiver, _ in seen) == Counter(list(expected)), seen
    for sender, receiver, text in seen:
        assert sender == SENDER
        assert text == f"Hi {names[expected[receiver]]}, parcel PX-7 ships today."
    ucs2 = fakesmsc_log.read_text(errors="replace").count(" ucs-2 ")
    assert ucs2 == COUNT // 2  # coding=2 exactly where the text needs it, GSM 7-bit otherwise

    # bearerbox's access log: each message sent to the fake SMSC, and both reports (8, then 1) for it.
    access = (tmp_path / "bearerbox-access.log").read_text(errors="replace").splitlines()
    sent = [line for line in access if f"Sent SMS [SMSC:{SMSC_ID}]" in line]
    assert sorted(line.split("[to:")[1].split("]")[0] for line in sent) == sorted(expected)
    reports = Counter(
        line.rsplit("[flags:", 1)[1].split("]")[0].rsplit(":", 1)[1]
        for line in access
        if "Receive DLR" in line
    )
    assert reports == {"8": COUNT, "1": COUNT}, reports
    status = bearerbox_status(admin) or ""
    assert f"sent {COUNT} (" in status, status  # "SMS: received 0 (0 queued), sent 20 (0 queued)"

    # ... and every report reached comms over HTTP and was taken (Kannel calls the dlr-url itself).
    server_log = (tmp_path / "comms" / "server.log").read_text(errors="replace")
    assert server_log.count("route=/webhooks/{provider}/{account_id}/status status=200") == 2 * COUNT
    assert callback_token not in server_log and password not in server_log
    items = client.get("/communication/logs", params={"batch_id": batch_id, "page_size": 50}).json()["items"]
    assert len(items) == COUNT
    assert {(item["status"], item["provider"]) for item in items} == {("delivered", "kannel")}

    # ---- an inbound STOP from the first recipient: Kannel's get-url -> comms, confirmed by SMS
    phone = "+8613800130000"
    assert fakesmsc.stdin is not None
    fakesmsc.stdin.write(f"{phone} 10086 text STOP\n".encode())
    fakesmsc.stdin.flush()

    def confirmation() -> tuple[str, str, str] | None:
        processes.check_alive()
        return next(
            (m for m in fakesmsc_lines(tmp_path / "fakesmsc.log")[COUNT:] if "unsubscribed" in m[2]), None
        )

    sender, receiver, text = wait_for(confirmation, "the STOP confirmation SMS", timeout=15)
    assert receiver == phone and sender == SENDER
    later = fakesmsc_lines(tmp_path / "fakesmsc.log")[COUNT:]
    assert [m for m in later if m[2] == "OK"] == []  # max-messages = 0: our "OK" is not texted back
    assert time.monotonic() - started < DEADLINE
