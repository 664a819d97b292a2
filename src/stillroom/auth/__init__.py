"""Who is calling: project API keys with roles, the server key, identity-provider tokens (auth/roles.py has
the roles, actions and the operation table)."""

from __future__ import annotations

from stillroom.auth.roles import Principal

__all__ = ["Principal"]
