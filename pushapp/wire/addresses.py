"""Who the client of a connection is: its peer, or behind a trusted proxy the address the
proxy names. Only the standard library: gunicorn's master imports this (through
pushapp.wire.worker) before the workers' metrics may be set up.
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in trusted if proxy != "*")


def trusted_proxy(peer: str, trusted: tuple[str, ...]) -> bool:
    """Whether ``peer`` is one of the ``trusted`` proxies (``FORWARDED_ALLOW_IPS``:
    addresses or networks, or ``*``)."""
    if "*" in trusted:
        return True
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(ip in network for network in _networks(trusted))


def client_address(environ: Mapping[str, Any], trusted: tuple[str, ...]) -> str:
    """Who the client is, for logs and per-address limits. Behind a load balancer every
    peer is the balancer, so when the peer is one of the ``trusted`` proxies the client is
    the last ``X-Forwarded-For`` entry: the one that proxy wrote, while earlier ones come
    from the client and may be forged. Anyone else's header is not believed."""
    peer = environ.get("REMOTE_ADDR", "")
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "").rpartition(",")[2].strip()
    return forwarded if forwarded and trusted_proxy(peer, trusted) else peer
