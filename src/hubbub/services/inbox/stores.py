"""Which store a ``HUBBUB_STORE`` URL names: ``sqlite:///PATH`` or ``postgresql://``.

Apart from ``store`` so that the interface never imports its implementations
(each of which imports the interface).
"""
from __future__ import annotations

import os

from .store import NotificationStore


def sqlite_path(url: str, data_dir: str = "") -> str:
    """The file of a ``sqlite:///PATH`` URL: absolute as given
    (``sqlite:////var/lib/hubbub.db``), else relative to ``data_dir``
    (HUBBUB_DATA_DIR), else to the working directory. ``:memory:`` stays."""
    path = url[len("sqlite:///"):]
    if not url.startswith("sqlite:///") or not path:
        raise ValueError(f"expected sqlite:///PATH, got {url!r}")
    if path == ":memory:" or os.path.isabs(path):
        return path
    return os.path.join(data_dir or os.getcwd(), path)


def open_store(url: str, *, data_dir: str = "", ttl: float = 30 * 86400.0,
               max_per_user: int = 1000) -> NotificationStore:
    """The store a ``HUBBUB_STORE`` URL names (not opened yet)."""
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStore

        return SqliteStore(sqlite_path(url, data_dir), ttl=ttl, max_per_user=max_per_user)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url, ttl=ttl, max_per_user=max_per_user)
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///PATH or postgresql://")


def store_from_config(config) -> NotificationStore:
    return open_store(config.store, data_dir=config.data_dir, ttl=config.notification_ttl,
                      max_per_user=config.notification_max_per_user)
