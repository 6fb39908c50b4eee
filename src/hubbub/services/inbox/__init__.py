"""The durable per-user notification inbox (SPEC 8).

- ``store``: the ``NotificationStore`` interface; ``stores.open_store(url)``
  picks ``sqlite`` (embedded default) or ``postgres`` (a fleet), which
  implement it alike.
- ``validate``: every input check, each 400 naming its field.
- ``service.Inbox``: store + live events (``notification``,
  ``notification_deleted``, ``unread_count``) + background retention, and the
  latency of every store call (``observe``).

The ``/notifications`` HTTP handlers are ``hubbub.endpoints.notifications``.
Wiring (the app does this)::

    inbox = Inbox.from_config(config, emit=user_events.emit, observe=telemetry.observe_store)
    await inbox.start()                  # opens and migrates the store
    ...                                  # on connect: await inbox.unread_count_in_order(user)
    await inbox.stop()
"""
from .service import Inbox
from .store import NewNotification, NotificationStore, StoreError
from .stores import open_store, store_from_config

__all__ = ["Inbox", "NewNotification", "NotificationStore", "StoreError", "open_store",
           "store_from_config"]
