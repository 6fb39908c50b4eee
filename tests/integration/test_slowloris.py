"""A client that never finishes its request head is cut after HEAD_TIMEOUT on both ports."""
import asyncio
import time


async def test_unfinished_request_heads_are_cut_alike_on_both_ports(make_hub):
    hub = make_hub(env={"HUBBUB_HEAD_TIMEOUT": "2"})

    async def held_for(port: int) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(8):  # Granian's own default would hold it 30 s
            while await reader.read(1024):
                pass
        writer.close()
        return time.monotonic() - started

    held = await asyncio.gather(held_for(hub.port), held_for(hub.fast_port))
    for seconds in held:
        assert 1.5 <= seconds <= 4.0, held
