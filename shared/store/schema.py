"""The store's schema, as the migrations that build it, in order (``Store.migrate`` runs the
ones a database has not had). A migration, once released, is never edited: a change is a new
one at the end."""

from __future__ import annotations

from shared import outbox, watch
from shared.store import checks, prices

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            event_key TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL,
            instance_id TEXT,
            alarm_type TEXT,
            incident_key TEXT,
            incident_id TEXT,
            incident_change TEXT,
            ungroupable TEXT,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX events_key ON events (event_key)",
        "CREATE INDEX events_incident ON events (incident_id)",
        """CREATE TABLE incidents (
            incident_id TEXT PRIMARY KEY,
            incident_key TEXT NOT NULL,
            title TEXT NOT NULL,
            status TEXT NOT NULL,
            instance_id TEXT,
            alarm_type TEXT,
            first_seen DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            event_count INTEGER NOT NULL,
            last_value TEXT,
            resolved_at DOUBLE PRECISION
        )""",
        # At most one open incident per key: what makes concurrent grouping safe.
        "CREATE UNIQUE INDEX incidents_open_key ON incidents (incident_key) WHERE status = 'open'",
        "CREATE INDEX incidents_seen ON incidents (last_seen)",
        """CREATE TABLE actions (
            action_id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            event_key TEXT NOT NULL,
            incident_id TEXT,
            instance_id TEXT,
            alarm_type TEXT,
            status TEXT NOT NULL,
            reason TEXT,
            detail TEXT,
            plan TEXT,
            attempts INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX actions_key ON actions (event_key, status)",
        "CREATE INDEX events_recorded ON events (recorded_at)",
        "CREATE INDEX actions_created ON actions (created_at)",
        """CREATE TABLE claims (
            scope TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL,
            status TEXT NOT NULL,
            owner TEXT NOT NULL,
            claimed_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION NOT NULL,
            cooldown_until DOUBLE PRECISION NOT NULL
        )""",
    ],
    [
        # Nothing looks events up by content (duplicates are found through actions): one
        # index less to maintain on every alarm.
        "DROP INDEX IF EXISTS events_key",
    ],
    [
        # The operator's controls: pauses (maintenance windows), approvals, and the audit trail.
        """CREATE TABLE pauses (
            scope TEXT PRIMARY KEY,
            until_at DOUBLE PRECISION NOT NULL,
            operator TEXT NOT NULL,
            reason TEXT,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE approvals (
            action_id TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            owner TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            plan TEXT NOT NULL,
            reason TEXT NOT NULL,
            rule TEXT NOT NULL,
            cooldown_seconds DOUBLE PRECISION NOT NULL,
            requested_at DOUBLE PRECISION NOT NULL,
            deadline DOUBLE PRECISION NOT NULL,
            decided_by TEXT,
            decided_at DOUBLE PRECISION,
            decision_reason TEXT
        )""",
        # Append-only: rows are inserted (with ids that make a repeated write a no-op), never
        # updated or deleted, and nothing in the API can change them.
        """CREATE TABLE audit (
            audit_id TEXT PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            act TEXT NOT NULL,
            target TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_at ON audit (at)",
    ],
    # Notifications (issue #14): the outbox, delivery records, disabled endpoints, and the
    # actions' from_plan column. The DDL lives with its queries in shared/outbox.py.
    outbox.MIGRATION,
    # Looking at the broker (issue #17): verification, watchdog, samples, advice (shared/watch.py).
    watch.MIGRATION,
    # CloudAMQP's asynchronous plan change (issue #23): the reason's name, and how long the
    # reconfiguration took once CloudAMQP said it was done.
    [
        "UPDATE actions SET reason = 'reconfiguring' WHERE reason = 'awaiting_confirmation'",
        "DROP INDEX actions_awaiting",
        "CREATE INDEX actions_reconfiguring ON actions (updated_at) WHERE reason = 'reconfiguring'",
        "CREATE INDEX actions_reconfiguring_instance ON actions (instance_id) WHERE reason = 'reconfiguring'",
        "ALTER TABLE actions ADD COLUMN reconfigure_seconds DOUBLE PRECISION",
    ],
    # Console sessions ended by a logout (issue 24): every copy of such a cookie is refused
    # until it would have expired anyway.
    [
        """CREATE TABLE console_revoked (
            session_id TEXT PRIMARY KEY,
            until_at DOUBLE PRECISION NOT NULL
        )""",
    ],
    # Disk alarms get disk (issue 27): an action's remedy where it is not an upgrade, a disk
    # resize's sizes, and each instance's disk history (shared/store/disk.py).
    [
        "ALTER TABLE actions ADD COLUMN kind TEXT",
        "ALTER TABLE actions ADD COLUMN extra_disk_from INTEGER",
        "ALTER TABLE actions ADD COLUMN extra_disk_to INTEGER",
        """CREATE TABLE disk_history (
            mark_id TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            source TEXT NOT NULL,
            extra_disk_from INTEGER,
            extra_disk_to INTEGER NOT NULL,
            action_id TEXT
        )""",
        "CREATE INDEX disk_history_instance ON disk_history (instance_id, at)",
    ],
    # Flap detection (issue 28, shared/flapping.py): an incident's flap marking and pending
    # resolve, and each incident key's latest incident and recent transitions.
    [
        "ALTER TABLE incidents ADD COLUMN flap_episodes INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE incidents ADD COLUMN flapping_since DOUBLE PRECISION",
        "ALTER TABLE incidents ADD COLUMN flap_transitions INTEGER",
        "ALTER TABLE incidents ADD COLUMN flap_window DOUBLE PRECISION",
        "ALTER TABLE incidents ADD COLUMN flap_quiet DOUBLE PRECISION",
        "ALTER TABLE incidents ADD COLUMN resolves_at DOUBLE PRECISION",
        # The quiet-resolve sweep's look: the pending resolves that fell due.
        "CREATE INDEX incidents_resolves ON incidents (resolves_at) WHERE resolves_at IS NOT NULL",
        """CREATE TABLE incident_keys (
            incident_key TEXT PRIMARY KEY,
            incident_id TEXT NOT NULL,
            transitions TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
    ],
    # Prices and set-up checks (issue 26): CloudAMQP's plan catalogue and each instance's plan
    # as last read, the actions' monthly prices, and the checks' results
    # (shared/store/prices.py, shared/store/checks.py).
    prices.MIGRATION + checks.MIGRATION,
    # Retention (issue 31, shared/store/retention.py): an incident keeps copies of its first
    # and last event once they are pruned; an incident's events and actions are read a page at
    # a time, newest first; what keeps an old incident (an unfinished action of it) and each
    # instance's latest upgrade in the audit trail (kept whatever its age) are found by index.
    # The partial index's statuses are shared.retention.UNFINISHED (a test holds them equal).
    # Each kind's time index carries its id after the time: pruning's windows and the lists'
    # pages (time, then id, newest first) walk it in its own order, ties included, sorting
    # nothing, on PostgreSQL whatever its statistics.
    [
        "ALTER TABLE incidents ADD COLUMN first_event TEXT",
        "ALTER TABLE incidents ADD COLUMN last_event TEXT",
        "DROP INDEX events_recorded",
        "CREATE INDEX events_recorded ON events (recorded_at, event_id)",
        "DROP INDEX notifications_created",
        "CREATE INDEX notifications_created ON notifications (created_at, notification_id)",
        "DROP INDEX incidents_seen",
        "CREATE INDEX incidents_seen ON incidents (last_seen, incident_id)",
        "DROP INDEX actions_created",
        "CREATE INDEX actions_created ON actions (created_at, action_id)",
        "DROP INDEX audit_at",
        "CREATE INDEX audit_at ON audit (at, audit_id)",
        "CREATE INDEX events_incident_recorded ON events (incident_id, recorded_at)",
        "DROP INDEX events_incident",
        "CREATE INDEX actions_incident ON actions (incident_id, created_at)",
        """CREATE INDEX actions_unfinished ON actions (incident_id)
           WHERE status IN ('approved', 'awaiting_approval', 'in_progress', 'retrying')""",
        "CREATE INDEX audit_upgrades ON audit (target, at) WHERE act = 'upgrade'",
    ],
    # A change asked of CloudAMQP is written down before it is asked (``asked_at``, with the
    # plan or disk asked for): a call whose answer never came, or a worker stopped while it
    # was under way, is followed up by reading the instance, never by asking again blindly.
    # The instances with such a change, found by index while the batches' reads look for them
    # (``shared.store.actions.ASKING``, word for word).
    [
        "ALTER TABLE actions ADD COLUMN asked_at DOUBLE PRECISION",
        """CREATE INDEX actions_asking ON actions (instance_id)
           WHERE asked_at IS NOT NULL AND status IN ('in_progress', 'retrying')""",
    ],
    # Identical content — a reminder CloudAMQP re-sends every few minutes while an alarm stays
    # unresolved — is told apart by the lowest and highest event id decided on it, read from an
    # index of the decided rows alone (``shared.store.actions.DECIDED_ROW``, word for word):
    # two lookups for a content however many reminders it has had. The index of every row's
    # key and status it replaces had each batch's read fetch every one of them, a little more
    # with each reminder.
    [
        """CREATE INDEX actions_decided ON actions (event_key, event_id)
           WHERE status IN ('dry_run', 'skipped', 'succeeded')
           AND NOT (status = 'skipped' AND COALESCE(reason, '')
           IN ('paused', 'awaiting_approval', 'condition_cleared', 'reconfiguring'))""",
        "DROP INDEX actions_key",
    ],
]
