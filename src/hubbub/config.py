"""Settings (SPEC section 1): every field is an environment variable ``HUBBUB_<NAME>``.

One typed, validated object. ``Config.from_env`` reads the environment and
applies overrides (CLI flags win over the environment); an invalid value
raises ``ConfigError`` naming the variable.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from ._core import DISCONNECT, DROP_OLDEST
from .cors import parse_origins


class ConfigError(ValueError):
    """An invalid setting; ``variable`` is the environment variable at fault."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


_SECRETS = {"api_key", "jwt_secret"}
_SIZE = re.compile(r"(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30}


@dataclasses.dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    dev: bool = False
    api_key: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_algorithms: tuple[str, ...] = ()
    jwt_audience: str = ""
    jwt_issuer: str = ""
    # Seconds a token's exp may be past: at decoding, and before a connection
    # it authenticated is ended (clock skew between the issuer and the hub).
    jwt_leeway: float = 10.0
    backplane: str = "memory"
    # Every Redis key and channel of the fleet starts with this: fleets (or
    # tests) sharing one Redis stay apart with different prefixes.
    backplane_prefix: str = "hubbub:"
    # Seconds a publish may wait on Redis in all (pool, script, reply) before it
    # answers 503, and within which a Redis that stopped answering turns
    # /healthz 503 (backplane/redis_broker.py).
    backplane_timeout: float = 2.0
    store: str = "sqlite:///hubbub.db"
    data_dir: str = ""  # where a relative sqlite:/// path lives; empty: the working directory
    notification_ttl: float = 30 * 86400.0  # seconds a notification is kept
    notification_max_per_user: int = 1000  # the newest kept per user; older ones are pruned
    history_size: int = 1000
    history_ttl: float = 3600.0
    queue_max_messages: int = 1024
    queue_max_bytes: int = 4 << 20
    slow_consumer: str = "drop_oldest"
    heartbeat: float = 15.0
    max_message_bytes: int = 64 << 10
    max_topics_per_connection: int = 128
    max_connections: int = 100_000
    max_connections_per_user: int = 100
    client_publish_rate: float = 20.0
    connect_rate: float = 500.0  # connection attempts per second per client IP (burst 2x)
    access_log: bool = False
    presence_ttl: float = 30.0
    presence_max_list: int = 1000  # topics with more members answer counts only
    recovery_max: int = 1000
    fast_port: int | None = None  # None: PORT + 1; 0: off
    tls_cert: str = ""
    tls_key: str = ""
    drain_timeout: float = 10.0
    flush_delay: float = 5.0  # milliseconds a busy hub may hold writes to batch them (SPEC 9)
    # Seconds after SIGTERM during which the listeners stay up answering
    # /healthz 503 and refusing new subscribers 503, so a load balancer sees
    # the node leave before its port closes (see server.py).
    drain_grace: float = 2.0
    # Seconds a client has to send a complete request head, on both ports.
    head_timeout: float = 10.0
    cors_origins: tuple[str, ...] = ()
    # GET /metrics without the API key (for a scraper inside a trusted network).
    metrics_public: bool = False
    # Where the workers of one machine share their metrics snapshots
    # (services/telemetry.py); ``hubbub serve --workers N`` sets a fresh one for N > 1.
    metrics_dir: str = ""
    # The Unix socket of the local broker that ``hubbub serve --workers N``
    # (N > 1, BACKPLANE=memory) starts for its workers (backplane/local_server.py):
    # set for them, not by hand.
    local_broker: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(_variable(field.name))
            if raw is not None and raw != "":
                values[field.name] = _parse(field, raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        config = cls(**values)
        config.validate()
        return config

    @property
    def slow_consumer_policy(self) -> int:
        return DISCONNECT if self.slow_consumer == "disconnect" else DROP_OLDEST

    @property
    def effective_fast_port(self) -> int:
        """The native listener's port; 0 means off."""
        return self.port + 1 if self.fast_port is None else self.fast_port

    @property
    def liveness_period(self) -> float:
        """Seconds between liveness pings of a WS peer (and heartbeat rounds):
        a peer that stops answering is closed after two missed periods plus one
        round, so within PRESENCE_TTL, and leaves presence with it."""
        return min(self.heartbeat, self.presence_ttl / 3)

    @property
    def algorithms(self) -> tuple[str, ...]:
        if self.jwt_algorithms:
            return self.jwt_algorithms
        if self.jwt_public_key:
            return ("RS256", "ES256", "EdDSA")
        return ("HS256",)

    def validate(self) -> None:
        def check(name: str, ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(_variable(name), message)

        for name in ("port", "workers", "history_size", "queue_max_messages", "queue_max_bytes",
                     "max_message_bytes", "max_topics_per_connection", "recovery_max",
                     "max_connections", "max_connections_per_user", "notification_max_per_user"):
            value = getattr(self, name)
            check(name, value >= (0 if name == "port" else 1), f"must be at least 1, got {value}")
        check("port", self.port <= 65535, f"must be a TCP port, got {self.port}")
        if self.fast_port is not None:
            check("fast_port", 0 <= self.fast_port <= 65535, f"must be a TCP port or 0, got {self.fast_port}")
        for name in ("history_ttl", "heartbeat", "client_publish_rate", "presence_ttl", "drain_timeout",
                     "connect_rate", "notification_ttl", "head_timeout"):
            value = getattr(self, name)
            check(name, value > 0, f"must be positive, got {value}")
        check("flush_delay", 0 <= self.flush_delay <= 1000,
              f"must be between 0 and 1000 milliseconds, got {self.flush_delay}")
        check("slow_consumer", self.slow_consumer in ("drop_oldest", "disconnect"),
              f"must be drop_oldest or disconnect, got {self.slow_consumer!r}")
        check("backplane", self.backplane == "memory" or self.backplane.startswith(("redis://", "rediss://")),
              f"must be memory or a redis:// URL, got {self.backplane!r}")
        check("local_broker", not self.local_broker or self.backplane == "memory",
              "names the local broker of hubbub serve's workers, which share a hub without"
              " Redis: it cannot be combined with a redis:// HUBBUB_BACKPLANE")
        check("backplane_timeout", 0.1 <= self.backplane_timeout <= 60,
              f"must be between 0.1 and 60 seconds, got {self.backplane_timeout}")
        check("backplane_prefix", bool(self.backplane_prefix) and len(self.backplane_prefix) <= 100,
              f"must be 1-100 characters, got {self.backplane_prefix!r}")
        sqlite_ok = self.store.startswith("sqlite:///") and len(self.store) > len("sqlite:///")
        check("store", sqlite_ok or self.store.startswith(("postgresql://", "postgres://")),
              f"must be sqlite:///PATH or a postgresql:// URL, got {self.store!r}")
        check("tls_key", bool(self.tls_cert) == bool(self.tls_key),
              "HUBBUB_TLS_CERT and HUBBUB_TLS_KEY must be set together")
        check("presence_max_list", self.presence_max_list >= 0,
              f"must be 0 or more, got {self.presence_max_list}")
        check("jwt_leeway", 0 <= self.jwt_leeway <= 3600,
              f"must be 0 to 3600 seconds, got {self.jwt_leeway}")
        check("drain_grace", self.drain_grace >= 0, f"must be 0 or more seconds, got {self.drain_grace}")
        try:
            parse_origins(self.cors_origins, self.dev)
        except ValueError as error:
            raise ConfigError(_variable("cors_origins"), str(error)) from None
        unknown = set(self.jwt_algorithms) - _KNOWN_ALGORITHMS
        check("jwt_algorithms", not unknown and "none" not in self.jwt_algorithms,
              f"unknown or unsafe algorithms {sorted(unknown)}")

    def ssl_context(self):
        """A server TLS context when TLS_CERT/TLS_KEY are set, else None."""
        if not self.tls_cert:
            return None
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def missing_secrets(self) -> list[str]:
        """What a non-dev start needs and lacks."""
        missing = []
        if not (self.jwt_secret or self.jwt_public_key):
            missing.append("HUBBUB_JWT_SECRET (or HUBBUB_JWT_PUBLIC_KEY)")
        if not self.api_key:
            missing.append("HUBBUB_API_KEY")
        return missing

    def masked(self) -> dict[str, Any]:
        """Every setting by variable name, secrets masked, for ``hubbub config``."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _SECRETS and value:
                value = "***"
            elif field.name == "jwt_public_key" and value:
                value = f"<PEM, {len(value)} chars>"
            elif field.name in ("backplane", "store"):
                value = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            out[_variable(field.name)] = value
        out["HUBBUB_FAST_PORT"] = self.effective_fast_port
        return out


_KNOWN_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
                     "ES512", "PS256", "PS384", "PS512", "EdDSA"}


def _variable(name: str) -> str:
    return "HUBBUB_" + name.upper()


def _parse(field: dataclasses.Field, raw: str) -> Any:
    variable = _variable(field.name)
    kind = field.type
    raw = raw.strip()
    try:
        if kind == "bool":
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        if kind in ("int", "int | None"):
            if field.name.endswith("_bytes"):
                return parse_size(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "tuple[str, ...]":
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as error:
        raise ConfigError(variable, f"invalid value {raw!r}: {error}") from None


def parse_size(raw: str) -> int:
    """Bytes, with an optional unit: 4MiB, 64k, 1000000."""
    match = _SIZE.fullmatch(raw.strip())
    if not match:
        raise ValueError("expected a size such as 65536, 64KiB or 4MiB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _UNITS[unit]
