"""Messages/s: ``EmailMessage`` + ``set_content`` + ``as_bytes`` versus :func:`build_email`.

Both sides produce the bytes an SMTP client sends, per recipient of a batch: the recipient and
Message-ID change every message. "personalised" also changes the body (a greeting with the
recipient's name), so the builder's body cache never hits; "same body" is a plain broadcast.

    .venv/bin/python bench/mime.py [seconds-per-case]
"""

# Full-width CJK punctuation in the sample texts is intended.
# ruff: noqa: RUF001

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr

from comms.kit.clock import utcnow
from comms.providers.email.mime import EmailContent, build_email, message_id_for

EXTRA = (
    ("List-Unsubscribe", "<https://acme.example/u/tok_5f3a9c>, <mailto:unsub+tok_5f3a9c@acme.example>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("Auto-Submitted", "auto-generated"),
    ("Feedback-ID", "cmp_42:tenant_7:comms"),
)

CASES = {
    "ascii": (
        "Your March statement is ready",
        "Acme News",
        "Hi {n},\n\nYour statement for March is ready. Log in to see it:\nhttps://acme.example/s\n\n"
        "Thanks,\nThe Acme team\n",
        "<p>Hi {n},</p><p>Your statement for March is <b>ready</b>.</p>",
    ),
    "chinese": (
        "您的三月账单已生成，请及时查看",
        "极客商城",
        "{n}，您好：\n\n您的三月账单已经生成，请登录查看详情。如有疑问请联系客服。\n\n极客商城团队\n",
        "<p>{n}，您好：</p><p>您的三月账单已经生成，请登录查看详情。</p>",
    ),
}


def stdlib(content: EmailContent) -> bytes:
    msg = EmailMessage()
    msg["Date"] = format_datetime(content.date or utcnow())
    msg["From"] = formataddr((content.from_name or "", content.from_addr))
    msg["To"] = content.to_addr
    msg["Subject"] = content.subject
    msg["Message-ID"] = f"<{content.message_id}>"
    for name, value in content.extra_headers:
        msg[name] = value
    msg.set_content(content.text)
    if content.html is not None:
        msg.add_alternative(content.html, subtype="html")
    return msg.as_bytes(policy=SMTP)


def contents(case: str, personalised: bool, html: bool, count: int) -> list[EmailContent]:
    subject, from_name, text, markup = CASES[case]
    out = []
    for i in range(count):
        name = f"user{i}" if personalised else "friend"
        out.append(
            EmailContent(
                from_addr="news@acme.example",
                to_addr=f"user{i}@example.com",
                subject=subject,
                text=text.format(n=name),
                html=markup.format(n=name) if html else None,
                from_name=from_name,
                message_id=message_id_for(f"log_{i:032x}", "news@acme.example"),
                extra_headers=EXTRA,
            )
        )
    return out


def rate(fn: Callable[[EmailContent], bytes], batch: list[EmailContent], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while True:
        for content in batch:
            fn(content)
        done += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(f"{'case':<32}{'stdlib msg/s':>14}{'build_email msg/s':>20}{'speed-up':>10}")
    for case in CASES:
        for html in (False, True):
            for personalised in (False, True):
                batch = contents(case, personalised, html, 2000)
                slow = rate(stdlib, batch, seconds)
                fast = rate(build_email, batch, seconds)
                parts = "text+html" if html else "text"
                label = f"{case} {parts} {'personalised' if personalised else 'same body'}"
                print(f"{label:<32}{slow:>14,.0f}{fast:>20,.0f}{fast / slow:>9.1f}x")


if __name__ == "__main__":
    main()
