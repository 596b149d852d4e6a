"""``make run``: the broker (and a local PostgreSQL store) brought up by ``tools.services``,
then a receiver and a worker in the foreground. Once the receiver answers ``/readyz`` it
prints the webhook URL to give CloudAMQP. Ctrl-C stops everything this command started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from shared.runtime import load_settings_or_exit
from shared.settings import Settings
from tools import services

READY_SECONDS = 60.0


def _say(message: str) -> None:
    print(f"[autopilot] {message}", file=sys.stderr, flush=True)


def _local_host(bind: str) -> str:
    """Where this machine reaches a receiver bound to ``bind``."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def ready(settings: Settings) -> bool:
    """The receiver answers ``GET /readyz`` with 200 (broker channel open, store reachable)."""
    url = f"http://{_url_host(_local_host(settings.receiver_host))}:{settings.receiver_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def webhook_url(settings: Settings) -> str:
    """The URL for the CloudAMQP alarm recipient, the token shown as a placeholder."""
    host = "localhost" if settings.receiver_host in {"0.0.0.0", "::", ""} else settings.receiver_host
    url = f"http://{_url_host(host)}:{settings.receiver_port}/cloudamqp/alarm"
    return url + "/<WEBHOOK_TOKEN>" if settings.webhook_token else url


def announce(settings: Settings) -> None:
    _say(f"ready: webhook URL for the CloudAMQP alarm recipient: {webhook_url(settings)}")
    if settings.webhook_token:
        # The operator has the token (environment or .env); a terminal scrollback need not.
        _say("  (<WEBHOOK_TOKEN>: the value of WEBHOOK_TOKEN in your environment or .env)")
    else:
        _say("  (WEBHOOK_TOKEN is unset: anyone who can reach the receiver can post alarms)")
    base = webhook_url(settings).split("/cloudamqp/", 1)[0]
    _say(f"  incidents: {base}/incidents, actions: {base}/actions — Ctrl-C stops everything")


def supervise(procs: dict[str, subprocess.Popen[bytes]], tick: Callable[[], None]) -> int:
    """Run until Ctrl-C / SIGTERM or until one process exits, calling ``tick`` meanwhile;
    then stop the others."""
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    status = 0
    while not stopping:
        for name, proc in procs.items():
            code = proc.poll()
            if code is not None:
                _say(f"{name} exited with status {code}; stopping")
                stopping, status = True, code or 1
        if not stopping:
            tick()
            time.sleep(0.2)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return status


class Readiness:
    """Polls ``/readyz`` about twice a second until it answers, then announces the URL once;
    says so once if it has not answered within ``READY_SECONDS``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = self.next_poll = time.monotonic()
        self.announced = self.late = False

    def __call__(self) -> None:
        now = time.monotonic()
        if self.announced or now < self.next_poll:
            return
        self.next_poll = now + 0.5
        if ready(self.settings):
            self.announced = True
            announce(self.settings)
        elif not self.late and now - self.started > READY_SECONDS:
            self.late = True
            _say(f"the receiver does not answer /readyz after {READY_SECONDS:.0f} s: see its log above")


def main() -> int:
    settings = load_settings_or_exit("autopilot")
    try:
        started = services.ensure_for_run(settings.rabbitmq_url, settings.database_url)
    except services.Missing as exc:
        _say(str(exc))
        return 1
    # The children inherit this terminal (or not), and LOG_FORMAT follows it: console on a
    # TTY, JSON otherwise, unless LOG_FORMAT says.
    procs = {name: subprocess.Popen([sys.executable, "-m", name]) for name in ("receiver", "worker")}
    _say("receiver and worker starting; waiting for the receiver's /readyz")
    status = supervise(procs, Readiness(settings))
    services.stop(started)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
