"""``POST /publish`` (SPEC 3): one publication or an array, with Idempotency-Key."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..backplane.idempotency import IdempotencyGuard
from ..errors import HubError
from .responses import Response, error_response, json_body

if TYPE_CHECKING:
    from ..auth import Authenticator, Request
    from ..core.hub import HubCore

MAX_BODY = 1 << 20
IDEMPOTENCY_TTL = 300.0
PUBLICATION_FIELDS = {"topic", "data", "event", "priority", "key", "tags", "ephemeral"}


class PublishEndpoint:
    """``POST /publish``: one publication or an array; Idempotency-Key replays.

    Idempotency keys live in the backplane (in the process with the memory
    broker, in Redis across the fleet): the key is reserved before anything
    is published, so the same key sent to two nodes at once publishes once.

    Every request is answered within HUBBUB_BACKPLANE_TIMEOUT of its start,
    claim and publish together; a 503 means nothing of it was published,
    ever (see hubbub.backplane, "Deadlines"), so a retry is safe.
    """

    def __init__(self, core: "HubCore", auth: "Authenticator") -> None:
        self.core = core
        self.auth = auth
        self.timeout = core.config.backplane_timeout
        self.idempotency = IdempotencyGuard(core.broker, IDEMPOTENCY_TTL, self.timeout)

    async def __call__(self, request: "Request", body: bytes) -> Response:
        deadline = time.monotonic() + self.timeout
        reservation = None
        try:
            self.auth.check_api_key(request)
            prepared = self._prepare(body)  # a bad request is refused before the key is claimed
            key = request.header("idempotency-key")
            if key is not None:
                reservation, remembered = await self.idempotency.claim(key, deadline)
                if remembered is not None:
                    return 200, {"ids": remembered}, [("idempotent-replayed", "true")]
            # All validated first: a batch is published whole or not at all (one
            # atomic step), its ids stored under the key in that same step.
            ids = await self.core.submit_all(prepared, deadline, reservation)
        except HubError as error:
            if reservation is not None:
                self.idempotency.release(reservation)  # nothing was published: a retry may
            return error_response(error)
        return 200, {"ids": ids}, []

    def _prepare(self, body: bytes) -> list:
        payload = json_body(body)
        batch = isinstance(payload, list)
        items = payload if batch else [payload]
        if not items:
            raise HubError(400, "empty batch")
        prepared = []
        for index, item in enumerate(items):
            where = f"publication {index}: " if batch else ""
            if not isinstance(item, dict):
                raise HubError(400, f"{where}must be a JSON object")
            unknown = item.keys() - PUBLICATION_FIELDS
            if unknown:
                raise HubError(400, f"{where}unknown field(s) {sorted(unknown)}")
            if "topic" not in item or "data" not in item:
                raise HubError(400, f"{where}needs 'topic' and 'data'")
            try:
                prepared.append(self.core.prepare(**item))
            except HubError as error:
                raise HubError(error.code, where + error.reason) from None
        return prepared
