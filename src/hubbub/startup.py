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
