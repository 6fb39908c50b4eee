"""What a hub needs before it starts, checked before it starts.

Outside dev mode: a way to verify user tokens and an API key (without them
every subscriber would get 401 and every publish 401, in silence). For each
setting that names an optional backend: its package, with the extra that
installs it. ``hubbub serve`` exits 2 with these words; ``Hub.from_env()``
raises them as a ConfigError.
"""
from __future__ import annotations

import importlib

from .config import Config, ConfigError

# (variable, the URL schemes that need it, module to import, the extra that installs it)
OPTIONAL_MODULES = (
    ("HUBBUB_BACKPLANE", ("redis:", "rediss:"), "redis", "redis"),
    ("HUBBUB_STORE", ("postgresql:", "postgres:"), "psycopg", "postgres"),
    ("HUBBUB_STORE", ("postgresql:", "postgres:"), "psycopg_pool", "postgres"),
)


def problems(config: Config) -> list[tuple[str, str]]:
    """(variable at fault, what is wrong) for everything that keeps this
    configuration from serving; empty when it can."""
    found = []
    missing = config.missing_secrets()
    if not config.dev and missing:
        found.append((", ".join(name.split(" ")[0] for name in missing),
                      "refusing to start without " + " and ".join(missing)
                      + " (or set HUBBUB_DEV=1, or serve --dev, to try it out)"))
    values = {"HUBBUB_BACKPLANE": config.backplane, "HUBBUB_STORE": config.store}
    for variable, schemes, module, extra in OPTIONAL_MODULES:
        if not values[variable].startswith(schemes):
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            found.append((variable, f"{values[variable].split(':')[0]}:// needs the {module!r} module"
                                    f" ({error}): pip install 'hubbub[{extra}]'"))
    return found


MIN_API_KEY = 16  # characters: a key a person could guess or brute-force is no key
MIN_HMAC_SECRET = 32  # bytes: RFC 7518 3.2 wants an HS256 key at least as long as its hash


def weak_secrets(config: Config) -> list[str]:
    """Warnings for secrets that are set but too short to protect anything."""
    found = []
    if config.api_key and len(config.api_key) < MIN_API_KEY:
        found.append(f"HUBBUB_API_KEY is too short ({len(config.api_key)} characters): use at least"
                     f" {MIN_API_KEY} random ones"
                     " (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    secret = config.jwt_secret.encode() if config.jwt_secret else b""
    if secret and len(secret) < MIN_HMAC_SECRET:
        found.append(f"HUBBUB_JWT_SECRET is too short ({len(secret)} bytes): HMAC-signed tokens (HS256)"
                     f" need at least {MIN_HMAC_SECRET} random bytes, or anyone can forge them by"
                     " guessing it")
    return found


def refusal(config: Config) -> str | None:
    """Why this configuration cannot serve, in one line, or None."""
    found = problems(config)
    return "; ".join(f"{variable}: {what}" for variable, what in found) if found else None


def checked(config: Config) -> Config:
    """``config``, or ConfigError naming the variables at fault and why."""
    found = problems(config)
    if found:
        raise ConfigError(", ".join(dict.fromkeys(v for v, _ in found)), "; ".join(w for _, w in found))
    return config
