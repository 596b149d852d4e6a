"""The webhook under hypothesis (issue 24): whatever bodies, content types and encodings are
posted, every answer is a 202 or a 4xx with the JSON error shape — never a 5xx — and every 202
ends recorded by the worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_receiver_inprocess import MakeReceiver, make_receiver, receiver_env
from tests.integration.test_worker_inprocess import Drain, drain

__all__ = ["drain", "make_receiver", "receiver_env"]  # fixtures shared with those modules

text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(
    ["memory", "\u0000", "\ud800", "a\u001bb", "x" * 700, "é"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=8,
)
alarms = st.fixed_dictionaries(
    {},
    optional={
        "alarm_type": st.sampled_from(["memory", "cpu"]) | values,
        "value": values,
        "instance_id": values,
        "message": values,
        "triggered_at": values,
        "resolved": values,
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["alarm", "alarm", "deep", "number", "raw", "encoded"]))
    if kind == "raw":
        return draw(st.binary(max_size=64))
    alarm: Any = draw(alarms)
    if kind == "deep":
        # Around each parser's limit: ours, orjson's writer, Python's json reader, orjson's reader.
        depth = draw(
            st.sampled_from([31, 32, 33, 254, 255, 300, 979, 1000, 1023, 1024]) | st.integers(1, 1100)
        )
        return ('{"alarm_type": "memory", "x":' + "[" * depth + "1" + "]" * depth + "}").encode()
    if kind == "number":
        digits = draw(st.sampled_from([19, 20, 309, 4300, 4301, 5000]))
        return b'{"alarm_type": "memory", "value": ' + b"9" * digits + b"}"
    # Python's json writes NaN, Infinity, wide integers and lone surrogates (escaped) as asked.
    raw = json.dumps(alarm, ensure_ascii=draw(st.booleans()), allow_nan=True)
    encoding = (
        draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"])) if kind == "encoded" else "utf-8"
    )
    return raw.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")


content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "application/json; charset=no-such",
        "application/cloudevents+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "a/b;;;=",
        None,
    ]
)
requests = st.lists(st.tuples(bodies(), content_types), min_size=1, max_size=25)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=requests)
async def test_given_any_request_then_a_202_that_is_recorded_or_a_4xx_with_the_json_shape_never_a_5xx(
    make_receiver: MakeReceiver, drain: Drain, batch: list[tuple[bytes, str | None]]
) -> None:
    receiver = await make_receiver()
    accepted = []
    for body, content_type in batch:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        async with receiver.post("/cloudamqp/alarm", data=body, headers=headers) as resp:
            status, raw = resp.status, await resp.read()
        assert status == 202 or 400 <= status < 500, (status, raw[:300], body[:200], content_type)
        answer = json.loads(raw)
        if status == 202:
            accepted.append(answer["id"])
        else:
            assert set(answer) == {"error", "detail"} and answer["detail"], answer
    await receiver.close()

    store = await drain()

    recorded = {event["event_id"] for event in await store.list_events(limit=500)}
    assert set(accepted) <= recorded
