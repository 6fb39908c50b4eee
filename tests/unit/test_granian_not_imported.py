"""An app that embeds the hub (under uvicorn, Hypercorn, anything) never
imports Granian: only ``hubbub serve`` runs it, and imports it when it does
(cli.py). signals.py wraps Granian's worker signals only when Granian itself
already imported them (``sys.modules``), so the wrap costs an embedding app
nothing and ties it to no Granian internals.

Run in a fresh interpreter: this test process may have imported Granian
already (test_private_apis.py)."""
import subprocess
import sys

EMBEDDING_APP = """
import asyncio, sys
import hubbub

app = hubbub.Hub(hubbub.Config(dev=True)).asgi()
hub = hubbub.Hub(hubbub.Config(dev=True))

async def lifespan():
    async with hub.lifespan():  # what Starlette(lifespan=hub.lifespan) runs
        pass

asyncio.run(lifespan())
import hubbub.server  # hubbub serve's app factory module, which Granian imports
print(sorted(name for name in sys.modules if name == "granian" or name.startswith("granian.")))
"""


def test_import_asgi_and_lifespan_import_no_granian(tmp_path):
    # In a scratch folder: whatever the hub writes relative to its working directory lands there.
    result = subprocess.run([sys.executable, "-c", EMBEDDING_APP], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", \
        f"an embedding app imported {result.stdout.strip()}: make that import lazy (hubbub serve only)"
