"""Backpressure (SPEC 9) through the real server: a stalled client never slows
the others, loses only what its own bounds drop (and is told), and priority,
conflation and the disconnect policy are visible on the wire."""
import asyncio
import json
import socket
import uuid

import httpx
import pytest

from .server import ws_connect

PAYLOAD = "x" * 2000
SLOW_ENV = {"HUBBUB_QUEUE_MAX_MESSAGES": "64", "HUBBUB_HEARTBEAT": "30"}


def stalled_socket(port: int, request: bytes) -> socket.socket:
    """A client that sends its request and then never reads (tiny receive window)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


def ws_upgrade(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def read_all(s: socket.socket, idle: float = 1.5) -> bytes:
    s.settimeout(idle)
    data = bytearray()
    while True:
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def ws_text_frames(data: bytes) -> tuple[list[str], int | None]:
    """Unframe server-to-client WebSocket frames (unmasked); returns texts and a close code."""
    texts, i, close = [], data.index(b"\r\n\r\n") + 4, None
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if i + length > len(data):
            break
        payload = data[i:i + length]
        i += length
        if opcode == 1:
            texts.append(payload.decode())
        elif opcode == 8:
            close = int.from_bytes(payload[:2], "big")
    return texts, close


def sse_payloads(data: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in data.split(b"\n\n"):
        event, payload = "message", None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                event = line[7:].decode()
            elif line.startswith(b"data: "):
                payload = json.loads(line[6:])
        if payload is not None:
            out.append((event, payload))
    return out


def publish_in_batches(hub, publications, size=200):
    for i in range(0, len(publications), size):
        response = httpx.post(hub.base + "/publish", json=publications[i:i + size], timeout=30)
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def slow_hub(tmp_path_factory):
    from .server import HubProcess

    process = HubProcess(env=SLOW_ENV).start(tmp_path_factory.mktemp("slow"))
    yield process
    process.stop()


async def test_stalled_client_does_not_slow_50_others(slow_hub, port_kind):
    p = "f" + uuid.uuid4().hex[:8]
    port = slow_hub.port if port_kind == "asgi" else slow_hub.fast_port
    stalled = stalled_socket(port, ws_upgrade(f"/ws?topic={p}"))
    total = 2000
    readers = []
    for _ in range(50):
        readers.append(await ws_connect(slow_hub.url(port_kind, f"/ws?topic={p}", "ws")).__aenter__())
    await asyncio.sleep(0.5)

    progress = [0] * len(readers)

    async def receive_all(index, ws):
        numbers = []
        async with asyncio.timeout(90):
            while not numbers or numbers[-1] != total - 1:
                for line in (await ws.recv()).split("\n"):
                    message = json.loads(line)
                    if message["op"] == "message":
                        numbers.append(message["data"]["n"])
                progress[index] = len(numbers)
        return numbers

    tasks = [asyncio.ensure_future(receive_all(i, ws)) for i, ws in enumerate(readers)]
    # The fast clients keep up (the publisher never gets more than 32 messages,
    # half their queue, ahead of the slowest of them); the stalled one never reads.
    async with httpx.AsyncClient(base_url=slow_hub.base, timeout=30) as client:
        for start in range(0, total, 16):
            async with asyncio.timeout(60):
                while min(progress) < start - 32:
                    await asyncio.sleep(0.005)
            batch = [{"topic": p, "data": {"n": i, "pad": PAYLOAD}} for i in range(start, start + 16)]
            assert (await client.post("/publish", json=batch)).status_code == 200
    results = await asyncio.gather(*tasks)
    for ws in readers:
        await ws.close()
    assert all(r == list(range(total)) for r in results)  # every fast client got everything, in order

    texts, close = ws_text_frames(read_all(stalled))
    stalled.close()
    messages = [json.loads(line) for text in texts for line in text.split("\n")]
    numbers = [m["data"]["n"] for m in messages if m["op"] == "message"]
    dropped = sum(m["count"] for m in messages if m["op"] == "dropped")
    assert close is None
    assert dropped > 0 and len(numbers) + dropped == total  # nothing lost unannounced
    assert numbers == sorted(numbers) and numbers[-1] == total - 1  # drop_oldest keeps the newest


async def test_priority_and_conflation_under_backlog(slow_hub, port_kind):
    p = "q" + uuid.uuid4().hex[:8]
    port = slow_hub.port if port_kind == "asgi" else slow_hub.fast_port
    stalled = stalled_socket(port, f"GET /sse?topic={p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await asyncio.sleep(0.3)
    # Enough low traffic to fill the kernel buffers and then the outbox, in
    # batches under the queue bound (a bigger burst would drop by itself).
    filler = [{"topic": p, "data": {"n": i, "pad": PAYLOAD}, "priority": "low"} for i in range(2500)]
    await asyncio.to_thread(publish_in_batches, slow_hub, filler, 50)
    urgent = [{"topic": p, "data": {"urgent": i}, "priority": "high"} for i in range(5)]
    keyed = [{"topic": p, "data": {"price": i}, "key": "price", "priority": "normal"} for i in range(30)]
    await asyncio.to_thread(publish_in_batches, slow_hub, urgent + keyed)
    events = sse_payloads(read_all(stalled))
    stalled.close()
    datas = [d["data"] for e, d in events if e == "message"]
    kinds = [("urgent" if "urgent" in x else "price" if "price" in x else "low") for x in datas]
    # Every high-priority message arrived (low ones were dropped to make room) and
    # they overtook low messages published before them.
    assert [x["urgent"] for x in datas if "urgent" in x] == list(range(5))
    first_urgent = kinds.index("urgent")
    assert "low" in kinds[first_urgent:]
    # Conflation: the 30 keyed updates collapsed while queued; the newest value won.
    prices = [x["price"] for x in datas if "price" in x]
    assert prices[-1] == 29 and len(prices) < 30
    assert any(e == "dropped" for e, _ in events)


async def test_disconnect_policy_closes_4408_and_sse_ends(make_hub, port_kind):
    hub = make_hub(env={**SLOW_ENV, "HUBBUB_SLOW_CONSUMER": "disconnect"})
    p = "d" + uuid.uuid4().hex[:8]
    port = hub.port if port_kind == "asgi" else hub.fast_port
    ws = stalled_socket(port, ws_upgrade(f"/ws?topic={p}"))
    sse = stalled_socket(port, f"GET /sse?topic={p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    async with ws_connect(hub.url(port_kind, f"/ws?topic={p}", "ws")) as healthy:
        await asyncio.sleep(0.3)
        received = []

        async def keep_up():
            async with asyncio.timeout(60):
                while not received or received[-1] != 1999:
                    for line in (await healthy.recv()).split("\n"):
                        message = json.loads(line)
                        if message["op"] == "message":
                            received.append(message["data"]["n"])

        task = asyncio.ensure_future(keep_up())
        async with httpx.AsyncClient(base_url=hub.base, timeout=30) as client:
            for start in range(0, 2000, 16):
                async with asyncio.timeout(60):
                    while len(received) < start - 32:
                        await asyncio.sleep(0.005)
                batch = [{"topic": p, "data": {"n": i, "pad": PAYLOAD}} for i in range(start, start + 16)]
                assert (await client.post("/publish", json=batch)).status_code == 200
        await task
        assert received == list(range(2000))
    texts, close = ws_text_frames(read_all(ws))
    assert close == 4408
    sse_data = read_all(sse)
    assert sse_data  # the stream ended (read_all returned on EOF or idle) ...
    with pytest.raises(OSError):
        for _ in range(3):  # ...and the hub closed the socket: writes eventually fail
            sse.sendall(b"x" * 65536)
            await asyncio.sleep(0.1)
            if sse.recv(1) == b"":
                raise OSError("closed by the hub")
    ws.close()
    sse.close()
    assert hub.stats()["connections"] == 0
