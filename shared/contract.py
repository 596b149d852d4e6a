"""The input contract: what an alarm body may be, checked by one parser on both sides.

The receiver refuses what breaks it (400, before anything is published) and the worker decodes
with the same ``parse``, so a body that got a 202 can never meet a decoder that refuses it.
Every limit is something a later stage needs:

- JSON as orjson reads it: UTF-8, no lone surrogates (the store and the log lines encode text
  as UTF-8), numbers finite (``NaN`` and ``1e400`` are not JSON the views could answer with);
- nesting at most ``MAX_DEPTH`` (orjson writes at most 254 levels, Python's ``json`` gives up
  near 980: a log line or a view must be able to carry the body back out);
- numbers within ±2^63, the range of a 64-bit integer (orjson writes no wider integers, and
  reads a wider one as a float);
- strings at most ``MAX_STRING`` characters, and the three that name an incident
  (``KEY_FIELDS``) shorter still: PostgreSQL's unique index on the grouping key holds at most
  2,704 bytes, and four UTF-8 bytes a character must fit, on SQLite and PostgreSQL alike;
- no NUL or other C0 control character except tab, line feed and carriage return, in keys or
  values: PostgreSQL's text cannot hold a NUL, and one rule for all of them keeps both stores
  (and every terminal the parking lot is read on) the same.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shared.errors import DecodeError

MAX_DEPTH = 32
MAX_STRING = 8192
# message alone, or "{alarm_type} alarm on {instance_id}": at most 2,410 UTF-8 bytes either way.
KEY_FIELDS = {"message": 600, "alarm_type": 300, "instance_id": 300}
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


class ContractError(DecodeError):
    """A body outside the contract; ``error`` is the short name a 400 answers with."""

    def __init__(self, error: str, detail: str):
        super().__init__(detail)
        self.error = error
        self.detail = detail


def _where(path: list[str]) -> str:
    return "".join(path) or "the body"


def _check_text(text: str, limit: int, path: list[str], what: str) -> None:
    if len(text) > limit:
        raise ContractError(
            "string_too_long", f"{what} at {_where(path)} has {len(text)} characters; at most {limit}"
        )
    found = _CONTROL.search(text)
    if found is not None:
        raise ContractError(
            "control_character",
            f"{what} at {_where(path)} holds the control character U+{ord(found.group()):04X}; "
            "only tab, line feed and carriage return are allowed",
        )


def _check(value: Any, depth: int, path: list[str]) -> None:
    """Recursion stays shallow: a container deeper than ``MAX_DEPTH`` is refused before its
    children are walked."""
    if isinstance(value, str):
        _check_text(value, MAX_STRING, path, "a string")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        # orjson refuses NaN and infinities itself, and reads an integer wider than 64 bits as a
        # float: one range for every number keeps the two alike.
        # A float of -2^63 may be a wider integer rounded: the bound is strict for floats.
        if not (INT_MIN <= value <= INT_MAX if isinstance(value, int) else -(2.0**63) < value < 2.0**63):
            raise ContractError("number_too_large", f"the number at {_where(path)} is outside ±2^63")
    elif isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            where = _where(path)
            raise ContractError("too_deep", f"the body nests deeper than {MAX_DEPTH} levels at {where}")
        if isinstance(value, list):
            for index, item in enumerate(value):
                _check(item, depth + 1, [*path, f"[{index}]"])
            return
        for key, item in value.items():
            _check_text(key, MAX_STRING, path, "a key")
            _check(item, depth + 1, [*path, f".{key[:40]}"])


def parse(body: bytes) -> dict[str, Any]:
    """The alarm object in ``body``; ``ContractError`` (a ``DecodeError``) when it is outside
    the contract. Never raises anything else, whatever the bytes."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ContractError("invalid_json", f"the body is not JSON: {exc}") from None
    except Exception as exc:  # orjson's own limits (depth > 1024) or anything it may raise
        detail = f"the body is not JSON that can be read: {type(exc).__name__}"
        raise ContractError("invalid_json", detail) from None
    if not isinstance(parsed, dict):
        raise ContractError(
            "not_an_object", f"the body is a JSON {type(parsed).__name__}; send one JSON object per alarm"
        )
    _check(parsed, 0, [])
    for field, limit in KEY_FIELDS.items():
        text = parsed.get(field)
        if isinstance(text, str) and len(text) > limit:
            detail = f"{field} has {len(text)} characters; at most {limit} (it names the incident)"
            raise ContractError("string_too_long", detail)
    return parsed


def readable(body: bytes) -> Any:
    """A parked body as JSON when it is JSON that can be written out again (orjson's depth,
    64-bit integers, valid UTF-8), else None: for the views of the parking lot, which show
    anything and fail on nothing (a None body is then shown as text)."""
    try:
        parsed = orjson.loads(body)
        orjson.dumps(parsed)
    except Exception:
        return None
    return parsed


def shown_text(body: bytes, limit: int = 4096) -> str:
    """Any bytes as printable text: undecodable bytes replaced, control characters escaped,
    cut at ``limit`` characters."""
    text = body.decode("utf-8", "replace")
    cut = len(text) > limit
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text[:limit])
    return text + (f"… ({len(body)} bytes in all)" if cut else "")
