"""ASGI plumbing for plain requests: the request, its body, the answer, the access log."""
from __future__ import annotations

from urllib.parse import parse_qs

from ..accesslog import log_access
from ..auth import Request
from ..endpoints.responses import Response, encode, read_limit_error
from ..errors import HubError


def asgi_headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


def route_path(scope: dict) -> str:
    """The path inside our mount point, whether or not the router already stripped it."""
    path = scope.get("path") or "/"
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def request_of(scope: dict, path: str) -> Request:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    client = scope.get("client")
    return Request(path=path, headers=asgi_headers(scope), query=query,
                   client=client[0] if client else None)


def body_reader(receive):
    """``read_body(limit)`` for the router: the whole body, HubError 413 past ``limit``."""
    async def read_body(limit: int) -> bytes:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HubError(400, "client disconnected before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise read_limit_error(limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)
    return read_body


def start_message(status: int, headers: list[tuple[str, str]]) -> dict:
    return {"type": "http.response.start", "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in headers]}


async def send_response(send, response: Response) -> None:
    status, body, headers = encode(response)
    await send(start_message(status, headers))
    await send({"type": "http.response.body", "body": body})


async def watch_disconnect(receive, transport) -> None:
    """Granian's ``send`` to a gone client does not raise: watch ``receive`` instead."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            transport.peer_gone()
            return


def logging_send(scope: dict, path: str, send):
    """Wrap ``send`` to write one access line when the response (or accept/close) starts."""
    client = (scope.get("client") or ("-",))[0]
    query = scope.get("query_string", b"").decode("latin-1")
    method = scope.get("method", "WS")

    handshake_logged = False

    async def logged(message: dict) -> None:
        nonlocal handshake_logged
        kind = message["type"]
        if kind == "http.response.start":
            log_access(client, method, path, query, message["status"], "asgi")
        elif kind in ("websocket.accept", "websocket.close") and not handshake_logged:
            handshake_logged = True
            log_access(client, "WS", path, query, 101 if kind == "websocket.accept" else 403, "asgi")
        await send(message)
    return logged
