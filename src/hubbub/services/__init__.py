"""Services built on the hub core: presence, the notification inbox, telemetry,
and the per-user events that carry the inbox's changes to live connections.

Each attaches to the core through its hooks (``HubCore.on_*``) or is called
by the endpoints; none imports an endpoint or a transport.
"""
