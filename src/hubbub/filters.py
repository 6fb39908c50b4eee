"""Tag filters for subscriptions (SPEC section 7).

WebSocket form: a JSON object, keys AND-ed, each value a string (equals) or a
non-empty list of strings (any of). Query form (SSE, poll):
``region:eu,level:high|critical``. A publication without a filtered tag does
not match.

Equal filters compile to the same ``TagFilter`` object (interned while any
subscription holds it), which is what lets the dispatcher evaluate each
distinct filter once per publication instead of once per subscriber.
"""
from __future__ import annotations

import weakref

from ._core import TagFilter

MAX_FILTER_KEYS = 32


class FilterError(ValueError):
    """A malformed filter; the message names the problem."""


_interned: "weakref.WeakValueDictionary[tuple, TagFilter]" = weakref.WeakValueDictionary()


def compile_filter(spec: object) -> TagFilter | None:
    """Compile a filter given as a JSON object, a query string, or None."""
    if spec is None or spec == "" or spec == {}:
        return None
    if isinstance(spec, str):
        items = _parse_query(spec)
    elif isinstance(spec, dict):
        items = _parse_object(spec)
    else:
        raise FilterError(f"filter must be an object or a query string, not {type(spec).__name__}")
    if len(items) > MAX_FILTER_KEYS:
        raise FilterError(f"filter has {len(items)} keys, over the limit of {MAX_FILTER_KEYS}")
    canonical = tuple(sorted(items.items()))
    compiled = _interned.get(canonical)
    if compiled is None:
        compiled = TagFilter(canonical)
        _interned[canonical] = compiled
    return compiled


def _parse_object(spec: dict) -> dict[str, frozenset]:
    items = {}
    for key, value in spec.items():
        _check_key(key)
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, list):
            if not value:
                raise FilterError(f"filter values for {key!r} are an empty list")
            values = value
        else:
            raise FilterError(
                f"filter value for {key!r} must be a string or a list of strings,"
                f" not {type(value).__name__}"
            )
        for item in values:
            if not isinstance(item, str):
                raise FilterError(f"filter value {item!r} for {key!r} is not a string")
        items[key] = frozenset(values)
    return items


def _parse_query(spec: str) -> dict[str, frozenset]:
    items: dict[str, frozenset] = {}
    for clause in spec.split(","):
        key, sep, values = clause.partition(":")
        if not sep:
            raise FilterError(f"filter clause {clause!r} is not key:value")
        _check_key(key)
        if key in items:
            raise FilterError(f"filter key {key!r} appears twice")
        choices = values.split("|")
        if any(not choice for choice in choices):
            raise FilterError(f"filter clause {clause!r} has an empty value")
        items[key] = frozenset(choices)
    return items


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise FilterError(f"filter key {key!r} must be a non-empty string")


def validate_tags(tags: object) -> dict[str, str] | None:
    """Publication tags: a flat map of strings to strings (or None)."""
    if tags is None:
        return None
    if not isinstance(tags, dict):
        raise FilterError(f"tags must be an object of strings, not {type(tags).__name__}")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise FilterError(f"tag {key!r} must map a string to a string, got {value!r}")
    return tags or None
