"""A loopback TCP proxy whose connections a test can cut, to drop a client while the hub stays up."""
from __future__ import annotations

import asyncio


class CuttableProxy:
    """Forwards to ``target`` on loopback; ``cut()`` ends every piped
    connection, and while ``refusing`` new ones are closed at once."""

    def __init__(self, target: int) -> None:
        self.target, self.pipes, self.refusing = target, set(), False
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer):
            if self.refusing:
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            for task in (asyncio.ensure_future(pipe(reader, up_writer)),
                         asyncio.ensure_future(pipe(up_reader, writer))):
                self.pipes.add(task)
                task.add_done_callback(self.pipes.discard)
        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        for task in list(self.pipes):
            task.cancel()
        await asyncio.sleep(0.1)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
