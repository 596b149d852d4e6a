"""``autopilot`` (``python -m worker.cli``): the operator's command line.

    autopilot pause INSTANCE|--all (--for 2h | --until 2026-02-20T10:00:00Z) [--reason …]
    autopilot resume INSTANCE|--all
    autopilot approve ACTION_ID [--reason …]      autopilot deny ACTION_ID [--reason …]
    autopilot pauses                              autopilot audit [--limit N]
    autopilot parked list|show|replay|purge …     (the parking lot: ``autopilot-dlq``)
    autopilot check [--send-test]                 the set-up, checked before the first alarm
    autopilot check --last-alarms [N]             the last alarms received, and what was read
    autopilot vacuum                              (SQLite: let pruning shrink an older file)

It works on the deployment its environment names (``DATABASE_URL``, ``RABBITMQ_URL``, as the
worker reads them), through the same operations as the receiver's write endpoints, and
records each act in the audit trail as ``cli:<user>`` unless ``--operator`` names someone.
``--json`` prints what happened as JSON.

``check`` reads the configuration exactly as the worker does and checks each piece of the
chain (``worker.check``): one ``ok`` / ``warn`` / ``fail`` line each, with the fix; it exits 0
when nothing fails, 1 otherwise (a configuration that does not even load is a ``fail`` too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from shared import brokers, dlq, envelope, topology
from shared.alarm import iso
from shared.checks import Report, fail
from shared.controls import ControlError, clean_text, operator_name, pause_until
from shared.db import SqliteDatabase
from shared.envelope import ApprovalCheck
from shared.errors import StoreError
from shared.fields import received_view
from shared.logs import configure_logging
from shared.operations import Operations
from shared.policy import Policy
from shared.policy_file import PolicyError, load_policy
from shared.runtime import load_settings_or_exit
from shared.settings import ConfigError, Settings
from shared.store import Store
from shared.store.checks import last_alarms
from worker.check import Checker, keep, render_json

PROGRAM = "autopilot"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (like 90s, 30m, 2h, 1d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    json_default = False if default is None else default
    parser.add_argument("--json", action="store_true", default=json_default, help="print the result as JSON")
    parser.add_argument(
        "--operator", default=default, help="who acts, for the audit trail (default: cli:<your user>)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Pause, approve and inspect the autopilot.")
    _common(parser, None)
    # The same options after the subcommand (autopilot pause X --for 2h --json): they must not
    # reset what was given before it, so their defaults are "not given".
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, verb in (("pause", "pause upgrades of"), ("resume", "resume upgrades of")):
        cmd = sub.add_parser(name, help=f"{verb} an instance (or --all)", parents=[common])
        target = cmd.add_mutually_exclusive_group(required=True)
        target.add_argument("instance", nargs="?", help="the instance id")
        target.add_argument("--all", action="store_true", help="every instance")
        cmd.add_argument("--reason", help="why (kept in the audit trail)")
        if name == "pause":
            window = cmd.add_mutually_exclusive_group(required=True)
            window.add_argument(
                "--for", dest="duration", type=parse_duration, help="how long: 90s, 30m, 2h, 1d"
            )
            window.add_argument("--until", help="when it ends (ISO 8601)")
    for name in ("approve", "deny"):
        cmd = sub.add_parser(name, help=f"{name} an upgrade that awaits approval", parents=[common])
        cmd.add_argument("action_id")
        cmd.add_argument("--reason", help="why (kept in the audit trail)")
    sub.add_parser("pauses", help="the pauses still running", parents=[common])
    audit = sub.add_parser("audit", help="the audit trail, newest first", parents=[common])
    audit.add_argument("--limit", type=int, default=20)
    check = sub.add_parser(
        "check", help="check the set-up: key, instances, plans, management, notifications, broker, store"
    )
    check.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON"
    )
    check.add_argument(
        "--send-test",
        action="store_true",
        help="send each notification endpoint one marked test notification",
    )
    check.add_argument(
        "--last-alarms",
        nargs="?",
        type=int,
        const=10,
        default=None,
        metavar="N",
        help="show the last N alarms received (default 10): the fields read and the keys not recognised",
    )
    parked = sub.add_parser(
        "parked", help="the parking lot (list, show, replay, purge; see autopilot parked -h)"
    )
    parked.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser(
        "vacuum",
        help="SQLite: rewrite a file made before incremental vacuum, once, so that pruning shrinks it",
        parents=[common],
    )
    return parser


async def _nudge(settings: Settings, check: ApprovalCheck) -> None:
    """Tell the workers at once that an approval came (they also look by themselves)."""
    connection = await brokers.connect(settings.rabbitmq_url, node_timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.default_exchange.publish(
            envelope.check_message(check), routing_key=topology.WORK_QUEUE, mandatory=True, timeout=10
        )


async def _act(ops: Operations, args: argparse.Namespace, who: str, now: float) -> dict[str, Any]:
    instance = None if getattr(args, "all", False) else getattr(args, "instance", None)
    why = clean_text(getattr(args, "reason", None), "reason")
    if args.command == "pause":
        body = {"duration": args.duration} if args.duration is not None else {"until": args.until}
        pause = await ops.pause(instance, pause_until(body, now), operator=who, reason=why, now=now)
        return {"paused": pause.scope, "until": iso(pause.until), "operator": who, "reason": why}
    if args.command == "resume":
        ended = await ops.resume(instance, operator=who, reason=why, now=now)
        return {"resumed": instance or "*", "was_paused": ended is not None}
    answer = ops.approve if args.command == "approve" else ops.deny
    row = await answer(args.action_id, operator=who, reason=why, now=now)
    return {
        "action": row["action_id"],
        "status": row["status"],
        "instance": row["instance_id"],
        "plan": row["plan"],
    }


async def _read(store: Store, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.command == "pauses":
        pauses = await store.list_pauses(time.time())
        return [
            {"scope": p.scope, "until": iso(p.until), "operator": p.operator, "reason": p.reason}
            for p in pauses
        ]
    rows = await store.list_audit(limit=max(1, min(args.limit, 500)))
    return [
        {
            "at": iso(r["at"]),
            "actor": r["actor"],
            "act": r["act"],
            "target": r["target"],
            "detail": json.loads(r["detail"]) if r["detail"] else None,
        }
        for r in rows
    ]


def _show(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif isinstance(result, list):
        for line in result:
            print("  ".join(f"{k}={v}" for k, v in line.items() if v is not None))
        if not result:
            print("(none)")
    else:
        print(", ".join(f"{k}: {v}" for k, v in result.items() if v is not None))


async def _vacuum(store: Store) -> dict[str, Any]:
    """An SQLite file created before pruning keeps the pages pruning frees (and reuses them);
    rewritten once with incremental vacuum, the workers hand them back from then on. The
    rewrite holds the write lock while it copies the file: alarms wait meanwhile."""
    db = store.db
    if not isinstance(db, SqliteDatabase):
        detail = "autovacuum makes the space of pruned rows reusable: nothing to do"
        return {"store": "postgresql", "detail": detail}
    before = await db.file_facts()
    if before.incremental:
        return {"store": "sqlite", "detail": "already incremental; pruning shrinks it", "bytes": before.bytes}
    await db.rebuild()
    after = await db.file_facts()
    return {
        "store": "sqlite",
        "detail": "rewritten with incremental vacuum" if after.incremental else "could not switch",
        "bytes_before": before.bytes,
        "bytes": after.bytes,
    }


async def run(settings: Settings, args: argparse.Namespace) -> int:
    store = await Store.open(settings.database_url)
    try:
        if args.command == "vacuum":
            _show(await _vacuum(store), args.json)
            return EXIT_OK
        if args.command in {"pauses", "audit"}:
            _show(await _read(store, args), args.json)
            return EXIT_OK
        ops = Operations(store, settings, lambda check: _nudge(settings, check))
        who = operator_name(args.operator or f"cli:{getpass.getuser()}")
        _show(await _act(ops, args, who, time.time()), args.json)
        return EXIT_OK
    finally:
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m worker.cli`` and the ``autopilot`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "parked":
        rest = list(args.rest)
        return dlq.main([*rest, "--json"] if args.json and rest[:1] == ["list"] else rest)
    if args.command == "check":
        return run_check(args)
    settings = load_settings_or_exit(PROGRAM)
    configure_logging(settings.log_format, "warning")  # the command says what it did itself
    try:
        return asyncio.run(run(settings, args))
    except ControlError as exc:
        print(f"{PROGRAM}: {exc.error}: {exc.detail}", file=sys.stderr)
    except StoreError as exc:
        print(f"{PROGRAM}: state store error: {exc}", file=sys.stderr)
    return EXIT_FAILED


def run_check(args: argparse.Namespace) -> int:
    """``autopilot check``: its report on stdout, exit 0 when nothing fails, 1 otherwise."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        report = Report((fail("configuration", str(exc), "fix the variable named"),), time.time(), _who())
        print(render_json(report) if args.json else report.render())
        return report.exit_code
    configure_logging(settings.log_format, "error")  # the report says it all
    if args.last_alarms is not None:
        return asyncio.run(_last_alarms(settings, max(1, min(args.last_alarms, 500)), args.json))
    report = asyncio.run(_check(settings, args.send_test))
    print(render_json(report) if args.json else report.render())
    return report.exit_code


def _who() -> str:
    return f"cli:{getpass.getuser()}"


async def _check(settings: Settings, send_test: bool) -> Report:
    async with aiohttp.ClientSession() as session:
        checker = Checker(settings, session, send_test=send_test, source=_who())
        try:
            report = await checker.run()
            if checker.store is not None:
                with contextlib.suppress(StoreError, OSError):
                    await keep(checker.store, report)  # for the console's overview
            return report
        finally:
            await checker.close()


async def _last_alarms(settings: Settings, limit: int, as_json: bool) -> int:
    try:
        policy = load_policy(settings.policy_file) if settings.policy_file else Policy.default(settings)
    except PolicyError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        store = await Store.open(settings.database_url)
    except StoreError as exc:
        print(f"{PROGRAM}: state store error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        rows = await last_alarms(store.db, limit)
    finally:
        await store.close()
    views = [received_view(row, policy.fields) for row in rows]
    if as_json:
        for view in views:
            view["received_at"] = iso(view["received_at"])
        print(json.dumps(views, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(_alarms_text(views) if views else "(no alarm received yet)")
    return EXIT_OK


def _alarms_text(views: list[dict[str, Any]]) -> str:
    out = []
    for view in views:
        outcome = " ".join(str(v) for v in (view["status"], view["reason"]) if v) or "not decided"
        out.append(f"{iso(view['received_at'])}  {view['event_id']}  {outcome}")
        if view["detail"]:
            out.append(f"  why: {view['detail']}")
        read = "  ".join(
            f"{name}={json.dumps(field['value'], ensure_ascii=False)}"
            + (f" (from {field['from']})" if field["from"] not in (None, name) else "")
            for name, field in view["read"].items()
            if field["value"] is not None
        )
        out.append(f"  read: {read or 'nothing'}")
        out.append(f"  not recognised: {', '.join(view['unrecognised']) or 'none'}")
        if view["hint"]:
            out.append(f"  hint: {view['hint']}")
        out.append(f"  payload: {json.dumps(view['body'], ensure_ascii=False, sort_keys=True)}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
