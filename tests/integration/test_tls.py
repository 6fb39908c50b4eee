"""TLS on both ports with a self-signed certificate made by the test."""
import asyncio
import json
import ssl

import httpx

from .server import HubProcess, ws_connect, ws_messages
from .tokens import self_signed_cert


async def test_https_and_wss_on_both_ports(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    hub = HubProcess(env={"HUBBUB_TLS_CERT": str(cert), "HUBBUB_TLS_KEY": str(key)}, tls=context)
    hub.start(tmp_path)
    try:
        async with httpx.AsyncClient(verify=context, timeout=10) as client:
            assert (await client.get(hub.base + "/healthz")).status_code == 200
            for kind in ("asgi", "native"):
                async with ws_connect(hub.url(kind, "/ws?topic=tls.a", "wss"), ssl=context) as ws:
                    async with client.stream("GET", hub.url(kind, "/sse?topic=tls.a", "https")) as sse:
                        lines = sse.aiter_lines()
                        async with asyncio.timeout(5):
                            while (await anext(lines)) != "event: connected":
                                pass
                        await asyncio.sleep(0.1)
                        response = await client.post(hub.base + "/publish",
                                                     json={"topic": "tls.a", "data": kind})
                        assert response.status_code == 200
                        assert (await ws_messages(ws, 1))[0]["data"] == kind
                        async with asyncio.timeout(5):
                            async for line in lines:
                                if line.startswith("data: ") and '"topic"' in line:
                                    assert json.loads(line[6:])["data"] == kind
                                    break
        # Plain text to a TLS port is refused, not served.
        async with httpx.AsyncClient(timeout=5) as plain:
            try:
                response = await plain.get(f"http://127.0.0.1:{hub.fast_port}/sse?topic=tls.a")
                assert response.status_code >= 400
            except httpx.HTTPError:
                pass
    finally:
        hub.stop()
