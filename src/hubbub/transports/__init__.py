"""Transports move frames between sockets and the hub: ASGI (any server) and native (picows/uvloop)."""
