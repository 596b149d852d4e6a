"""Settings from the environment: defaults, parsing, one-line errors, no secrets in them."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from shared.flapping import FlapRule
from shared.settings import ConfigError, Settings, read_dotenv
from shared.topology import queue_arguments, retry_queue_name
from worker.outcomes import defer_delay, retry_delay

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_spec() -> None:
    s = Settings.from_env({})

    assert s.rabbitmq_url == "amqp://guest:guest@localhost:5672/"
    assert (s.receiver_host, s.receiver_port) == ("0.0.0.0", 8080)
    assert s.upgrade_api == "auto" and s.upgrade_plan == "bunny-2"
    assert (s.upgrade_poll_seconds, s.upgrade_confirm_timeout_seconds) == (15.0, 10800.0)
    assert s.memory_threshold == 80 and s.cooldown_seconds == 1800
    assert s.retry_delays == (10, 60, 300, 1800) and s.max_attempts == 5
    assert s.database_url == "sqlite:///var/autopilot.db" and s.claim_lease_seconds == 120
    assert s.effective_dry_run  # no API key
    assert (s.flap_openings, s.flap_window_seconds, s.flap_quiet_seconds) == (4, 3600, 900)


def test_flap_detection_is_read_and_zero_openings_turn_it_off() -> None:
    s = Settings.from_env({"FLAP_OPENINGS": "0", "FLAP_WINDOW_SECONDS": "600", "FLAP_QUIET_SECONDS": "0.5"})

    assert (s.flap_openings, s.flap_window_seconds, s.flap_quiet_seconds) == (0, 600, 0.5)
    assert not FlapRule.of(s).on and FlapRule.of(Settings()).on


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "RETRY_DELAYS": "0.2, 0.5",
            "CLOUDAMQP_INSTANCE_ID": "a, b,",
            "DRY_RUN": "yes",
            "CLOUDAMQP_API_KEY": "k",
            "CLOUDAMQP_API_URL": "http://127.0.0.1:9/",
        }
    )

    assert s.retry_delays == (0.2, 0.5)
    assert s.instance_ids == ("a", "b")
    assert s.dry_run and s.effective_dry_run
    assert s.cloudamqp_api_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RECEIVER_PORT", "abc"),
        ("RECEIVER_PORT", "70000"),
        ("MEMORY_THRESHOLD", "high"),
        ("RETRY_DELAYS", "1,,2"),
        ("RETRY_DELAYS", "-1"),
        ("MAX_ATTEMPTS", "0"),
        ("DRY_RUN", "maybe"),
        ("UPGRADE_API", "soap"),
        ("UPGRADE_POLL_SECONDS", "0"),
        ("UPGRADE_CONFIRM_TIMEOUT_SECONDS", "soon"),
        ("DATABASE_URL", "mysql://x/y"),
        ("RABBITMQ_URL", "http://x"),
        ("COOLDOWN_SECONDS", "nan"),
        ("LOG_FORMAT", "xml"),
        ("WEBHOOK_TOKEN", "has space"),
        ("FLAP_OPENINGS", "-1"),
        ("FLAP_OPENINGS", "four"),
        ("FLAP_OPENINGS", "2.5"),
        ("FLAP_WINDOW_SECONDS", "0"),
        ("FLAP_QUIET_SECONDS", "-5"),
        ("FLAP_QUIET_SECONDS", "inf"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})

    message = str(info.value)
    assert var in message and "\n" not in message


def test_secrets_never_appear_in_errors_or_public_settings() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"WEBHOOK_TOKEN": "top secret"})
    assert "top secret" not in str(info.value)

    s = Settings.from_env({"CLOUDAMQP_API_KEY": "k-123", "RABBITMQ_URL": "amqp://u:pw@h:5672/v"})
    public = s.public_dict()
    assert public["cloudamqp_api_key"] == "set"
    assert "pw" not in public["rabbitmq_url"] and "k-123" not in repr(s)


@pytest.mark.parametrize(
    ("attempts", "retry_after", "expected"),
    [
        (1, None, 10),
        (2, None, 60),
        (4, None, 1800),
        (9, None, 1800),
        (1, 45, 60),
        (1, 5000, 1800),
        (2, 30, 60),
    ],
)
def test_retry_delay_follows_the_schedule_and_honours_retry_after(
    attempts: int, retry_after: float | None, expected: float
) -> None:
    assert retry_delay((10, 60, 300, 1800), attempts, retry_after) == expected


@pytest.mark.parametrize(("wait", "expected"), [(120, 60), (3, 10), (400, 300), (0, 10)])
def test_defer_delay_does_not_overshoot_the_lease(wait: float, expected: float) -> None:
    assert defer_delay((10, 60, 300, 1800), wait) == expected


def test_delay_queues_are_named_by_their_ttl_and_dead_letter_back_to_work() -> None:
    assert retry_queue_name(10) == "cloudamqp.alarms.retry.10s"
    assert retry_queue_name(0.2) == "cloudamqp.alarms.retry.200ms"
    args = queue_arguments("cloudamqp.alarms.retry.10s", 10)
    assert args["x-message-ttl"] == 10000 and args["x-dead-letter-routing-key"] == "cloudamqp.alarms"
    work = queue_arguments("cloudamqp.alarms")
    assert work["x-queue-type"] == "quorum" and work["x-dead-letter-routing-key"] == "cloudamqp.alarms.dead"


def test_dotenv_values_are_read_like_a_shell_reads_them(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# a comment\n"
        'A="x y" # note\n'
        "export B='single quoted'\n"
        "C=plain # note\n"
        'D="a \\"quoted\\" word"\n'
        "EMPTY=\n"
        "NO_EQUALS\n",
        encoding="utf-8",
    )

    assert read_dotenv(dotenv) == {
        "A": "x y",
        "B": "single quoted",
        "C": "plain",
        "D": 'a "quoted" word',
        "EMPTY": "",
    }


def test_the_process_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text('RECEIVER_PORT=9001\nUPGRADE_PLAN="rabbit-1" # bigger\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECEIVER_PORT", "9002")
    monkeypatch.delenv("UPGRADE_PLAN", raising=False)

    s = Settings.from_env()

    assert s.receiver_port == 9002 and s.upgrade_plan == "rabbit-1"


@pytest.mark.parametrize(("tty", "expected"), [(True, "console"), (False, "json")])
def test_log_format_defaults_to_console_on_a_tty_and_json_elsewhere(
    tty: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)

    assert Settings.from_env({}).log_format == expected
    assert Settings.from_env({"LOG_FORMAT": "json" if tty else "console"}).log_format != expected


def test_the_console_session_key_is_a_fernet_key_kept_out_of_errors_and_public_settings() -> None:
    key = base64.urlsafe_b64encode(bytes(range(32))).decode()

    s = Settings.from_env({"CONSOLE_SESSION_KEY": key})

    assert s.console_session_key == key and s.public_dict()["console_session_key"] == "set"
    assert key not in repr(s)
    assert Settings.from_env({}).console_session_key is None
    for bad in ("short", key[:-4], key + "AAAA", "not base64 at all!!"):
        with pytest.raises(ConfigError) as info:
            Settings.from_env({"CONSOLE_SESSION_KEY": bad})
        message = str(info.value)
        assert message.startswith("CONSOLE_SESSION_KEY=(hidden) is invalid") and "\n" not in message
        assert bad not in message


def test_when_the_worker_starts_with_a_bad_flap_setting_then_it_stops_with_one_line_naming_it() -> None:
    env = {"PATH": "/usr/bin:/bin", "FLAP_OPENINGS": "often", "LOG_FORMAT": "json"}

    done = subprocess.run(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "worker: configuration error: FLAP_OPENINGS='often' is invalid: expected a whole number"
    ]
