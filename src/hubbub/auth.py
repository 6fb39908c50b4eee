"""Who is asking, and what they may do (SPEC sections 1, 5, 6, 11).

- ``Principal``: the authenticated party of a connection or request.
- ``Authenticator``: finds a token (``Authorization: Bearer``, cookie
  ``hubbub_token`` or ``token=``), verifies it as a JWT and checks the API key.
- ``may_subscribe`` / ``may_publish``: the topic ACL. A grant covers a pattern
  when every topic the pattern can match is matched by the grant, so a
  wildcard can never reach further than the claims allow.
"""
from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Awaitable, Callable, Mapping
from http.cookies import SimpleCookie
from typing import Any

import jwt

from .config import Config
from .errors import HubError, Unauthorized
from .topics import TopicError, validate_pattern

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclasses.dataclass(frozen=True)
class Principal:
    user: str | None = None  # None: anonymous
    info: Any = None
    subscribe: tuple[str, ...] | None = None  # None: the defaults of SPEC 11
    publish: tuple[str, ...] = ()
    unrestricted: bool = False  # dev-mode anonymous: anything goes
    # The token's exp (Unix seconds), or None: a connection it authenticated
    # ends when exp plus HUBBUB_JWT_LEEWAY passes (the core's Expiry).
    expires: float | None = None

    @property
    def subscribe_grants(self) -> tuple[str, ...]:
        if self.subscribe is not None:
            return self.subscribe
        if self.user is None:
            return ("public.>",)
        return ("public.>", f"user.{self.user}.>")


ANONYMOUS = Principal()
DEV_ANONYMOUS = Principal(unrestricted=True)


@dataclasses.dataclass
class Request:
    """What authentication sees of an HTTP request or WebSocket handshake."""

    path: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, list[str]]
    client: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def cookie(self, name: str) -> str | None:
        raw = self.headers.get("cookie")
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except Exception:
            return None
        morsel = jar.get(name)
        return morsel.value if morsel else None

    def first(self, name: str) -> str | None:
        """The value of a query parameter that takes one; None when absent.

        Every single-valued read goes through here. Given more than once it is
        a HubError 400 naming it: which value was meant would be a guess, and a
        proxy or a cache in front of the hub may guess otherwise than we do.
        (``topic`` takes several: read ``query`` for it.)"""
        values = self.query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise HubError(400, f"'{name}' given {len(values)} times; it takes one value")
        return values[0]


AuthenticateHook = Callable[[Request], Awaitable["Principal | None"]]


class Authenticator:
    def __init__(self, config: Config, hook: AuthenticateHook | None = None) -> None:
        self.config = config
        self.hook = hook
        self._algorithms = list(config.algorithms)

    def token_of(self, request: Request) -> str | None:
        auth = request.header("authorization")
        if auth and auth[:7].lower() == "bearer ":
            return auth[7:].strip() or None
        return request.cookie("hubbub_token") or request.first("token") or None

    async def principal(self, request: Request) -> Principal | None:
        """The principal of a request: None when it brought no credentials.

        Raises Unauthorized when credentials were brought and are bad.
        """
        if self.hook is not None:
            return await self.hook(request)
        token = self.token_of(request)
        if token is None:
            return DEV_ANONYMOUS if self.config.dev else None
        return self.decode(token)

    def decode(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise Unauthorized(f"malformed token: {error}") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise Unauthorized(f"token algorithm {alg!r} is not allowed")
        # The key follows the algorithm family, so an RS256 public key can
        # never be used as an HMAC secret (HS/RS confusion).
        key = self.config.jwt_secret if str(alg).startswith("HS") else self.config.jwt_public_key
        if not key:
            raise Unauthorized(f"no key is configured for algorithm {alg}")
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], leeway=self.config.jwt_leeway,
                audience=self.config.jwt_audience or None,
                issuer=self.config.jwt_issuer or None,
                options={"require": ["sub"], "verify_aud": bool(self.config.jwt_audience)},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid") from None
        except jwt.PyJWTError as error:
            raise Unauthorized(f"invalid token: {error}") from None
        return principal_from_claims(claims)

    def check_api_key(self, request: Request) -> None:
        """The publish API's key: ``Authorization: Bearer`` or ``X-API-Key``."""
        if self.config.dev and request.client in LOOPBACK and not self.config.api_key:
            return
        expected = self.config.api_key
        given = request.header("x-api-key")
        if given is None:
            auth = request.header("authorization") or ""
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if not given:
            raise Unauthorized("API key required")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized("invalid API key")


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or "." in sub or "*" in sub or ">" in sub or sub.isspace():
        raise Unauthorized("token 'sub' must be a non-empty user id without '.', '*' or '>'")
    info = claims.get("info")
    if info is not None and not isinstance(info, dict):
        raise Unauthorized("token 'info' must be an object")
    exp = claims.get("exp")  # PyJWT has checked it is a number when present
    return Principal(
        user=sub, info=info,
        subscribe=_grants(claims, "subscribe"),
        publish=_grants(claims, "publish") or (),
        expires=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
    )


def _grants(claims: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise Unauthorized(f"token {name!r} claim must be a list of patterns")
    try:
        return tuple(validate_pattern(p) for p in value)
    except TopicError as error:
        raise Unauthorized(f"token {name!r} claim: {error}") from None


def covers(grant: str, pattern: str) -> bool:
    """True when every topic ``pattern`` can match is matched by ``grant``."""
    g, p = grant.split("."), pattern.split(".")
    for i, gt in enumerate(g):
        if gt == ">":
            return len(p) > i and not (i == 0 and p[0].startswith("$"))
        if i >= len(p):
            return False
        pt = p[i]
        if pt == ">":
            return False
        if gt == "*":
            if i == 0 and pt.startswith("$"):
                return False
            continue
        if gt != pt:
            return False
    return len(p) == len(g)


def may_subscribe(principal: Principal, pattern: str) -> bool:
    if principal.unrestricted:
        return True
    return any(covers(grant, pattern) for grant in principal.subscribe_grants)


def may_publish(principal: Principal, topic: str) -> bool:
    if topic.startswith("$"):
        return False  # $-topics are the hub's own, read-only for clients
    if principal.unrestricted:
        return True
    return any(covers(grant, topic) for grant in principal.publish)
