"""``make run``: a broker if none answers (where one can be started), then a receiver and a
worker in the foreground. Ctrl-C stops everything this command started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

from shared.runtime import load_settings_or_exit


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _say(message: str) -> None:
    print(f"[autopilot] {message}", file=sys.stderr, flush=True)


def _wait_port(host: str, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return True
        time.sleep(0.5)
    return False


def ensure_broker(url: str) -> list[str] | None:
    """Start RabbitMQ when nothing answers; return the command that stops what we started."""
    parts = urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 5672
    if _port_open(host, port):
        return None
    if host not in {"localhost", "127.0.0.1", "::1"}:
        raise SystemExit(f"[autopilot] RabbitMQ at {host}:{port} does not answer")
    stop: list[str] | None = None
    if shutil.which("rabbitmq-server"):
        _say("no RabbitMQ answers; starting the local rabbitmq-server")
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        stop = ["rabbitmqctl", "stop"]
    elif shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        _say("no RabbitMQ answers; starting it with docker compose")
        subprocess.run(["docker", "compose", "up", "-d", "rabbitmq"], check=False)
        stop = ["docker", "compose", "stop", "rabbitmq"]
    else:
        raise SystemExit(
            "[autopilot] no RabbitMQ answers and none can be started here: "
            "install rabbitmq-server or Docker, or set RABBITMQ_URL"
        )
    if not _wait_port(host, port, 90):
        raise SystemExit(f"[autopilot] RabbitMQ did not come up on {host}:{port}")
    return stop


def supervise(procs: dict[str, subprocess.Popen[bytes]]) -> int:
    """Run until Ctrl-C / SIGTERM or until one process exits; then stop the others."""
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


def main() -> int:
    settings = load_settings_or_exit("autopilot")
    stop_broker = ensure_broker(settings.rabbitmq_url)
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    procs = {name: subprocess.Popen([sys.executable, "-m", name], env=env) for name in ("receiver", "worker")}
    host = "localhost" if settings.receiver_host in {"0.0.0.0", "::"} else settings.receiver_host
    url = f"http://{host}:{settings.receiver_port}/cloudamqp/alarm"
    if settings.webhook_token:
        url += "/<WEBHOOK_TOKEN>"
    _say(f"webhook URL for the CloudAMQP alarm recipient: {url}")
    _say(f"incidents: http://{host}:{settings.receiver_port}/incidents — Ctrl-C stops everything")
    status = supervise(procs)
    if stop_broker:
        _say("stopping the broker this command started")
        subprocess.run(stop_broker, check=False, capture_output=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
