"""The API token: which requests need ``Authorization: Bearer TOKEN``, as one rule table and one middleware.

With no token configured every request is open (the node trusts its LAN, as before). With ``--api-token``:

- MUTATE routes (publishing, withdrawing, deploying, pulling, and any other non-read method under /api except
  inference) always need the token;
- READ routes (everything else under /api and /v2: listings, cards, artifacts, inference) need it only with
  ``--protect-all``;
- OPEN routes never need it: /api/health (liveness probes), and the page with its static files and samples.

The rules are matched against the route aiohttp resolved (its method and path template), so a request cannot slip
past by spelling a path differently; a request that matches no route falls back to its path prefix. The first rule
that matches wins. The token is compared in constant time.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..errors import ConfigError, Unauthorized

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Access(enum.Enum):
    OPEN = "open"  # never needs the token
    READ = "read"  # needs it with --protect-all
    MUTATE = "mutate"  # needs it whenever a token is configured


@dataclass(frozen=True)
class Rule:
    methods: frozenset[str] | None  # None: any method
    route: str  # a route's path template, or a prefix ending in '*'
    access: Access

    def matches(self, method: str, route: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.route.endswith("*"):
            return route.startswith(self.route[:-1])
        return route == self.route


def _m(*methods: str) -> frozenset[str]:
    return frozenset(methods)


UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RULES: tuple[Rule, ...] = (
    Rule(None, "/api/health", Access.OPEN),
    Rule(_m("POST"), "/api/models", Access.MUTATE),
    Rule(_m("POST"), "/api/models/pull", Access.MUTATE),
    Rule(_m("DELETE"), "/api/models/{name}/versions/{version}", Access.MUTATE),
    Rule(_m("POST"), "/api/deployments", Access.MUTATE),
    Rule(_m("POST"), "/api/predict", Access.READ),  # inference is a read: it changes nothing
    Rule(_m("POST"), "/v2/*", Access.READ),  # Open Inference Protocol inference
    Rule(UNSAFE, "/api/*", Access.MUTATE),  # anything else that writes under /api: closed by default
    Rule(None, "/api/*", Access.READ),
    Rule(None, "/v2", Access.READ),
    Rule(None, "/v2/*", Access.READ),
    Rule(None, "*", Access.OPEN),  # the page, its static files and samples
)


def access_for(method: str, route: str) -> Access:
    for rule in RULES:
        if rule.matches(method, route):
            return rule.access
    return Access.OPEN  # unreachable: the last rule matches everything


def _route_of(request: web.Request) -> str:
    """The path template of the route aiohttp resolved, else the request's path (no route: a 404 or 405)."""
    info = request.match_info
    if info.http_exception is None:
        canonical = getattr(info.route.resource, "canonical", None)
        if isinstance(canonical, str):
            return canonical
    return request.path


def bearer_token(header: str) -> str | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def check_token(header: str | None, token: str) -> None:
    """Raise Unauthorized unless ``header`` is ``Bearer <token>``."""
    if not header:
        raise Unauthorized("this endpoint needs the node's API token: send 'Authorization: Bearer TOKEN'")
    given = bearer_token(header)
    if given is None:
        raise Unauthorized("the Authorization header must use the Bearer scheme: 'Authorization: Bearer TOKEN'")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
        raise Unauthorized("the API token is wrong", invalid_token=True)


def make_auth_middleware(token: str | None, *, protect_all: bool) -> Middleware:
    """The middleware for a node: checks the token where RULES say; a no-op without a token."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token:
            access = access_for(request.method, _route_of(request))
            if access is Access.MUTATE or (access is Access.READ and protect_all):
                check_token(request.headers.get("Authorization"), token)
        return await handler(request)

    return auth_middleware


def check_api_token(token: str | None, *, protect_all: bool) -> None:
    """A token fit for an HTTP header (visible ASCII, no spaces); --protect-all makes no sense without one."""
    if token is not None and (not token or not all(0x21 <= ord(c) <= 0x7E for c in token)):
        raise ConfigError(
            "the API token must be non-empty visible ASCII with no spaces (e.g. from `openssl rand -hex 32`)"
        )
    if protect_all and not token:
        raise ConfigError("--protect-all needs an API token (--api-token, --api-token-file or CARML_API_TOKEN)")
