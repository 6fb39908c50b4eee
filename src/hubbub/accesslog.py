"""Access log lines (``HUBBUB_ACCESS_LOG=1``), with query tokens redacted.

EventSource clients must put their JWT in the query (``token=``), and the
dashboard its API key (``key=``); such a line must never carry them.
Granian's own access log is left off for that reason (it would print the raw
query); these lines replace it on both ports.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger("hubbub.access")

_SECRET_PARAM = re.compile(r"(^|&)(token|access_token|api_key|key)=[^&]*", re.IGNORECASE)


def redact_query(query: str) -> str:
    return _SECRET_PARAM.sub(r"\1\2=[REDACTED]", query)


def log_access(client: str | None, method: str, path: str, query: str, status: int | str,
               port_kind: str) -> None:
    target = path + ("?" + redact_query(query) if query else "")
    log.info('%s "%s %s" %s %s', client or "-", method, target, status, port_kind)
