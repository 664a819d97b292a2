"""Who is calling. Today: one optional server key; projects, keys and roles will plug in here."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pydantic import SecretStr

from stillroom.errors import AuthenticationError
from stillroom.store.tables import DEFAULT_PROJECT


@dataclass(frozen=True, slots=True)
class Principal:
    project_id: str


def authenticate(server_key: SecretStr | None, presented: str | None) -> Principal:
    """Accept the caller when no server key is set, or when it presents that key."""
    if server_key is None:
        return Principal(project_id=DEFAULT_PROJECT)
    if presented is None:
        raise AuthenticationError(
            "You didn't provide an API key. Provide it as 'Authorization: Bearer <key>' or 'api-key: <key>'."
        )
    if not secrets.compare_digest(presented.encode(), server_key.get_secret_value().encode()):
        raise AuthenticationError("Incorrect API key provided.")
    return Principal(project_id=DEFAULT_PROJECT)
