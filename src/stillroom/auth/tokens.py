"""Identity-provider tokens: OIDC JWTs (RS256, ES256) checked against configured issuers, an audience and a
JWKS (a file or a URL), then mapped to a project and role by their claims.

For Entra ID: the project from `tid` (or any claim, through `project_map`), the role from `roles` (app roles)
or `groups`, through `role_map`. Verified tokens are cached until they expire, so a token costs one signature
check however many requests carry it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from stillroom.auth.roles import ROLE_ACTIONS, ROLES, Action, Principal, Role
from stillroom.errors import AuthenticationError

log = logging.getLogger("stillroom.auth")

ALGORITHMS = ("RS256", "ES256")
_REFETCH_AFTER = 1.0  # seconds: an unknown kid fetches the JWKS again at most this often
_CACHE_MAX = 10_000


def _invalid(exc: Exception) -> str:
    return f"Invalid token: {str(exc).rstrip('.')}."


def looks_like_jwt(secret: str) -> bool:
    return secret.startswith("eyJ") and secret.count(".") == 2


@dataclass(frozen=True)
class TokenRules:
    """How tokens are checked and mapped (from Settings)."""

    issuers: Sequence[str]
    audience: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    project_claim: str = "tid"
    project_map: Mapping[str, str] = field(default_factory=dict)
    default_project: str | None = None
    role_claims: Sequence[str] = ("roles", "groups")
    role_map: Mapping[str, str] = field(default_factory=dict)
    leeway: float = 0.0


class Jwks:
    """Signing keys by kid, loaded from a file or URL, fetched again when a token names an unknown kid."""

    def __init__(self, url: str | None, path: Path | None) -> None:
        if (url is None) == (path is None):
            raise ValueError("a JWKS needs exactly one of a URL or a file")
        self._url = url
        self._path = path
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = float("-inf")
        self._lock = threading.Lock()

    def key(self, kid: str | None) -> jwt.PyJWK:
        keys = self._keys
        if kid in keys or (kid is None and len(keys) == 1):
            return keys[kid] if kid is not None else next(iter(keys.values()))
        with self._lock:
            if time.monotonic() - self._fetched >= _REFETCH_AFTER:
                self._keys = self._load()
                self._fetched = time.monotonic()
            keys = self._keys
        if kid is None:
            if len(keys) == 1:
                return next(iter(keys.values()))
            raise AuthenticationError("Invalid token: it has no 'kid' and the JWKS holds several keys.")
        if kid not in keys:
            raise AuthenticationError(f"Invalid token: unknown signing key (kid '{kid}').")
        return keys[kid]

    def _load(self) -> dict[str, jwt.PyJWK]:
        try:
            if self._path is not None:
                document = json.loads(self._path.read_text())
            else:
                assert self._url is not None
                with urllib.request.urlopen(self._url, timeout=5) as response:
                    document = json.load(response)
            keyset = jwt.PyJWKSet.from_dict(document)
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            log.error("cannot load the JWKS from %s: %s", self._url or self._path, exc)
            if self._keys:
                return self._keys
            raise AuthenticationError("Invalid token: the identity provider's keys cannot be loaded.") from exc
        return {k.key_id: k for k in keyset.keys if k.key_id is not None} | (
            {"": keyset.keys[0]} if len(keyset.keys) == 1 and keyset.keys[0].key_id is None else {}
        )


class TokenVerifier:
    def __init__(self, rules: TokenRules) -> None:
        self.rules = rules
        self._jwks = Jwks(rules.jwks_url, rules.jwks_file)
        self._verified: dict[str, tuple[float, dict[str, Any]]] = {}

    def is_cached(self, token: str) -> bool:
        cached = self._verified.get(token)
        return cached is not None and cached[0] > time.time()

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or AuthenticationError saying what is wrong with it."""
        cached = self._verified.get(token)
        if cached is not None and cached[0] > time.time():
            return cached[1]
        try:
            header = jwt.get_unverified_header(token)  # also refuses a non-string kid, an unknown `crit`
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(_invalid(exc)) from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthenticationError(f"Invalid token: algorithm '{alg}' is not accepted (use RS256 or ES256).")
        kid = header.get("kid")
        key = self._jwks.key(kid if kid is not None else None)
        claims = self._decode(token, key, alg)
        if len(self._verified) >= _CACHE_MAX:
            self._verified.clear()
        self._verified[token] = (float(claims["exp"]), claims)
        return claims

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        rules = self.rules
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=rules.audience,
                issuer=list(rules.issuers),
                leeway=rules.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("Invalid token: it has expired (exp).") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("Invalid token: it is not yet valid (nbf or iat in the future).") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("Invalid token: wrong issuer (iss).") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("Invalid token: wrong audience (aud).") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("Invalid token: bad signature.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"Invalid token: the '{exc.claim}' claim is missing.") from None
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(_invalid(exc)) from None
        return claims

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """Map verified claims to a project and the union of the actions of the roles they carry."""
        rules = self.rules
        raw = claims.get(rules.project_claim)
        project_id = rules.project_map.get(str(raw), str(raw)) if raw is not None else rules.default_project
        if project_id is None:
            raise AuthenticationError(f"Invalid token: no '{rules.project_claim}' claim names a project.")
        actions: set[Action] = set()
        for claim in rules.role_claims:
            values = claims.get(claim)
            for value in values if isinstance(values, list) else [values] if values is not None else []:
                role = rules.role_map.get(str(value), str(value))
                if role in ROLES:
                    actions |= ROLE_ACTIONS[Role(role)]
        subject = str(claims.get("sub") or claims.get("oid") or "token")
        return Principal(project_id, frozenset(actions), f"token:{subject}"[:128])
