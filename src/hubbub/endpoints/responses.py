"""What every endpoint answers with, and the one place answers are shaped.

An endpoint returns a ``Response``: ``(status, payload, headers)``. The
payload is either a JSON-able value (sent as ``application/json``) or
``bytes`` that the headers describe (a page, a script, the metrics text).
Transports turn it into bytes with ``encode`` (ASGI ``send`` messages or a
raw HTTP/1.1 answer), so both ports answer byte for byte alike.
"""
from __future__ import annotations

from typing import Any

import orjson

from ..errors import HubError

Headers = list[tuple[str, str]]
Response = tuple[int, Any, Headers]

JSON_TYPE = "application/json"
NO_BODY = (204, 304)  # statuses that never carry a body, nor a length for one


def error_body(code: int, reason: str) -> dict:
    return {"code": code, "reason": reason}


def error_response(error: HubError) -> Response:
    """A refusal: its status, ``{code, reason}``, and a Bearer challenge for a 401."""
    headers = [("www-authenticate", "Bearer")] if error.code == 401 else []
    return error.code, error_body(error.code, error.reason), headers


def not_allowed(method: str, path: str, allow: str) -> Response:
    return 405, error_body(405, f"{method} is not allowed on {path}"), [("allow", allow)]


def not_found(path: str, where: str = "") -> Response:
    return 404, error_body(404, f"no such endpoint {path}{where}"), []


def encode(response: Response) -> tuple[int, bytes, Headers]:
    """``(status, body, headers)`` ready to send: JSON payloads encoded with
    their content type, and a ``content-length`` on every answer."""
    status, payload, headers = response
    if isinstance(payload, bytes):
        body = payload
        headers = list(headers)
    else:
        body = orjson.dumps(payload)
        headers = [("content-type", JSON_TYPE), *headers]
    if status not in NO_BODY and not any(name == "content-length" for name, _ in headers):
        headers.append(("content-length", str(len(body))))
    return status, body, headers


def json_body(body: bytes) -> Any:
    """A request body decoded as JSON; HubError 400 saying where it is not."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise HubError(400, f"body is not valid JSON: {error}") from None


def read_limit_error(limit: int) -> HubError:
    """A request body over ``limit`` bytes (413), said the same way everywhere."""
    return HubError(413, f"body over the {limit}-byte limit")
