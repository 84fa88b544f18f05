"""Bearer-token auth of the HTTP API: pure, so it is tested without a server.

Tokens are configured as ``settings.api_tokens``: the sha256 hex digest of each
token -> its scopes. The server never holds a token in clear. With no token
configured the API is open; with at least one, every endpoint except
``/healthz`` and ``/readyz`` needs a bearer token:

* ``read``: every GET (and the internal scatter-gather endpoints);
* ``submit``: ``POST /tasks`` and ``POST /schedules``;
* ``admin``: cancel, redrive (one or many), pause and resume (of queues and
  schedules), delete a schedule; ``admin`` implies every scope.

A missing or unknown token is 401, a known token without the scope is 403.
The dashboard's files (``/ui``, api/dashboard.py) hold no data and are open too:
the browser loads them before anyone has given it a token.
Digests are compared with :func:`hmac.compare_digest` against every configured
digest, so the time taken does not tell which digest came close.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from taskstream.api.dashboard import is_dashboard_path
from taskstream.api.errors import AuthFailure
from taskstream.errors import ConfigError


class Scope(enum.StrEnum):
    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


#: endpoints that answer without a token (probes must work before anyone logs in)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def token_digest(token: str) -> str:
    """The value to put in ``settings.api_tokens`` for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenAuth:
    """The configured token digests and their scopes."""

    tokens: tuple[tuple[bytes, frozenset[Scope]], ...]

    @classmethod
    def from_settings(cls, api_tokens: Mapping[str, Sequence[str]]) -> TokenAuth:
        entries = []
        for digest, scopes in api_tokens.items():
            digest_hex = digest.strip().lower()
            if len(digest_hex) != 64 or any(c not in "0123456789abcdef" for c in digest_hex):
                raise ConfigError(
                    "api_tokens: keys must be sha256 hex digests of the tokens (64 hex digits); "
                    "compute one with `python -c \"import hashlib; "
                    "print(hashlib.sha256(b'TOKEN').hexdigest())\"`")
            try:
                parsed = frozenset(Scope(s) for s in scopes)
            except ValueError:
                raise ConfigError(
                    f"api_tokens: unknown scope in {list(scopes)!r}; use read, submit or admin"
                ) from None
            entries.append((digest_hex.encode(), parsed))
        return cls(tuple(entries))

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def scopes_of(self, token: str) -> frozenset[Scope] | None:
        """The scopes of a token, or None if it is not configured. Constant time per entry."""
        digest = token_digest(token).encode()
        found: frozenset[Scope] | None = None
        for known, scopes in self.tokens:
            if hmac.compare_digest(known, digest):
                found = scopes
        return found

    def is_admin(self, authorization: str | None) -> bool:
        """True when the request may see admin-only fields: a token with the ``admin``
        scope, or any request while auth is off (the API is then open to all anyway)."""
        if not self.enabled:
            return True
        token = bearer_token(authorization)
        scopes = self.scopes_of(token) if token is not None else None
        return scopes is not None and Scope.ADMIN in scopes

    def check(self, authorization: str | None, required: Scope | None) -> None:
        """Raise :class:`AuthFailure` unless the Authorization header grants ``required``.

        ``required`` None means the endpoint is open.
        """
        if required is None or not self.enabled:
            return
        token = bearer_token(authorization)
        if token is None:
            raise AuthFailure(401, "unauthenticated",
                              "this endpoint needs 'Authorization: Bearer <token>'")
        scopes = self.scopes_of(token)
        if scopes is None:
            raise AuthFailure(401, "unauthenticated", "the bearer token is not known")
        if Scope.ADMIN not in scopes and required not in scopes:
            raise AuthFailure(403, "forbidden",
                              f"the token lacks the {required.value!r} scope")

    def grants(self, authorization: str | None, scope: Scope) -> bool:
        """True when the Authorization header carries ``scope`` (always, without tokens)."""
        try:
            self.check(authorization, scope)
        except AuthFailure:
            return False
        return True


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a request needs (None: open). Unknown paths need ``read`` so that
    404s do not reveal anything to strangers either."""
    if path in OPEN_PATHS or is_dashboard_path(path):
        return None
    method = method.upper()
    if method in ("GET", "HEAD", "OPTIONS"):
        return Scope.READ
    if method == "POST" and path.rstrip("/") in ("/tasks", "/schedules"):
        return Scope.SUBMIT
    return Scope.ADMIN
