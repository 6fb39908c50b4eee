"""The durable per-user notification inbox (SPEC 8).

- ``store``: the ``NotificationStore`` interface, ``open_store(url)``;
  ``sqlite`` (embedded default) and ``postgres`` (a fleet) implement it alike.
- ``validate``: every input check, each 400 naming its field.
- ``service.Inbox``: store + live events (``notification``,
  ``notification_deleted``, ``unread_count``) + background retention.
- ``endpoints.NotificationEndpoints``: the ``/notifications`` HTTP handlers.

Wiring (for the hub)::

    inbox = Inbox.from_config(config, emit=lambda user, event, payload: ...)
    await inbox.start()                  # opens and migrates the store
    endpoints = NotificationEndpoints(inbox, hub.auth)
    ...                                  # on connect: await inbox.unread_count(user)
    await inbox.stop()
"""
from .endpoints import NotificationEndpoints
from .service import Inbox
from .store import NewNotification, NotificationStore, StoreError, open_store, store_from_config

__all__ = ["Inbox", "NewNotification", "NotificationEndpoints", "NotificationStore", "StoreError",
           "open_store", "store_from_config"]
