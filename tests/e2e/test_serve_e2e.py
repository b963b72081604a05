"""End to end: a real `comms serve` process on a free port, driven over HTTP and through the CLI.

Every test uses its own data dir and a clean environment (no inherited ``COMMS_*`` variables, and
a working directory without a ``.env``), waits by polling with a deadline (never a fixed sleep),
and checks what reached the outbox folder byte for byte where it matters.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from bench._server import BIN, Server, free_port, start_server

pytestmark = pytest.mark.slow

T = TypeVar("T")

SENDER_EMAIL = "news@acme.example"
SENDER_SMS = "ACME"
OTP = "739154"
EMAIL_COUNT = 1000
SMS_COUNT = 20
# Some names need RFC 2047 in the Subject and quoted-printable/base64 in the body.
NAME_STYLES = ("Ann {i}", "Zoë {i}", "李雷{i}", "O'Brien-{i}")


# -------------------------------------------------------------------------------------------------
# helpers


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def clean_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMS_")}
    env["COMMS_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_batch_done(client: httpx.Client, batch_id: str, total: int, timeout: float = 60.0) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def done() -> dict[str, Any] | None:
        answer = client.get(f"/communication/batches/{batch_id}")
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()["data"]
        last.update(data)
        return data if data["done"] else None

    try:
        data = wait_for(done, f"batch {batch_id} to finish", timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last counts: {last.get('counts')}") from None
    assert data["total"] == total
    assert data["counts"] == {"sent": total}, data["counts"]
    assert data["progress"] == 1.0
    return data


def batch_items(client: httpx.Client, batch_id: str, expected: int) -> list[dict[str, Any]]:
    """Every log item of a batch, through the paginated list (masked recipients)."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        answer = client.get(
            "/communication/logs", params={"batch_id": batch_id, "page": page, "page_size": 200}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items += body["items"]
        if not body["pagination"]["has_next"]:
            break
        page += 1
    assert body["total"] == expected
    assert len(items) == expected and len({item["id"] for item in items}) == expected
    return items


def parse_eml(path: Path) -> Any:
    return BytesParser(policy=policy.default).parsebytes(path.read_bytes())


def body_text(message: Any) -> str:
    return str(message.get_content()).replace("\r\n", "\n")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> tuple[int, float]:
    """SIGTERM, then wait (bounded). Returns (exit code, seconds until exit)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"comms serve did not exit within {timeout} s of SIGTERM") from None
    return code, time.monotonic() - started


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """`comms serve` (with its dispatcher) on a free port, after the CLI made a tenant (senders
    news@acme.example and ACME) and an API key: `comms tenant create|apikey create --json`."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    work = tmp_path / "cwd"  # no .env here: the subprocesses see only the environment we give
    work.mkdir()
    monkeypatch.chdir(work)  # start_server itself strips inherited COMMS_* variables
    try:
        srv = start_server(data_dir, extra_env={"PYTHONUNBUFFERED": "1"})
    except subprocess.CalledProcessError as exc:  # `comms tenant create` / `comms apikey create`
        pytest.fail(f"{exc.cmd[1:3]} exited {exc.returncode}: {exc.stderr[-3000:]}")
    try:
        yield srv
    finally:
        if srv.process.poll() is None:
            srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
        yield c


# -------------------------------------------------------------------------------------------------
# 1,000 emails with per-recipient variables and an SMS bulk


def email_address(i: int) -> str:
    # A domain of its own per recipient, so the masked log item (p***@r0042.example.com) still
    # says which recipient it is without the pii:read scope.
    return f"person{i:04d}@r{i:04d}.example.com"


def phone_national(i: int) -> str:
    return f"1380013{i:04d}"


def test_bootstrap_send_1000_emails_and_sms_bulk(server: Server, client: httpx.Client) -> None:
    # The fixture bootstrapped through the CLI: `comms tenant create ... --json` and
    # `comms apikey create ... --json` gave a tenant id and a token that the API accepts.
    assert re.fullmatch(r"tnt_\w+", server.tenant_id)
    assert server.token.startswith("comms_key_")

    names = {i: NAME_STYLES[i % len(NAME_STYLES)].format(i=i) for i in range(EMAIL_COUNT)}
    email_body = {
        "channel": "email",
        "category": "transactional",
        "subject": "Your order, {{ name }}",
        "content": "Dear {{ name }}, your order has shipped.",
        "recipients": [{"to": email_address(i), "variables": {"name": names[i]}} for i in range(EMAIL_COUNT)],
    }
    answer = client.post("/communication/bulk", json=email_body)
    assert answer.status_code == 202, answer.text
    emails = answer.json()
    assert emails["total"] == EMAIL_COUNT and emails["counts"] == {"queued": EMAIL_COUNT}
    assert emails["batch_id"].startswith("bat_")

    # The phones in several spellings: national, E.164, and formatted with blanks and dashes.
    spelled = [phone_national(i) for i in range(SMS_COUNT)]
    spelled[1] = "+86" + phone_national(1)
    spelled[2] = "+86 138-0013-0002"
    sms_body = {
        "channel": "sms",
        "category": "verification",
        "content": "Your ACME code is {{ code }}. It expires in 10 minutes.",
        "variables": {"code": OTP},
        "recipients": spelled,
    }
    answer = client.post("/communication/bulk", json=sms_body)
    assert answer.status_code == 202, answer.text
    sms = answer.json()
    assert sms["total"] == SMS_COUNT and sms["counts"] == {"queued": SMS_COUNT}
    for i, item in enumerate(sms["items"]):  # the 202 itself shows nothing secret or raw
        assert item["recipient"] == f"138****{i:04d}"
        assert item["content"] == "Your ACME code is ******. It expires in 10 minutes."

    wait_batch_done(client, emails["batch_id"], EMAIL_COUNT)
    wait_batch_done(client, sms["batch_id"], SMS_COUNT)

    # ---- every email, in the outbox, for THAT recipient
    outbox = server.data_dir / "outbox"
    items = batch_items(client, emails["batch_id"], EMAIL_COUNT)
    seen: set[int] = set()
    for item in items:
        assert item["status"] == "sent" and item["channel"] == "email"
        assert item["category"] == "transactional"
        match = re.fullmatch(r"p\*\*\*@r(\d{4})\.example\.com", item["recipient"])
        assert match, item["recipient"]
        i = int(match.group(1))
        seen.add(i)
        log_id = item["id"]
        message = parse_eml(outbox / "email" / f"{log_id}.eml")
        assert message["To"] == email_address(i)
        assert message["From"].addresses[0].addr_spec == SENDER_EMAIL
        assert message["Subject"] == f"Your order, {names[i]}"
        assert message.get_all("Message-ID") == [f"<{log_id}@acme.example>"]
        assert message.get_all("Auto-Submitted") == ["auto-generated"]
        assert message.get_content_type() == "text/plain"
        assert body_text(message) == f"Dear {names[i]}, your order has shipped.\n"
        assert item["content"] == f"Dear {names[i]}, your order has shipped."
    assert seen == set(range(EMAIL_COUNT))
    assert len(list((outbox / "email").glob("*.eml"))) == EMAIL_COUNT
    assert not list((outbox / "email").glob(".*.tmp"))

    # ---- every SMS: the JSON the provider would get, with the real code; the log keeps it hidden
    sms_items = batch_items(client, sms["batch_id"], SMS_COUNT)
    by_mask = {item["recipient"]: item for item in sms_items}
    assert set(by_mask) == {f"138****{i:04d}" for i in range(SMS_COUNT)}
    for i in range(SMS_COUNT):
        item = by_mask[f"138****{i:04d}"]
        payload = json.loads((outbox / "sms" / f"{item['id']}.json").read_text(encoding="utf-8"))
        assert payload == {
            "id": item["id"],
            "to": "+86" + phone_national(i),
            "from": SENDER_SMS,
            "content": f"Your ACME code is {OTP}. It expires in 10 minutes.",
            "segments": 1,
        }
        one = client.get(f"/communication/logs/{item['id']}")
        assert one.status_code == 200, one.text
        log = one.json()["data"]
        assert log["status"] == "sent" and log["provider"] == "outbox" and log["sent_at"]
        assert log["recipient"] == f"138****{i:04d}"
        assert log["content"] == "Your ACME code is ******. It expires in 10 minutes."
        assert OTP not in json.dumps(log)
        assert phone_national(i) not in json.dumps(log)
    assert len(list((outbox / "sms").glob("*.json"))) == SMS_COUNT

    # ---- the server's own output leaks nothing
    server_log = (server.data_dir / "server.log").read_text(encoding="utf-8", errors="replace")
    assert "Application startup complete" in server_log  # it is the right file, and it has content
    assert server.token not in server_log
    # Not even its secret part (comms_key_<key id>_<secret>; the secret may itself hold "_").
    secret = server.token.split("_", 3)[3]
    assert len(secret) >= 32 and secret not in server_log
    assert OTP not in server_log
    for i in range(SMS_COUNT):
        assert phone_national(i) not in server_log
    assert "+86 138-0013-0002" not in server_log
    for i in range(EMAIL_COUNT):
        assert email_address(i) not in server_log
    assert "@r0" not in server_log and "person0" not in server_log


# -------------------------------------------------------------------------------------------------
# `comms send` with a CSV against the running server


def send_email_args(server: Server, recipients_file: Path, subject: str, content: str) -> list[str]:
    """`comms send` of a transactional email to the file's recipients, with the server's token."""
    return [
        str(BIN / "comms"),
        "send",
        "--channel",
        "email",
        "--recipients-file",
        str(recipients_file),
        "--subject",
        subject,
        "--content",
        content,
        "--category",
        "transactional",
        "--token",
        server.token,
    ]


def test_cli_send_csv_until_all_sent(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    people = [
        (f"reader{i:03d}@c{i:03d}.example.org", NAME_STYLES[i % len(NAME_STYLES)].format(i=i))
        for i in range(60)
    ]
    people[5] = (people[5][0], "Doe, Jane")  # a quoted CSV field with a comma
    people[6] = (people[6][0], 'Say "hi" 6')  # a quoted CSV field with quotes
    csv_lines = ["to,name"]
    for address, name in people:
        quoted = '"' + name.replace('"', '""') + '"' if ("," in name or '"' in name) else name
        csv_lines.append(f"{address},{quoted}")
    recipients_file = tmp_path / "people.csv"
    recipients_file.write_text("\n".join(csv_lines) + "\n", encoding="utf-8")

    started = time.monotonic()
    args = [
        *send_email_args(server, recipients_file, "Hi {{ name }}", "Hello {{ name }}, thanks for reading."),
        "--url",
        server.url,
    ]
    try:
        # `comms send` polls until the batch is done, with no deadline of its own: bound it here.
        run = subprocess.run(args, env=server.env, cwd=tmp_path, capture_output=True, text=True, timeout=25)
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode() if isinstance(exc.stdout, bytes) else str(exc.stdout or "")
        found = re.search(r"batch (bat_\w+)", partial)
        counts = client.get(f"/communication/batches/{found.group(1)}").json() if found else None
        raise AssertionError(
            f"comms send still waiting after 25 s: {partial[:500]!r}; batch: {counts}"
        ) from None
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started < 25
    out_lines = [line for line in run.stdout.splitlines() if line.strip()]
    first = re.match(r"batch (bat_\w+): 60 recipient\(s\) accepted", out_lines[0])
    assert first, run.stdout
    batch_id = first.group(1)
    assert json.loads(out_lines[-1]) == {"sent": 60}, run.stdout

    data = client.get(f"/communication/batches/{batch_id}").json()["data"]
    assert data["done"] and data["counts"] == {"sent": 60} and data["category"] == "transactional"
    outbox = server.data_dir / "outbox" / "email"
    for item in batch_items(client, batch_id, 60):
        assert item["status"] == "sent"
        match = re.fullmatch(r"r\*\*\*@c(\d{3})\.example\.org", item["recipient"])
        assert match, item["recipient"]
        address, name = people[int(match.group(1))]
        message = parse_eml(outbox / f"{item['id']}.eml")
        assert message["To"] == address
        assert message["From"].addresses[0].addr_spec == SENDER_EMAIL
        assert message["Subject"] == f"Hi {name}"
        assert message.get_all("Message-ID") == [f"<{item['id']}@acme.example>"]
        assert body_text(message) == f"Hello {name}, thanks for reading.\n"


def test_cli_send_says_which_recipients_did_not_go_and_why(server: Server, tmp_path: Path) -> None:
    recipients_file = tmp_path / "mixed.txt"
    recipients_file.write_text("ok1@c1.example.org\nnot-an-address\nok2@c2.example.org\n", encoding="utf-8")
    args = send_email_args(server, recipients_file, "Hi", "Hello.")
    run = subprocess.run(
        [*args, "--url", server.url], env=server.env, cwd=tmp_path, capture_output=True, text=True, timeout=25
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert '{"rejected": 1, "sent": 2}' in run.stdout
    [line] = [line for line in run.stdout.splitlines() if line.startswith("  rejected: ")]
    assert line == "  rejected: ***: invalid email address: An email address must have an @-sign.", line
    # A wrong URL is one line on stderr, not a traceback.
    gone = subprocess.run(
        [*args, "--url", f"http://127.0.0.1:{free_port()}"],
        env=server.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert gone.returncode == 1 and gone.stderr.startswith("error: cannot reach the service at ")
    assert "Traceback" not in gone.stderr and len(gone.stderr.splitlines()) == 1


# -------------------------------------------------------------------------------------------------
# first start on an empty data dir; SIGTERM drains and exits 0

README_SMS = {
    "channel": "sms",
    "category": "verification",
    "content": "Your verification code is {{ code }}",
    "variables": {"code": "123456"},
    "recipients": ["13800138000", "13900139000"],
}


def spawn_serve(data_dir: Path, env: dict[str, str], name: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    out = data_dir.parent / f"{name}.stdout"
    err = data_dir.parent / f"{name}.stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(
            [str(BIN / "comms"), "serve", "--port", str(port)],
            env=env,
            cwd=data_dir.parent,
            stdout=stdout,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"comms serve exited {process.returncode}: {err.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, "comms serve to become ready", timeout=30)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    return process, url, err


def test_first_start_prints_demo_key_and_sigterm_drains(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"  # does not exist yet: an empty data dir
    env = clean_env(data_dir)
    process, url, stderr_path = spawn_serve(data_dir, env, "first")
    try:
        stderr = stderr_path.read_text(encoding="utf-8")
        stdout = (tmp_path / "first.stdout").read_text(encoding="utf-8")
        keys = re.findall(r"comms_key_\S+", stderr)
        assert len(keys) == 1, stderr  # printed once
        assert "comms_key_" not in stdout
        assert re.search(r"Created demo tenant tnt_\w+\. Its API key \(shown once", stderr)
        token = keys[0]

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            # The README's first request, as given there.
            answer = client.post(
                "/communication/bulk", json=README_SMS, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 202, answer.text
            readme = answer.json()
            assert [i["recipient"] for i in readme["items"]] == ["138****8000", "139****9000"]
            assert {i["content"] for i in readme["items"]} == {"Your verification code is ******"}
            wait_batch_done(client, readme["batch_id"], 2)
            # The demo key has the default scopes: raw recipients need a pii:read key.
            assert client.get("/communication/logs?unmask=true").status_code == 403
            for item, e164 in zip(readme["items"], ["+8613800138000", "+8613900139000"], strict=True):
                payload = json.loads((data_dir / "outbox" / "sms" / f"{item['id']}.json").read_text())
                assert payload == {
                    "id": item["id"],
                    "to": e164,
                    "from": "COMMS",
                    "content": "Your verification code is 123456",
                    "segments": 1,
                }

            # A bulk in flight when SIGTERM arrives: what was claimed is finished (drained),
            # the rest stays queued; nothing is left half-sent.
            bulk_size = 3000
            answer = client.post(
                "/communication/bulk",
                json={**README_SMS, "recipients": [f"1390013{i:04d}" for i in range(bulk_size)]},
            )
            assert answer.status_code == 202, answer.text
            bulk_id = answer.json()["batch_id"]

        code, took = stop_process(process, timeout=15)
        assert code == 0, f"exit {code}: {stderr_path.read_text()[-3000:]}"
        assert took < 10, f"took {took:.1f} s to exit"
        stderr = stderr_path.read_text(encoding="utf-8")
        assert "Application shutdown complete" in stderr
        assert "123456" not in stderr and "13800138000" not in stderr and "13900139000" not in stderr

        with contextlib.closing(sqlite3.connect(data_dir / "comms.db")) as db:
            rows = db.execute("SELECT id, status FROM messages WHERE batch_id = ?", (bulk_id,)).fetchall()
        assert len(rows) == bulk_size
        statuses = {status for _, status in rows}
        assert statuses <= {"queued", "sent"}, statuses
        sent_ids = {log_id for log_id, status in rows if status == "sent"}
        written = {p.stem for p in (data_dir / "outbox" / "sms").glob("*.json")}
        assert sent_ids <= written
        assert not (written - sent_ids - {i["id"] for i in readme["items"]})

        # A second start on the same data dir: no new demo tenant, no key printed; what was left
        # queued by the shutdown is sent now, with the same key.
        process, url, stderr_path = spawn_serve(data_dir, env, "second")
        assert "comms_key_" not in stderr_path.read_text(encoding="utf-8")
        assert "Created demo tenant" not in stderr_path.read_text(encoding="utf-8")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            wait_batch_done(client, bulk_id, bulk_size, timeout=20)
        assert len(list((data_dir / "outbox" / "sms").glob("*.json"))) == bulk_size + 2
        code, took = stop_process(process, timeout=15)
        assert code == 0 and took < 10, (code, took)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_tenant_create_names_the_bad_option(server: Server) -> None:
    for region, why in (
        ("XX", "XX is not a region with a phone numbering plan"),
        ("USA", "must be a two-letter ISO 3166 region code"),
    ):
        run = subprocess.run(
            [str(BIN / "comms"), "tenant", "create", "--name", "Bad", "--region", region],
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and run.stdout == ""
        assert run.stderr.startswith(f"error: --region: {why}"), run.stderr
        assert len(run.stderr.splitlines()) == 1, run.stderr
