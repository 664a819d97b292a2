"""Which `Host` headers a request may carry: the DNS-rebinding guard of a server on a loopback address.

A web page cannot send a request to 127.0.0.1 with `Host: localhost` from its own origin; through DNS
rebinding it can reach 127.0.0.1 only under its own name (`Host: evil.example`). So a request that arrives on
a loopback address must name a loopback host (`localhost`, `*.localhost`, `127.x.x.x`, `[::1]`, any port) or
one of the configured names; requests arriving on other addresses are the operator's choice to expose.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping
from typing import Any

_CACHE_LIMIT = 1024  # distinct Host values remembered (a client could send endless ones)


def _hostname(host: str) -> str:
    """`example.com:8080` -> `example.com`; `[::1]:8080` -> `::1`; lower-cased, without a trailing dot."""
    if host.startswith("["):
        end = host.find("]")
        name = host[1:end] if end > 0 else host
    else:
        name = host.partition(":")[0]
    return name.strip().rstrip(".").lower()


def is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class HostPolicy:
    """`allowed`: extra host names (`api.example.com`, `*.example.com`), or `*` for any."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        names = {_hostname(name) if name.strip() != "*" else "*" for name in allowed if name.strip()}
        self.allow_any = "*" in names
        self._names = frozenset(name for name in names if not name.startswith("*"))
        self._suffixes = tuple(name[1:] for name in names if name.startswith("*."))
        self._checked_addresses: dict[str, bool] = {}
        self._hosts: dict[bytes, bool] = {}

    def admits(self, scope: MutableMapping[str, Any]) -> bool:
        """Whether an HTTP request (its ASGI scope) may be answered."""
        if self.allow_any:
            return True
        server = scope.get("server")
        if not server:  # a Unix socket: only local processes reach it
            return True
        address = server[0]
        checked = self._checked_addresses.get(address)
        if checked is None:
            checked = self._checked_addresses[address] = is_loopback(str(address))
        if not checked:
            return True
        host = host_header(scope)
        if host is None:  # HTTP/1.0 without Host: never a browser
            return True
        allowed = self._hosts.get(host)
        if allowed is None:
            if len(self._hosts) >= _CACHE_LIMIT:
                self._hosts.clear()
            allowed = self._hosts[host] = self.allows(host.decode("latin-1"))
        return allowed

    def allows(self, host: str) -> bool:
        name = _hostname(host)
        return is_loopback(name) or name in self._names or name.endswith(self._suffixes)


def host_header(scope: MutableMapping[str, Any]) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"host":
            return bytes(value)
    return None
