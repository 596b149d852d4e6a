"""Where an alarm's fields are read from (``shared.fields``): our names, or the names and nested
paths a policy file's ``[fields]`` table maps onto them; and what ``--last-alarms`` says of a
payload: the fields read, the keys nothing read, a hint when the type could not be read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.fields import NO_FIELDS, FieldMap, fields_read, parse_path, received_view
from shared.incidents import incident_key

OTHER_SHAPE = {
    "type": "memory",
    "value": 91,
    "metadata": {"instance": "3555175d", "region": "eu"},
    "severity": "critical",
    "cluster": "prod",
}
MAP = FieldMap((("alarm_type", ("type",)), ("instance_id", ("metadata", "instance"))))


def alarm(body: dict[str, Any], fields: FieldMap = NO_FIELDS) -> Alarm:
    return Alarm("e1", 0.0, body, event_key(body), fields=fields)


def test_without_a_map_an_alarm_of_another_shape_has_no_type_and_no_instance() -> None:
    a = alarm(OTHER_SHAPE)
    assert (a.alarm_type, a.instance_id, a.value) == (None, None, 91.0)
    assert incident_key(a, a.instance_id) is None  # nothing to group by: recorded as ungroupable


def test_with_the_map_the_same_payload_reads_as_ours() -> None:
    a = alarm(OTHER_SHAPE, MAP)
    assert (a.alarm_type, a.instance_id, a.value) == ("memory", "3555175d", 91.0)
    assert incident_key(a, a.instance_id) == "memory alarm on 3555175d"


def test_our_own_names_still_count_under_a_map_and_the_map_comes_first() -> None:
    ours = {"alarm_type": "disk", "instance_id": "i-1", "value": 95}  # the watchdog's own alarms
    assert (alarm(ours, MAP).alarm_type, alarm(ours, MAP).instance_id) == ("disk", "i-1")
    both = {**OTHER_SHAPE, "alarm_type": "cpu"}
    assert alarm(both, MAP).alarm_type == "memory"


@pytest.mark.parametrize(
    ("text", "path"),
    [("type", ("type",)), ("metadata.instance", ("metadata", "instance")), ("a.b.c", ("a", "b", "c"))],
)
def test_paths(text: str, path: tuple[str, ...]) -> None:
    assert parse_path(text) == path


@pytest.mark.parametrize("text", ["", "metadata.", ".type", "a..b", " type", "type "])
def test_malformed_paths_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="dotted path"):
        parse_path(text)


def test_fields_read_says_where_each_field_came_from_and_what_nothing_read() -> None:
    bare = fields_read(OTHER_SHAPE)
    assert bare.values["alarm_type"] is None and bare.unrecognised == ["cluster", "severity", "type"]
    mapped = fields_read(OTHER_SHAPE, MAP)
    assert mapped.found_at == {
        "alarm_type": "type", "value": "value", "instance_id": "metadata.instance", "message": None,
        "resolved": None, "triggered_at": None,
    }  # fmt: skip
    assert mapped.unrecognised == ["cluster", "severity"]


def test_a_received_alarm_whose_type_cannot_be_read_comes_with_a_hint_and_stays_escaped_text() -> None:
    body = {**OTHER_SHAPE, "note": "<script>alert(1)</script>"}
    row = {
        "event_id": "e1",
        "received_at": 1.0,
        "body": json.dumps(body),
        "status": "skipped",
        "reason": "no_rule",
    }
    view = received_view(row)
    assert view["hint"] is not None and "[fields]" in view["hint"] and "type" in view["hint"]
    assert view["unrecognised"] == ["cluster", "note", "severity", "type"]
    assert "<script>" in view["body_text"]  # text: the console's autoescape shows it, never runs it
    assert received_view(row, MAP)["hint"] is None
    assert received_view(row, MAP)["read"]["instance_id"] == {
        "value": "3555175d",
        "from": "metadata.instance",
    }
