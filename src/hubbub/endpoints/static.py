"""The hub's static files: the browser client and the ``--dev`` demo page (SPEC 10).

``static_response(method, path, headers, dev)`` maps a request to a
``Response`` or None when the path is not a static file.

One source, two URLs: ``/hubbub.js`` is a classic script (it defines the
global ``hubbub``) and ``/hubbub.mjs`` is the same text followed by
``export`` lines, for ``import hubbub from ".../hubbub.mjs"``. A single file
cannot be both (an ``export`` statement is a syntax error in a classic
script), and this keeps the client free of any build step.

Files are read once, at first use; the ETag is a hash of the served bytes, so
a new hub version (or an edited file) is a new ETag.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Mapping

from ..version import __version__
from .responses import Response, not_allowed

VERSION_MARK = "__HUBBUB_VERSION__"
MODULE_FOOTER = "\nexport default hubbub;\nexport const connect = hubbub.connect;\n"

JS_TYPE = "text/javascript; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
# Browsers reuse the client for a few minutes, then revalidate with the ETag
# (a cheap 304), so a hub upgrade reaches pages within minutes.
JS_CACHE = "public, max-age=300"
# The demo page is tiny and changes with the hub: always revalidate.
HTML_CACHE = "no-cache"


class StaticFile:
    def __init__(self, body: bytes, content_type: str, cache_control: str) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self.headers = [("content-type", content_type), ("cache-control", cache_control),
                        ("etag", self.etag), ("x-content-type-options", "nosniff")]


def _read(name: str) -> str:
    return resources.files("hubbub").joinpath("static", name).read_text(encoding="utf-8")


@functools.cache
def client_script() -> str:
    """The browser client's source with the package version filled in."""
    return _read("hubbub.js").replace(VERSION_MARK, __version__)


@functools.cache
def _files() -> dict[str, StaticFile]:
    script = client_script()
    return {
        "/hubbub.js": StaticFile(script.encode(), JS_TYPE, JS_CACHE),
        "/hubbub.mjs": StaticFile((script + MODULE_FOOTER).encode(), JS_TYPE, JS_CACHE),
        "/": StaticFile(_read("demo.html").replace(VERSION_MARK, __version__).encode(),
                        HTML_TYPE, HTML_CACHE),
    }


DEV_ONLY = {"/"}


def static_response(method: str, path: str, headers: Mapping[str, str], dev: bool) -> Response | None:
    """The response for a static file, or None when ``path`` is not one (the caller 404s).

    ``headers`` are the request's, lower-case names. ``/`` exists only in dev mode.
    """
    if path in DEV_ONLY and not dev:
        return None
    file = _files().get(path)
    if file is None:
        return None
    if method not in ("GET", "HEAD"):
        return not_allowed(method, path, "GET, HEAD")
    if _matches(headers.get("if-none-match"), file.etag):
        return 304, b"", [h for h in file.headers if h[0] != "content-type"]
    return 200, (b"" if method == "HEAD" else file.body), file.headers + [
        ("content-length", str(len(file.body)))]


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # A list of tags, possibly weak (W/"..."): weak comparison, as RFC 9110 asks for GET.
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))
