"""GET /hubbub.js, /hubbub.mjs and the dev demo at / (SPEC 10): caching headers, 304, dev only."""
from __future__ import annotations

import httpx
import hubbub

from .tokens import API_KEY, SECRET


def test_client_script_is_served_with_version_and_caching(hub):
    response = httpx.get(hub.base + "/hubbub.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.headers["x-content-type-options"] == "nosniff"
    etag = response.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    first_line = response.text.splitlines()[0]
    assert f"hubbub.js {hubbub.__version__}" in first_line
    assert "__HUBBUB_VERSION__" not in response.text
    assert "var hubbub = " in response.text and "export " not in response.text

    again = httpx.get(hub.base + "/hubbub.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    weak = httpx.get(hub.base + "/hubbub.js", headers={"If-None-Match": f'"other", W/{etag}'})
    assert weak.status_code == 304
    stale = httpx.get(hub.base + "/hubbub.js", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.content == response.content

    head = httpx.head(hub.base + "/hubbub.js")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(response.content))


def test_module_is_the_same_source_with_exports(hub):
    script = httpx.get(hub.base + "/hubbub.js")
    module = httpx.get(hub.base + "/hubbub.mjs")
    assert module.status_code == 200
    assert module.headers["content-type"] == "text/javascript; charset=utf-8"
    assert module.text.startswith(script.text)
    assert "export default hubbub;" in module.text[len(script.text):]
    assert module.headers["etag"] != script.headers["etag"]


def test_wrong_method_is_405(hub):
    response = httpx.post(hub.base + "/hubbub.js", content=b"x")
    assert response.status_code == 405
    assert response.json() == {"code": 405, "reason": "POST is not allowed on /hubbub.js"}


def test_demo_page_in_dev_mode(hub):
    response = httpx.get(hub.base + "/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert '<script src="hubbub.js"></script>' in response.text


def test_demo_page_is_not_served_outside_dev(make_hub):
    hub = make_hub(env={"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_API_KEY": API_KEY}, dev=False)
    assert httpx.get(hub.base + "/").status_code == 404
    assert httpx.get(hub.base + "/hubbub.js").status_code == 200  # the client is always there
