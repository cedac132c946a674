"""Network helpers shared by the packages."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now. host="" checks every interface (a rendezvous other
    nodes connect to); the default, loopback only (local servers and tests)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
