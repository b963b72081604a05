"""Settings from the environment: nonsense is refused at start, one line per variable, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from comms.config import Settings


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lease_seconds", float("inf"), "finite"),
        ("retry_max_seconds", float("nan"), "finite"),
        ("poll_interval_seconds", float("inf"), "finite"),
        ("rate_limit_per_second", float("inf"), "finite"),
        ("port", 0, "greater than or equal to 1"),
        ("port", 99_999, "less than or equal to 65535"),
        ("public_url", "example.com", "http:// or https://"),
        ("public_url", "https://[zz]", "not a valid URL"),
        ("secret_key", "", "set but empty"),
        ("secret_key", "   ", "set but empty"),
        ("log_level", "bogus", "must be one of"),
    ],
)
def test_nonsense_settings_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_sound_settings_pass_and_the_log_level_is_read_in_any_case() -> None:
    settings = Settings(log_level="debug", public_url="https://comms.example/", port=8443, lease_seconds=30)
    assert settings.log_level == "DEBUG" and settings.resolved_public_url == "https://comms.example"


def test_the_cli_names_each_bad_variable_and_exits_2(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "COMMS_DATA_DIR": str(tmp_path),
        "COMMS_LEASE_SECONDS": "inf",
        "COMMS_SECRET_KEY": "",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "comms"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: COMMS_SECRET_KEY: is set but empty: give the key shared by every process, or unset it",
        "error: COMMS_LEASE_SECONDS: Input should be a finite number",
    ]
