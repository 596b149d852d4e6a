"""The operator's write endpoints: pause and resume (one instance or all), approve and deny.

Every one needs ``OPERATOR_TOKEN`` as ``Authorization: Bearer …`` — never the webhook token,
which sits in a URL configured at CloudAMQP. Unset, they answer 403 and change nothing; a
missing or wrong token answers 401. Who acted is the ``X-Operator`` header or the body's
``operator`` (else ``token``); what and why go into the audit trail with it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from receiver.keys import OPERATIONS, SETTINGS
from receiver.views import action_json, bearer, json_error, json_response, pause_json, same_secret
from shared.controls import ControlError, clean_text, operator_name, pause_until
from shared.db import Row

# What each refusal of the controls answers with.
_STATUS: dict[str, type[web.HTTPException]] = {
    "not_found": web.HTTPNotFound,
    "unknown_instance": web.HTTPNotFound,
    "bad_pause": web.HTTPBadRequest,
    "bad_request": web.HTTPBadRequest,
}


def _refused(exc: ControlError) -> web.HTTPException:
    return json_error(_STATUS.get(exc.error, web.HTTPConflict), exc.error, exc.detail)


def check_operator(request: web.Request) -> None:
    """403 while OPERATOR_TOKEN is unset; 401 unless the request carries it."""
    expected = request.app[SETTINGS].operator_token
    if not expected:
        raise json_error(
            web.HTTPForbidden,
            "operator_token_unset",
            "write endpoints are disabled: set OPERATOR_TOKEN on the receiver to enable them",
        )
    if not same_secret(bearer(request), expected):
        raise json_error(
            web.HTTPUnauthorized,
            "unauthorized",
            "missing or wrong operator token: send OPERATOR_TOKEN as 'Authorization: Bearer …' "
            "(the webhook token does not allow writes)",
        )


async def _body(request: web.Request) -> dict[str, Any]:
    """The optional JSON object a write may carry."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise json_error(web.HTTPBadRequest, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise json_error(web.HTTPBadRequest, "not_an_object", "send a JSON object (or no body)")
    return parsed


async def _authorised(request: web.Request) -> tuple[dict[str, Any], str, str | None]:
    """Check the operator token, then read the body: (body, who, why)."""
    check_operator(request)
    body = await _body(request)
    try:
        who = operator_name(request.headers.get("X-Operator") or body.get("operator"))
        why = clean_text(body.get("reason"), "reason")
    except ControlError as exc:
        raise _refused(exc) from None
    return body, who, why


async def pause(request: web.Request) -> web.Response:
    """``POST /instances/{instance}/pause`` and ``POST /pause`` (every instance)."""
    body, who, why = await _authorised(request)
    now = time.time()
    try:
        until = pause_until(body, now)
        done = await request.app[OPERATIONS].pause(
            request.match_info.get("instance"), until, operator=who, reason=why, now=now
        )
    except ControlError as exc:
        raise _refused(exc) from None
    return json_response({"pause": pause_json(done)})


async def resume(request: web.Request) -> web.Response:
    """``DELETE /instances/{instance}/pause`` and ``DELETE /pause``: idempotent."""
    _, who, why = await _authorised(request)
    try:
        ended = await request.app[OPERATIONS].resume(
            request.match_info.get("instance"), operator=who, reason=why, now=time.time()
        )
    except ControlError as exc:
        raise _refused(exc) from None
    return json_response({"resumed": ended is not None, "pause": pause_json(ended) if ended else None})


async def approve(request: web.Request) -> web.Response:
    """``POST /actions/{action_id}/approve``: one of any number of concurrent answers wins."""
    return await _answer(request, request.app[OPERATIONS].approve)


async def deny(request: web.Request) -> web.Response:
    """``POST /actions/{action_id}/deny``: nothing is called, the claim is released."""
    return await _answer(request, request.app[OPERATIONS].deny)


async def _answer(request: web.Request, act: Callable[..., Awaitable[Row]]) -> web.Response:
    _, who, why = await _authorised(request)
    try:
        row = await act(request.match_info["action_id"], operator=who, reason=why, now=time.time())
    except ControlError as exc:
        raise _refused(exc) from None
    return json_response({"action": action_json(row)})
